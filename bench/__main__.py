"""Run the whole benchmark suite and write the report: ``python -m bench``.

    python -m bench                       # everything, into results/  (about 40 minutes on 2 cores,
                                          # 30 of them bench.peers_run; --skip peers: about 9)
    python -m bench --threads 2           # the thread count every set uses (default: every core)
    python -m bench --out results/runs/x  # somewhere else (results/runs/ is git-ignored)
    python -m bench --quick -- -k numpy   # a short smoke run; arguments after -- go to pytest

Steps, each in its own process so one cannot disturb the next:

1. ``bench.peak``: this machine's sgemm/dgemm FLOP/s and copy bandwidth -> peak.json;
2. ``bench.first_call``: import, compile and first-call costs, cold and warm -> first_call.json;
3. ``python -m kernels warmup``: the Numba sets' kernels, every op at every dtype benchmarked,
   compiled into Numba's cache (a first run's tens of seconds, said while they pass; the
   benchmarks would pay them in their untimed first calls, in silence), then pytest-benchmark
   over bench/ (every op on every CPU set, the references, and end to end)
   -> bench-cpu.json; on a machine with a GPU, a second run of the CUDA entries (with torch
   on the CPU beside them) -> bench-gpu.json;
4. ``bench.time_to_accuracy`` (when the trainer is present) -> time_to_accuracy.json,
   ``bench.profile_step``: where a training step's time goes -> profile_step.json, and
   ``bench.paired``: the targets' two sides timed in alternating turns -> paired.json, and
   once more for each other tuned instruction-set path this CPU runs (KERNELS_ISA=avx2 on an
   AVX-512 machine, against OpenBLAS's Haswell kernel) -> paired-<path>.json;
   ``bench.peers_run``: every set against JAX, torch.compile and torch eager across network sizes,
   and Adam against torch.optim.Adam, each framework in its own process -> peers.json
   (about 30 minutes on a quiet machine; --quick about 2; JAX from ``pip install -e .[peers]``, skipped without it),
   and the seeds' network at batches 1, 32 and 128 once more on each other tuned path, with every
   peer held to that path too (PEER_ISA_ENV) -> peers-<path>.json;
5. ``bench.peak`` again: the peaks kept are the best of the two measurements, so a disturbance
   during one of them does not understate the machine;
6. ``bench.report`` -> REPORT.md and charts/.

A failing step is reported and the rest still run; the exit status is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import write_json

ROOT = Path(__file__).resolve().parent.parent

# pytest-benchmark settings of the full run: at least 5 rounds, up to ~0.3 s a benchmark (a
# 2048^3 matmul still gets its 5 rounds), the garbage collector off while timing.
PYTEST_TIMING = ["--benchmark-min-rounds=5", "--benchmark-max-time=0.3", "--benchmark-disable-gc",
                 "--benchmark-warmup=off"]
PYTEST_QUICK = ["--benchmark-min-rounds=3", "--benchmark-max-time=0.02", "--benchmark-disable-gc"]
CPU_ENTRIES = None  # every set but the CUDA ones (selected with -k below)
GPU_SETS = "torch-cuda,torch-autograd-cuda,torch-optim-cuda,torch-reference-cuda,torch,torch-autograd,torch-optim"


def step(title, argv, failures, timeout=None, env=None):
    shown = " ".join(f"{k}={v}" for k, v in (env or {}).items() if v is not None)
    print(f"\n=== {title}: {shown + ' ' if shown else ''}{' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    run_env = None
    if env:
        run_env = {**os.environ, **{k: v for k, v in env.items() if v is not None}}
        for k in [k for k, v in env.items() if v is None]:
            run_env.pop(k, None)
    try:
        rc = subprocess.run(argv, cwd=ROOT, timeout=timeout, env=run_env).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    print(f"=== {title}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {time.perf_counter() - t0:.0f} s", flush=True)
    if rc != 0:
        failures.append(title)
    return rc


# OpenBLAS's kernel that matches each path, so that a forced path is measured against its peer
# (threadpoolctl then reports it, and the report says which ran); None: OpenBLAS's own choice.
OPENBLAS_CORE = {"avx2": "Haswell", "avx512": "SkylakeX", "neon": None}

# What holds each peer to a forced path, so that the sets on, say, the avx2 path race peers that
# run AVX2 code too: XLA's CPU backend (JAX), ATen's kernels and inductor's vector code
# (torch.compile), and the BLAS and oneDNN under torch's matmuls.
PEER_ISA_ENV = {
    "avx2": {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
# The peers' headline cells, measured again on each forced path (the issue's targets)
PATH_PEERS_ARGS = ["--sizes", "784-128-64-10", "--batches", "1,32,128", "--no-adam"]


def other_paths():
    """[(path, env)]: the tuned paths this CPU runs besides its best one (not generic, the
    fallback), each with KERNELS_ISA forcing it and OpenBLAS's matching kernel."""
    from kernels import _isa

    if os.environ.get(_isa.ENV):
        return []   # a forced run measures that path only
    return [(p, {_isa.ENV: p, "OPENBLAS_CORETYPE": OPENBLAS_CORE.get(p), "OPENBLAS_L2_SIZE": None})
            for p in _isa.supported()[1:] if p != "generic"]


