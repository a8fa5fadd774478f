"""Fixtures of the benchmark suite: the kernel sets, one thread count for all, and ``measure``.

Every benchmark is parametrised by (case, set): the case is an op at one shape (bench/cases.py),
the set a kernel set's name (its param id). ``benchmark.group`` is "op shape dtype", so
``--benchmark-group-by=group`` (the default here) puts the sets side by side, and every
result's ``extra_info`` says what was measured (see ``measure``).

Options (all also read by ``python -m bench``):
  --bench-threads N     threads for every set (default: every core this process may use)
  --bench-dtypes LIST   comma-separated, default float32 (float32,float64 for both)
  --bench-sets LIST     comma-separated set names to run (default: all, references included)
  --bench-peak PATH     measured peaks to rate results against (default results/peak.json)

A set that cannot run here is skipped with its reason (the CUDA entries, on a machine without a
GPU); under KERNELS_REQUIRE_ALL=1, as in CI, an unavailable CPU set fails instead.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

import kernels
from bench import cases as C

REQUIRE_ALL = os.environ.get("KERNELS_REQUIRE_ALL", "") not in ("", "0")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PEAK = ROOT / "results" / "peak.json"

# Kernel-set params: every registered set on the CPU, then the torch set on CUDA.
SET_PARAMS = kernels.names() + [C.CUDA]


def pytest_addoption(parser):
    group = parser.getgroup("bench", "mlp-kernels benchmark suite")
    group.addoption("--bench-threads", type=int, default=None,
                    help="threads for every kernel set (default: every core this process may use)")
    group.addoption("--bench-dtypes", default="float32",
                    help="comma-separated dtypes to benchmark (default float32)")
    group.addoption("--bench-sets", default=None,
                    help="comma-separated set/reference names to run (default: all)")
    group.addoption("--bench-peak", default=str(DEFAULT_PEAK),
                    help="peak.json (from python -m bench.peak) to rate results against")


def _wanted_sets(config):
    opt = config.getoption("--bench-sets")
    return None if not opt else {s.strip() for s in opt.split(",") if s.strip()}


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "dtype" in metafunc.fixturenames:
        dtypes = [np.dtype(d.strip()) for d in config.getoption("--bench-dtypes").split(",") if d.strip()]
        metafunc.parametrize("dtype", dtypes, ids=[d.name for d in dtypes])
    marker = metafunc.definition.get_closest_marker("cases")
    if marker is None:
        return
    # @pytest.mark.cases(case_list, sets=[...], refs=[...]): every case on every set, except the
    # naive sets on cases too large for them; then the PyTorch-idiomatic references, if any.
    case_list = marker.args[0]
    sets = marker.kwargs.get("sets", SET_PARAMS)
    refs = marker.kwargs.get("refs", ())
    wanted = _wanted_sets(config)
    params = []
    for case in case_list:
        for name in list(sets) + list(refs):
            if wanted is not None and name not in wanted:
                continue
            if name in C.NAIVE_SETS and not case.naive_ok():
                continue
            params.append(pytest.param(case, name, id=f"{case.id}-{name}"))
    metafunc.parametrize(("case", "set_name"), params)


# Each set's benchmarks run as one block, with a pause between blocks. Interleaved, a set would
# start while the previous set's idle thread pool (OpenBLAS's, OpenMP's, Numba's) still spins on
# the same two cores: one such run measured a 26 us matmul at a median of 8 ms.
SET_SETTLE_S = 0.5


def _set_of(item):
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("set_name") if callspec is not None else None


def pytest_collection_modifyitems(config, items):
    order = {}
    for item in items:
        order.setdefault(_set_of(item), len(order))
    items.sort(key=lambda item: order[_set_of(item)])  # stable: within a set, as collected


_previous_set = [None]


@pytest.fixture(autouse=True)
def _settle_between_sets(request):
    name = _set_of(request.node)
    timing = request.config.getoption("benchmark_enable", False) or not request.config.getoption(
        "benchmark_disable", False)
    if timing and name is not None and _previous_set[0] not in (None, name):
        time.sleep(SET_SETTLE_S)
    _previous_set[0] = name
    yield


def pytest_configure(config):
    config.addinivalue_line("markers", "cases(case_list, sets=..., refs=...): benchmark cases x kernel sets")


# ---------------------------------------------------------------- sets and threads


@pytest.fixture(scope="session")
def threads(pytestconfig):
    n = pytestconfig.getoption("--bench-threads")
    return n if n else kernels.cpu_count()


@functools.lru_cache(maxsize=None)
def _kernel_set(name, device, threads):
    return kernels.get(name, device=device, threads=threads)


def device_of(set_name):
    return "cuda" if set_name.endswith("-cuda") else "cpu"


def skip_unless_available(set_name):
    """Skip (fail under KERNELS_REQUIRE_ALL, for CPU sets) when ``set_name`` cannot run here."""
    device = device_of(set_name)
    base = "torch" if set_name.startswith("torch") else set_name
    reason = kernels.available(device).get(base)
    if reason is not None:
        if REQUIRE_ALL and device == "cpu":
            pytest.fail(f"KERNELS_REQUIRE_ALL is set but {reason}")
        pytest.skip(reason)
    return device


def get_set(set_name, threads):
    """The kernel set behind a set param ("torch-cuda" is torch on the GPU)."""
    device = skip_unless_available(set_name)
    return _kernel_set("torch" if set_name == C.CUDA else set_name, device, threads)


@pytest.fixture
def ks(set_name, threads):
    return get_set(set_name, threads)


def torch_threads(threads):
    """Apply the suite's thread count to torch itself (for the torch-autograd/optim references)."""
    import torch

    torch.set_num_threads(threads)
    return torch


