"""Measure this machine's peaks: FLOP/s with a large BLAS gemm, bandwidth with a large copy.

    python -m bench.peak [--threads N] [--out results/peak.json] [--quick]

* FLOP/s: NumPy's matmul (its BLAS sgemm / dgemm) on n x n matrices, n = 3072 (quick: 1536),
  with BLAS limited to ``threads`` through threadpoolctl; the best of several calls, since the
  peak is what the machine *can* do and every disturbance only slows a call down.
* Bandwidth: a copy of 256 MiB (quick: 64 MiB) into another array, far beyond the caches,
  counted as bytes read + bytes written. np.copyto runs on one thread, so the copy is also
  timed split over ``threads`` threads (NumPy releases the GIL), and the faster of the two is
  the peak (``copy_gbps``). A copy of 16 MiB, the size of one 4096 x 1000 float32 array, is
  also recorded (``copy_l3_gbps``): that is the bandwidth the largest elementwise benchmarks
  see when their arrays still partly fit in the last-level cache.

The result also describes the machine (``bench.machine``) and is the reference that every
result's ``frac_peak`` and the report's roofline use.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import kernels
from bench import write_json
from bench.machine import describe

ROOT = Path(__file__).resolve().parent.parent


def _best(fn, repeats):
    fn()  # warm: page in, spin up the BLAS threads
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_gflops(n, dtype, threads, repeats=5):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype)
    with threadpool_limits(limits=threads, user_api="blas"):
        seconds = _best(lambda: np.matmul(a, b, out=out), repeats)
    return 2.0 * n**3 / seconds / 1e9


def copy_gbps(nbytes, threads, repeats=10):
    """(one-thread np.copyto GB/s, ``threads``-way split copy GB/s) of an nbytes array."""
    n = nbytes // 4
    src = np.ones(n, np.float32)
    dst = np.zeros(n, np.float32)
    single = 2.0 * src.nbytes / _best(lambda: np.copyto(dst, src), repeats) / 1e9
    if threads <= 1:
        return single, single
    with ThreadPoolExecutor(threads) as pool:
        split = 2.0 * src.nbytes / _best(split_copy(src, dst, pool, threads), repeats) / 1e9
    return single, split


def split_copy(src, dst, pool, threads):
    """A copy of src into dst (same shape, C-contiguous) in ``threads`` equal parts on ``pool``,
    as a call without arguments (np.copyto releases the GIL, so the parts run at once)."""
    s, d = src.reshape(-1), dst.reshape(-1)
    bounds = np.linspace(0, s.size, threads + 1).astype(int)
    chunks = [(d[lo:hi], s[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def copy():
        list(pool.map(lambda c: np.copyto(*c), chunks))

    return copy


def measure(threads=None, quick=False) -> dict:
    threads = threads or kernels.cpu_count()
    n = 1536 if quick else 3072
    big = (64 if quick else 256) << 20
    t0 = time.perf_counter()
    sgemm = gemm_gflops(n, np.float32, threads)
    dgemm = gemm_gflops(n, np.float64, threads, repeats=3)
    copy_1, copy_t = copy_gbps(big, threads)
    l3_1, l3_t = copy_gbps(16 << 20, threads, repeats=30)
    return {
        "threads": threads,
        "sgemm_gflops": sgemm,
        "dgemm_gflops": dgemm,
        "gemm_n": n,
        "copy_gbps": max(copy_1, copy_t),
        "copy_gbps_1thread": copy_1,
        "copy_gbps_threads": copy_t,
        "copy_bytes": big,
        "copy_l3_gbps": max(l3_1, l3_t),
        "copy_l3_bytes": 16 << 20,
        "quick": quick,
        "seconds": time.perf_counter() - t0,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": describe(),
    }


def load(path=ROOT / "results" / "peak.json") -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "results" / "peak.json"))
    parser.add_argument("--quick", action="store_true", help="smaller problems, for a smoke test")
    args = parser.parse_args(argv)
    result = measure(args.threads, args.quick)
    out = write_json(args.out, result, indent=2)
    print(f"peak ({result['threads']} threads): sgemm {result['sgemm_gflops']:.1f} GFLOP/s, "
          f"dgemm {result['dgemm_gflops']:.1f} GFLOP/s, copy {result['copy_gbps']:.1f} GB/s "
          f"(16 MiB: {result['copy_l3_gbps']:.1f} GB/s) -> {out}")
    return result


if __name__ == "__main__":
    main()