def trim_benchmark_json(path: Path) -> None:
    """Drop each benchmark's raw per-round timings (stats.data) from pytest-benchmark's JSON.

    A microsecond op gets ~10^5 rounds in its 0.3 s, so the raw timings of a full run weigh
    ~200 MB; the summary statistics (median, quartiles, outliers, rounds) stay, and with them
    everything the report and ``--benchmark-compare``-style comparisons read.
    """
    data = _load(path)
    if not data:
        return
    for bench in data.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)
    write_json(path, data)


def merge_peaks(before: dict | None, after: dict | None) -> dict | None:
    """The best of two peak measurements, metric by metric, with both kept for the record."""
    if not before or not after:
        return before or after
    best = dict(before)
    for key in ("sgemm_gflops", "dgemm_gflops", "copy_gbps", "copy_gbps_1thread", "copy_gbps_threads", "copy_l3_gbps"):
        best[key] = max(before.get(key, 0.0), after.get(key, 0.0))
    best["runs"] = [{k: v for k, v in run.items() if k != "machine"} for run in (before, after)]
    return best


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description="Run the benchmark suite and write the report.")
    parser.add_argument("--threads", type=int, default=None, help="threads for every set (default: every core)")
    parser.add_argument("--out", default=str(ROOT / "results"), help="results directory (default results/)")
    parser.add_argument("--quick", action="store_true", help="short timings and small peak problems: a smoke test")
    parser.add_argument("--dtypes", default="float32", help="comma-separated (default float32)")
    parser.add_argument("--skip", default="",
                        help="comma-separated steps to skip: "
                             "peak,first_call,warmup,bench,gpu,tta,profile,paired,paths,peers,report")
    args = parser.parse_args(argv)

    import kernels

    threads = args.threads or kernels.cpu_count()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    py = sys.executable
    failures = []
    t_start = time.perf_counter()
    env_note = f"{threads} threads, results in {out}"
    print(f"python -m bench: {env_note}", flush=True)

    peak_path = out / "peak.json"
    quick = ["--quick"] if args.quick else []
    before = None
    if "peak" not in skip:
        step("peak (before)", [py, "-m", "bench.peak", "--threads", str(threads), "--out", str(peak_path)] + quick, failures)
        before = _load(peak_path)
    if "first_call" not in skip:
        step("first-call costs", [py, "-m", "bench.first_call", "--threads", str(threads),
                                  "--out", str(out / "first_call.json")], failures)

    if "warmup" not in skip:
        step("compile the Numba kernels (first run only)", [py, "-m", "kernels", "warmup", "--sets", "all",
                                                           "--all-ops", "--dtype", args.dtypes,
                                                           "--threads", str(threads)], failures)

    common = [py, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider", "--benchmark-enable",
              "--benchmark-group-by=group", "--benchmark-sort=name", "--benchmark-columns=median,iqr,rounds",
              f"--bench-threads={threads}", f"--bench-peak={peak_path}", f"--bench-dtypes={args.dtypes}"]
    timing = PYTEST_QUICK if args.quick else PYTEST_TIMING
    # The CPU run leaves the CUDA entries out; a -k given after -- narrows it further.
    user_k, rest = _split_k(extra)
    cpu_k = "not cuda" + (f" and ({user_k})" if user_k else "")
    if "bench" not in skip:
        step("benchmarks (CPU)", common + timing + ["--benchmark-json", str(out / "bench-cpu.json"),
                                                    "-k", cpu_k] + rest, failures)
        trim_benchmark_json(out / "bench-cpu.json")
    if "gpu" not in skip and kernels.available("cuda")["torch"] is None:
        step("benchmarks (GPU)", common + timing + ["--benchmark-json", str(out / "bench-gpu.json"),
                                                    f"--bench-sets={GPU_SETS}"] + extra, failures)
        trim_benchmark_json(out / "bench-gpu.json")
    if "tta" not in skip and importlib.util.find_spec("bench.time_to_accuracy") is not None:
        step("time to accuracy", [py, "-m", "bench.time_to_accuracy", "--threads", str(threads),
                                  "--out", str(out / "time_to_accuracy.json")], failures)
    if "profile" not in skip:
        step("training-step profile", [py, "-m", "bench.profile_step", "--threads", str(threads),
                                       "--out", str(out / "profile_step.json")] + quick, failures)
    if "paired" not in skip:
        step("targets in alternating turns", [py, "-m", "bench.paired", "--threads", str(threads),
                                              "--out", str(out / "paired.json")] + quick, failures)
    if "paths" not in skip:
        for path, env in other_paths():
            step(f"targets in alternating turns, {path} path", [py, "-m", "bench.paired", "--threads", str(threads),
                                                              "--out", str(out / f"paired-{path}.json")] + quick,
                 failures, env=env)
    if "peers" not in skip:
        step("against the peers, each in its own process", [py, "-m", "bench.peers_run", "--threads", str(threads),
                                                             "--out", str(out / "peers.json")] + quick, failures)
        for path, env in other_paths():
            step(f"against the peers, {path} path", [py, "-m", "bench.peers_run", "--threads", str(threads),
                                                     "--out", str(out / f"peers-{path}.json")] + PATH_PEERS_ARGS
                 + quick, failures, env={**env, **PEER_ISA_ENV.get(path, {})})
    if "peak" not in skip:
        step("peak (after)", [py, "-m", "bench.peak", "--threads", str(threads), "--out", str(out / "peak-after.json")]
             + quick, failures)
        after = _load(out / "peak-after.json")
        merged = merge_peaks(before, after)
        if merged:
            write_json(peak_path, merged)
        (out / "peak-after.json").unlink(missing_ok=True)
    if "report" not in skip:
        step("report", [py, "-m", "bench.report", "--results", str(out)], failures)

    minutes = (time.perf_counter() - t_start) / 60
    print(f"\npython -m bench: done in {minutes:.1f} min ({env_note})"
          + (f"; FAILED steps: {', '.join(failures)}" if failures else ""), flush=True)
    return 1 if failures else 0


def _split_k(args):
    """(the expression of a -k option in args or None, the other args)."""
    k, rest, it = None, [], iter(args)
    for a in it:
        if a == "-k":
            k = next(it, None)
        elif a.startswith("-k") and len(a) > 2:
            k = a[2:]
        else:
            rest.append(a)
    return k, rest


def _load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
