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