# ---------------------------------------------------------------- peak and measure


@pytest.fixture(scope="session")
def peak(pytestconfig):
    path = Path(pytestconfig.getoption("--bench-peak"))
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def rates(case, dtype, seconds, peak, device="cpu"):
    """GFLOP/s, GB/s, whether the op is compute- or memory-bound, and the fraction of peak
    (of this machine's CPU peak: for CUDA results no fraction, as no GPU peak is measured)."""
    dtype = np.dtype(dtype)
    flops, nbytes = case.flops, case.bytes(dtype)
    out = {"gflops": flops / seconds / 1e9, "gbps": nbytes / seconds / 1e9}
    if peak and device == "cpu":
        gemm = peak["sgemm_gflops"] if dtype == np.float32 else peak.get("dgemm_gflops", peak["sgemm_gflops"])
        bound = "compute" if flops / nbytes > gemm / peak["copy_gbps"] else "memory"
        out["bound"] = bound
        out["frac_peak"] = out["gflops"] / gemm if bound == "compute" else out["gbps"] / peak["copy_gbps"]
    return out


@pytest.fixture
def measure(benchmark, threads, peak, case, set_name, dtype):
    """measure(fn): time fn() (no arguments, inputs made beforehand) as this case on this set.

    fn is called once before timing (first-call costs are measured by bench.first_call, not
    here), then by pytest-benchmark. CUDA work is synchronised inside the timed call. After the
    run, extra_info gets the rates computed from the median.
    """
    device = device_of(set_name)
    benchmark.group = case.group(dtype)
    info = benchmark.extra_info
    info.update(op=case.op, case=case.id, shape=case.label, set=set_name, dtype=np.dtype(dtype).name,
                device=device, threads=threads, flops=case.flops, bytes=case.bytes(dtype), **case.params)

    def run(fn, rounds=None, warm=None):
        if device == "cuda":
            import torch

            inner = fn

            def fn():
                inner()
                torch.cuda.synchronize()

        (warm or fn)()  # warm: compile, allocate, page in; not timed
        if rounds is None:
            benchmark(fn)
        else:
            benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0)  # warmed above
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # None under --benchmark-disable
            return None
        info["median_s"] = stats.stats.median
        info.update(rates(case, dtype, stats.stats.median, peak, device))
        return stats.stats.median

    return run


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record the run's settings beside the results: threads, dtypes, peak, library versions."""
    from bench.machine import isa_paths, versions

    peak_path = Path(config.getoption("--bench-peak"))
    try:
        peak_data = json.loads(peak_path.read_text())
    except (OSError, ValueError):
        peak_data = None
    output_json["bench"] = {
        "threads": config.getoption("--bench-threads") or kernels.cpu_count(),
        "dtypes": config.getoption("--bench-dtypes"),
        "peak": peak_data,
        "versions": versions(),
        "available": {**kernels.available(), C.CUDA: kernels.available("cuda")["torch"]},
        "isa": isa_paths(),      # the instruction-set path each set ran (kernels/_isa.py)
    }
