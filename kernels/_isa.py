"""Which instruction-set path the compiled sets run: detected once at run time, forced by
``KERNELS_ISA``.

After BLIS's ``bli_arch_query_id``: one build carries a variant per path, the CPU is asked
once which it can run, and an environment variable forces a choice for tests and
measurement (BLIS's ``BLIS_ARCH_TYPE``). What differs between the paths (vector width,
register tile, cache blocks) lives with each set, in one table per path:
``kernels/_cython/isa/<path>.h`` for cython, ``numba_set.TILES`` for numba.

    avx512   x86-64 with AVX-512 (F, BW, DQ, VL) and FMA: 32 zmm registers of 64 bytes
    avx2     x86-64 with AVX2 and FMA (Haswell and later, Zen 1-3): 16 ymm registers of 32 bytes
    neon     aarch64 with Advanced SIMD (every aarch64 CPU): 32 q registers of 16 bytes
    generic  plain C for the baseline of the architecture (SSE2 on x86-64), on any CPU

The CPU's features come from LLVM (``llvmlite.binding.get_host_cpu_features``, which Numba
already needs), so the answer is the same on Linux, macOS and Windows, and it includes the
operating system's support for the wider registers (XSAVE state), not the CPU's alone.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

ENV = "KERNELS_ISA"

# name -> (architecture, the LLVM feature names a CPU must have, a line for reports)
PATHS = {
    "avx512": ("x86_64", ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"),
               "AVX-512 + FMA, 512-bit vectors"),
    "avx2": ("x86_64", ("avx2", "fma"), "AVX2 + FMA, 256-bit vectors"),
    "neon": ("aarch64", ("neon",), "ARMv8 Advanced SIMD, 128-bit vectors"),
    "generic": (None, (), "portable C, the architecture's baseline vectors"),
}
# Best first: what a set runs when nothing is forced.
ORDER = ("avx512", "avx2", "neon", "generic")


def machine() -> str:
    """The architecture as PATHS names it: x86_64 or aarch64 (anything else as reported)."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)


@lru_cache(maxsize=None)
def host_features() -> frozenset[str]:
    """The CPU features LLVM reports for this machine (empty if llvmlite cannot say)."""
    try:
        from llvmlite import binding
        features = binding.get_host_cpu_features()
    except Exception:  # pragma: no cover - llvmlite is a dependency; this is belt and braces
        return frozenset()
    found = {name for name, on in features.items() if on}
    if machine() == "aarch64":
        found.add("neon")  # Advanced SIMD is part of the aarch64 base ISA
    return frozenset(found)


def supported(features: frozenset[str] | None = None, arch: str | None = None) -> list[str]:
    """The paths this CPU can run, best first (``generic`` always)."""
    features = host_features() if features is None else features
    arch = machine() if arch is None else arch
    return [name for name in ORDER
            if PATHS[name][0] in (None, arch) and all(f in features for f in PATHS[name][1])]


def describe(name: str) -> str:
    return f"{name} ({PATHS[name][2]})"


def requested() -> str | None:
    """The path ``KERNELS_ISA`` asks for, or None; ValueError for a name that is no path."""
    value = os.environ.get(ENV, "").strip().lower()
    if not value or value in ("auto", "native"):
        return None
    if value not in PATHS:
        raise ValueError(f"{ENV}={os.environ[ENV]!r} is not a kernel path; expected one of "
                         f"{', '.join(ORDER)} (or unset / 'auto' for the best this CPU runs)")
    return value


def problem() -> str | None:
    """Why the requested path cannot run here (a line for kernels.available()), or None."""
    try:
        want = requested()
    except ValueError as exc:
        return str(exc)
    if want is None or want in supported():
        return None
    return (f"{ENV}={want} asks for {describe(want)}, which this CPU ({machine()}) cannot run; "
            f"it runs {', '.join(supported())}")


def selected() -> str:
    """The path the compiled sets run: ``KERNELS_ISA`` if set, else the best this CPU runs.

    ValueError if ``KERNELS_ISA`` names no path or one this CPU lacks (never a SIGILL later).
    """
    reason = problem()
    if reason is not None:
        raise ValueError(reason)
    return requested() or supported()[0]


# ---------------------------------------------------------------- Numba's target
#
# Numba compiles for the CPU named by NUMBA_CPU_NAME with the features in NUMBA_CPU_FEATURES;
# either unset means the host's. NUMBA_CPU_NAME alone changes only the tuning: numba 0.68's
# CPUCodegen._get_host_cpu_features returns the host's features whenever NUMBA_CPU_FEATURES is
# unset, so NUMBA_CPU_NAME=haswell on an AVX-512 machine still compiles AVX-512 code. A forced
# path therefore sets both, and the numba set reads its path from the features Numba will
# really compile with, never from the CPU name.

