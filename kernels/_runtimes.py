"""The threading runtimes in one process, and how long their idle workers spin.

A process that mixes kernel sets holds several thread pools: OpenBLAS's (numpy's matmul),
libgomp's OpenMP team (the cython set, and the numba set through Numba's ``omp`` threading
layer) and torch's intra-op pool (torch bundles its own libgomp). After a call, each pool's
workers spin for a while before they sleep, so that the next call starts without a wake-up.
On a machine with as many cores as threads, a set called within that time after another
runtime's call shares its cores with the other pool's spinning workers, and a matmul that
splits its work evenly waits for its slowest thread: bench/mixing.py measures the cost.

Each runtime reads its wait policy from the environment **once, when its library loads**, so
the only place a library can choose it is before numpy, numba or torch is imported. With
``KERNELS_QUIET_POOLS=1``, importing ``kernels`` first sets the ``DEFAULTS`` below with
``os.environ.setdefault`` (a value the user set is kept). It is not the default: sleeping
workers cost a wake-up on every parallel region, and measured on the 2-core machine a cython
linear at batch 128 alone took 199 us instead of 110, and a batch-128 epoch ran at 149k
samples/s instead of 480k (OMP_WAIT_POLICY passive against active, alternating processes,
idle machine). A program that calls one set at a time keeps the spin; one that mixes runtimes
call after call sets it (bench/mixing.py measures both). When a runtime was already loaded,
its policy is whatever it read then; :func:`runtime_report` says, for each variable, the value
in effect and whether it came too late.
"""

from __future__ import annotations

import os
import sys

ENV = "KERNELS_QUIET_POOLS"   # "1": set DEFAULTS at import (opt-in, see above)

# variable -> (value, the library that reads it at load, the module whose import loads it, why)
DEFAULTS = {
    "OPENBLAS_THREAD_TIMEOUT": (
        "4", "OpenBLAS", "numpy",
        "OpenBLAS's workers spin 2^n cycles after a call before they sleep (default n=28, about 0.1 s); "
        "n=4 lets them sleep at once"),
    "OMP_WAIT_POLICY": (
        "passive", "libgomp", "numba, torch, kernels.cython_set",
        "libgomp's workers spin up to GOMP_SPINCOUNT (300,000 by default) before they sleep; passive "
        "lets them sleep at once"),
}

# What was found when kernels was imported: {variable: (value before, loaded library modules)}
_at_import: dict[str, tuple[str | None, list[str]]] = {}


def _loaded(modules: str) -> list[str]:
    return [m for m in (s.strip() for s in modules.split(",")) if m in sys.modules]


def apply_defaults() -> None:
    """With KERNELS_QUIET_POOLS=1, set DEFAULTS where the user has not (called once, by
    ``import kernels``)."""
    enabled = os.environ.get(ENV, "0") not in ("", "0")
    for var, (value, _lib, modules, _why) in DEFAULTS.items():
        _at_import[var] = (os.environ.get(var), _loaded(modules))
        if enabled:
            os.environ.setdefault(var, value)


def runtime_report() -> dict:
    """What governs the thread pools' idle spinning in this process, variable by variable.

    {"defaults_enabled": bool, "variables": {var: {"value": in os.environ now or None,
    "default": kernels' value, "source": "user" | "kernels" | "library default",
    "too_late": [modules already imported when kernels was, so their library read the
    environment before kernels could set it], "why": ...}}}
    """
    enabled = os.environ.get(ENV, "0") not in ("", "0")
    out = {}
    for var, (value, lib, _modules, why) in DEFAULTS.items():
        before, loaded = _at_import.get(var, (os.environ.get(var), []))
        now = os.environ.get(var)
        source = "user" if before is not None else ("kernels" if now is not None else "library default")
        out[var] = {"value": now, "default": value, "library": lib, "source": source,
                    "too_late": loaded if source == "kernels" else [], "why": why}
    return {"defaults_enabled": enabled, "variables": out}
