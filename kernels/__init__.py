"""Kernel sets for a fully connected network, behind one interface.

    import kernels
    kernels.names()                 # ['numpy', 'numba', 'cython', 'torch', ...]
    kernels.available()             # {name: None if usable here, else how to make it usable}
    ks = kernels.get("numba", threads=2)
    y = ks.linear(x, w, b, relu=True)

Every set is a backend module with the same kernels (see ``_front`` for the protocol) behind
the same front, :class:`kernels._front.KernelSet`, which checks every argument once for all
sets. Adding a set is adding one backend module and one line to ``_REGISTRY``.
"""

from __future__ import annotations

import importlib
import os
import warnings

from . import _runtimes

# Before numpy is imported below: the thread pools' wait policies are read when their libraries
# load (kernels/_runtimes.py says which and why).
_runtimes.apply_defaults()

from ._arrays import NumpyArrays, TorchArrays
from ._front import KernelSet

__all__ = ["names", "available", "get", "backend_module", "runtime_report", "KernelSet", "UnavailableError"]

runtime_report = _runtimes.runtime_report


class UnavailableError(RuntimeError):
    """A kernel set (or device) that exists but cannot run on this machine or build."""


# name -> (backend module, kind of native array). Order is the order reports list them in.
_REGISTRY = {
    "numpy": ("kernels.numpy_set", NumpyArrays),
    "numba": ("kernels.numba_set", NumpyArrays),
    "numba-naive": ("kernels.numba_naive", NumpyArrays),
    "cython": ("kernels.cython_set", NumpyArrays),
    "cython-naive": ("kernels.cython_naive", NumpyArrays),
    "torch": ("kernels.torch_set", TorchArrays),
}


def names() -> list[str]:
    """Every registered kernel set, usable here or not."""
    return list(_REGISTRY)


def cpu_count() -> int:
    """The cores this process may run on (what ``threads=None`` means)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _load(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown kernel set {name!r}; the registered sets are: {', '.join(_REGISTRY)}")
    module_name, arrays = _REGISTRY[name]
    try:
        backend = importlib.import_module(module_name)
    except ImportError as exc:
        hint = getattr(exc, "kernels_hint", None) or f"{module_name} cannot be imported ({exc})"
        raise UnavailableError(f"kernel set {name!r} is not available: {hint}") from exc
    return backend, arrays


def backend_module(name: str):
    """The module behind set ``name``, for benchmarks that reach past the interface (for
    example a compiled set's ``MATMUL_LADDER``, its matmul at each optimisation step)."""
    return _load(name)[0]


def _unavailable_reason(name: str, device: str = "cpu") -> str | None:
    try:
        backend, _ = _load(name)
    except UnavailableError as exc:
        return str(exc)
    check = getattr(backend, "unavailable_reason", None)
    return check(device) if check else (None if device == "cpu" else f"kernel set {name!r} runs on the CPU only")


def available(device: str = "cpu") -> dict[str, str | None]:
    """{name: None if the set runs here on ``device``, else a one-line reason and the fix}."""
    return {name: _unavailable_reason(name, device) for name in _REGISTRY}


def get(name: str, device: str = "cpu", threads: int | None = None) -> KernelSet:
    """The kernel set ``name`` on ``device`` ("cpu" or, for torch, "cuda"), using ``threads`` cores.

    threads=None uses every core this process may run on. Every set honours it the same way:
    Numba's and OpenMP's thread counts, torch.set_num_threads, and BLAS through threadpoolctl.
    """
    if not isinstance(name, str):
        raise TypeError(f"kernel set name must be a string, got {type(name).__name__}")
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    if threads is None:
        threads = cpu_count()
    elif isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be a positive integer or None, got {threads!r}")
    elif threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    backend, arrays = _load(name)
    reason = _unavailable_reason(name, device)
    if reason is not None:
        raise UnavailableError(reason)
    serial = getattr(backend, "SERIAL_REASON", None)
    if serial and threads > 1:
        warnings.warn(f"threads={threads} asked of kernel set {name!r}, but {serial}", stacklevel=2)
    return KernelSet(name, backend, arrays(device), device, threads)