# path -> {architecture: (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES)}, for a path below the host's best
# (the best path needs nothing: Numba compiles for the host). "-avx512f" also turns off every
# AVX-512 extension (each implies F), and an explicit list keeps the host's AVX10, AMX-AVX512
# and the like out; "" is the architecture's baseline (SSE2 on x86-64).
NUMBA_TARGETS = {
    "avx2": {"x86_64": ("haswell", "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe,+popcnt,-avx512f")},
    "generic": {"x86_64": ("x86-64", ""), "aarch64": ("generic", "")},
}
NUMBA_ENV = ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")


class NumbaTargetError(ImportError):
    """Numba cannot compile for the path asked for in this process; kernels_hint says why and
    what to do (kernels.available() reports it for the Numba sets)."""

    def __init__(self, hint: str):
        super().__init__(hint)
        self.kernels_hint = hint


def feature_set(flat: str) -> frozenset[str]:
    """The features a flat LLVM feature string ("+avx2,+fma,-avx512f") turns on."""
    return frozenset(f[1:] for f in flat.split(",") if f.startswith("+"))


def _numba_compiles_for() -> tuple[str, frozenset[str], str]:
    """(CPU name, features, where they come from) of the code Numba compiles in this process.

    Once Numba has compiled anything, its target machine is fixed for the process: those
    features are what every later compilation gets, whatever the environment says since.
    """
    from numba.core import codegen, config, registry

    if "_toplevel_target_context" in vars(registry.cpu_target):   # Numba's target is built
        cg = registry.cpu_target.target_context.codegen()
        return cg._get_host_cpu_name(), feature_set(cg._tm_features), "Numba's target, already built in this process"
    config.reload_config()    # the environment as it is now (what Numba will read, too)
    name = config.CPU_NAME or "host"
    if config.CPU_FEATURES is not None:
        return name, feature_set(config.CPU_FEATURES), "NUMBA_CPU_FEATURES"
    found = set(feature_set(codegen.get_host_cpu_features()))   # honours NUMBA_ENABLE_AVX=0
    if machine() == "aarch64":
        found.add("neon")
    return name, frozenset(found), "the host (NUMBA_CPU_FEATURES unset)"


def configure_numba() -> str:
    """Point Numba at the path KERNELS_ISA asks for and return the path Numba compiles for.

    Call before the first jitted function compiles (kernels/numba_set.py and numba_naive.py
    call it before importing numba). For a forced path below the host's best it sets
    NUMBA_CPU_NAME and NUMBA_CPU_FEATURES (NUMBA_TARGETS) in os.environ, process-wide, so
    every Numba function compiled afterwards in this process, and in its child processes,
    targets that path too. Without KERNELS_ISA, the path is whatever Numba's features give
    (the host's, or the user's own NUMBA_CPU_FEATURES).

    NumbaTargetError (an ImportError, so kernels.available() gives the reason) if KERNELS_ISA
    names no path or one this CPU lacks, if the user's NUMBA_CPU_* give another path than
    KERNELS_ISA asks for, if Numba has already compiled code in this process for another path
    (its target machine cannot change then: set KERNELS_ISA before the first use of Numba), or
    if Numba's features ask for instructions this CPU lacks (that would be SIGILL later).
    """
    reason = problem()
    if reason is not None:
        raise NumbaTargetError(reason)
    want = requested()
    if want is not None and want != supported()[0]:
        target = NUMBA_TARGETS.get(want, {}).get(machine())
        if target is None:
            raise NumbaTargetError(f"{ENV}={want}: the numba sets have no {machine()} target for it")
        if not any(name in os.environ for name in NUMBA_ENV):   # the user's own settings win
            os.environ.update(zip(NUMBA_ENV, target))
    cpu, features, source = _numba_compiles_for()
    runs = supported(features)[0]
    if runs not in supported():
        raise NumbaTargetError(
            f"Numba compiles for {describe(runs)} (features from {source}), which this CPU cannot run "
            f"(it runs {', '.join(supported())}); unset NUMBA_CPU_NAME / NUMBA_CPU_FEATURES")
    if want is not None and runs != want:
        settings = ", ".join(f"{n}={os.environ[n]!r}" for n in NUMBA_ENV if n in os.environ) or "nothing set"
        raise NumbaTargetError(
            f"{ENV}={want} but Numba compiles for {describe(runs)} (cpu {cpu!r}, features from {source}; "
            f"{settings}): set {ENV} before Numba first compiles in this process, and leave "
            f"NUMBA_CPU_NAME / NUMBA_CPU_FEATURES unset (or make them agree)")
    return runs
