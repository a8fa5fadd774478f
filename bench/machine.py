"""The machine a run measured: CPU model, cores, caches, GPU, library versions, BLAS.

Collected when the peak is measured (``bench.peak``) and stored in results/peak.json, so the
report names the machine the numbers came from, not the one that renders them.
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _caches() -> dict:
    """{'L1d': '32K x2', ...} from lscpu, else from sysfs for cpu0."""
    out = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"}).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key.endswith(" cache") and key.split()[0] in ("L1d", "L1i", "L2", "L3"):
                out[key.split()[0]] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if out:
        return out
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
        out[name] = f"{size} per core" if level in ("1", "2") else size
    return out


def _flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in have]
    except OSError:
        pass
    return []


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("numpy", "numba", "Cython", "torch", "threadpoolctl", "pytest_benchmark"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - a missing library is reported as missing
            out[name] = None
    return out


def blas() -> list[dict]:
    """What threadpoolctl sees: each BLAS / OpenMP library, its version and threading layer."""
    try:
        import numpy  # noqa: F401 - loads NumPy's BLAS
        from threadpoolctl import threadpool_info

        keep = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture", "prefix")
        return [{k: lib.get(k) for k in keep if k in lib} for lib in threadpool_info()]
    except Exception:  # noqa: BLE001
        return []


def isa_paths() -> dict:
    """The instruction-set paths: the CPU's (best first), the one KERNELS_ISA forced (or None),
    and the one each compiled set and numpy's BLAS runs here."""
    import kernels
    from kernels import _isa

    out = {"supported": _isa.supported(), "forced": os.environ.get(_isa.ENV) or None, "sets": {}}
    for name in ("numpy", "numba", "cython"):
        try:
            out["sets"][name] = kernels.get(name).isa
        except Exception as exc:  # noqa: BLE001 - an unavailable set says why
            out["sets"][name] = f"unavailable: {exc}"
    return out


def gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return None


def describe() -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "logical_cpus": os.cpu_count(),
        "caches": _caches(),
        "simd": _flags(),
        "os": platform.platform(),
        "gpu": gpu(),
        "versions": versions(),
        "blas": blas(),
        "isa": isa_paths(),
    }
