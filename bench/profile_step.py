"""Where a training step's time goes: the kernels, the interface's checks, and the rest.

    python -m bench.profile_step [--threads 2] [--out results/profile_step.json]

For each set and batch size, SGD training steps of 784-128-64-10 (as the end-to-end
benchmarks run them) are timed in alternating runs, medians of five:

1. plain: the step as the trainer runs it -> ``total``;
2. instrumented: every kernel of the set's backend and every op of the interface
   (kernels/_front.py's KernelSet methods) wrapped in timers -> ``kernels``, the time inside
   the kernels, and ``front`` = time inside the ops - time inside their kernels: the checks
   and allocation the interface adds in front of each kernel. Both come from one run, so
   their split is free of this shared machine's run-to-run noise (+-30% between runs).

``rest`` = total - kernels - front: the trainer's own Python (nn/model.py's loops over layers
and parameters) and the batch gather.

3. train_steps: the same steps in one ``ks.train_steps`` call, as an epoch runs them ->
   ``train_steps_us`` a step. numba and cython run the whole loop in compiled code; the other
   sets compose their kernels without the front's per-op checks (kernels/_steps.py).
 A timer costs ~0.1 us a call, which lands in the layer
it wraps. This is a profile by subtraction, not a sampling profiler: it says how much of a
step each layer costs, which is what the end-to-end targets turn on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import write_json

OPS = ("matmul", "relu", "relu_backward", "softmax_cross_entropy", "linear", "linear_backward",
       "sgd_step", "adam_step")
SETS = ("numpy", "numba", "cython", "torch")
BATCHES = (1, 32, 128)
ROOT = Path(__file__).resolve().parent.parent


class _Acc:
    def __init__(self):
        self.ns = 0
        self.calls = 0


def _timed(fn, acc: _Acc):
    clock = time.perf_counter_ns

    def timed(*args, **kwargs):
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            acc.ns += clock() - t0
            acc.calls += 1

    return timed


class _TimedBackend:
    """A backend module whose kernels add their time to ``acc``; everything else passes through."""

    def __init__(self, backend, acc: _Acc):
        self._backend = backend
        for op in OPS:
            setattr(self, op, _timed(getattr(backend, op), acc))

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _steps(engine, order, batch, n_steps):
    """Run n_steps training steps over ``order``; seconds taken."""
    t0 = time.perf_counter()
    for i in range(n_steps):
        start = (i * batch) % (len(order) - batch)
        engine.step(order[start:start + batch])
    return time.perf_counter() - t0


def _train_steps(ks, engine, order, batch, n_steps):
    """The same n_steps steps as one ks.train_steps call; seconds taken."""
    b = engine.batches
    part = order[:n_steps * batch]
    t0 = time.perf_counter()
    ks.train_steps(engine.model.params, b.x, b.y, part, batch=batch, lr=engine.opt.lr)
    return time.perf_counter() - t0


def profile(set_name: str, batch: int, threads: int, n_steps: int, repeats: int = 5) -> dict:
    import kernels
    from bench.train_common import make_engine

    ks = kernels.get(set_name, threads=threads)
    engine = make_engine(set_name, ks, batch=batch, optimizer="sgd")
    rng = np.random.default_rng(0)
    order = engine.batches.order(rng.permutation(60000))
    _steps(engine, order, batch, min(n_steps, 50))  # warm up: compile, allocate buffers
    _train_steps(ks, engine, order, batch, min(n_steps, 50))

    totals, kernel_us, front_us, fused_us, calls = [], [], [], [], 0
    backend = ks._backend
    for _ in range(repeats):
        totals.append(_steps(engine, order, batch, n_steps) * 1e6 / n_steps)
        fused_us.append(_train_steps(ks, engine, order, batch, n_steps) * 1e6 / n_steps)
        # Both layers timed in one run, so their difference is free of run-to-run noise.
        k_acc, op_acc = _Acc(), _Acc()
        ks._backend = _TimedBackend(backend, k_acc)
        for op in OPS:  # instance attributes shadow the class's methods
            setattr(ks, op, _timed(getattr(type(ks), op).__get__(ks), op_acc))
        try:
            _steps(engine, order, batch, n_steps)
        finally:
            ks._backend = backend
            for op in OPS:
                delattr(ks, op)
        kernel_us.append(k_acc.ns / 1e3 / n_steps)
        front_us.append((op_acc.ns - k_acc.ns) / 1e3 / n_steps)
        calls = op_acc.calls / n_steps

    total, kern, front, fused = (statistics.median(v) for v in (totals, kernel_us, front_us, fused_us))
    return {
        "set": set_name, "batch": batch, "threads": threads, "steps": n_steps, "repeats": repeats,
        "ops_per_step": calls,
        "total_us": total, "kernels_us": kern, "front_us": front,
        "rest_us": max(total - kern - front, 0.0),
        "samples_per_s": batch * 1e6 / total,
        "train_steps_us": fused,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "results" / "profile_step.json"))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--quick", action="store_true", help="few steps: a smoke test")
    args = parser.parse_args(argv)

    import kernels

    threads = args.threads or kernels.cpu_count()
    available = kernels.available()
    names = args.sets.split(",")
    rows = []
    if len(names) > 1:
        # One process per set: a set's idle thread pool (OpenMP's, Numba's, OpenBLAS's) spins
        # for a while after its last call and would slow the next set down.
        for name in names:
            with tempfile.TemporaryDirectory() as tmp:
                part = Path(tmp) / "part.json"
                argv = [sys.executable, "-m", "bench.profile_step", "--threads", str(threads),
                        "--sets", name, "--out", str(part)] + (["--quick"] if args.quick else [])
                subprocess.run(argv, check=True, cwd=ROOT)
                rows += json.loads(part.read_text())["rows"]
    else:
        name = names[0]
        if available.get(name, "unknown set") is not None:
            print(f"{name}: skipped ({available.get(name, 'unknown set')})")
        else:
            for batch in BATCHES:
                n_steps = 20 if args.quick else {1: 2000, 32: 400}.get(batch, 150)
                row = profile(name, batch, threads, n_steps)
                rows.append(row)
                print(f"{name:8s} b{batch:<4d} {row['total_us']:9.1f} us/step: kernels {row['kernels_us']:8.1f}, "
                      f"front {row['front_us']:6.1f} ({row['ops_per_step']:.0f} ops), rest {row['rest_us']:6.1f}; "
                      f"train_steps {row['train_steps_us']:8.1f} us/step",
                      flush=True)
    out = write_json(args.out, {"threads": threads, "optimizer": "sgd", "rows": rows})
    print(f"-> {out}")
    return 0


def summary(rows) -> dict:
    """Median share of a step's time spent in the front, per batch size (for the report)."""
    shares = {}
    for b in sorted({r["batch"] for r in rows}):
        vals = [r["front_us"] / r["total_us"] for r in rows if r["batch"] == b and r["total_us"] > 0]
        if vals:
            shares[b] = statistics.median(vals)
    return shares


if __name__ == "__main__":
    raise SystemExit(main())
