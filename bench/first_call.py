"""First-call costs of every set, each in a fresh process: import, JIT compile, lazy set-up.

    python -m bench.first_call [--threads N] [--out results/first_call.json] [--sets a,b]

The benchmarks call every op once before timing, so what a first call costs (Numba compiling
each kernel, torch initialising its dispatcher, caches being filled) never reaches their
medians. It is measured here instead, and reported, in a fresh ``python -c`` per set and run:

* ``cold``: NUMBA_CACHE_DIR points to a new, empty directory, so every @njit(cache=True)
  kernel is compiled from scratch (what a first run on a new machine pays);
* ``warm``: a second fresh process with the same, now filled, cache directory (what every later
  run pays: loading compiled code from the cache).

For each op (MLP shapes at batch 32, float32) the record has the first call and the second
call, so first - second is the one-off cost. ``import_s`` is ``import kernels``, ``get_s``
is ``kernels.get(name)``, which imports the set's backend (and torch, or Numba, with it);
``process_s`` is the whole process, interpreter start-up included.

``trainer`` is what a user of ``python -m nn.train --kernels numba`` meets: in a fresh process,
what the trainer does before its first training step (import, the data, the engine, its
warm-up: the compile), cold and warm as above, ``--trainer-runs`` times each (the machine is
shared: medians, and the load average beside them). ``to_first_step_s`` runs from the process's
launch to the end of the warm-up, ``warm_up_s`` is the warm-up alone; a cold run also says where
its compile went: ``compile_self_s``, per jitted function, the seconds Numba spent compiling it
(LLVM included) less those spent on the functions it calls (from ``numba.core.event``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import write_json

ROOT = Path(__file__).resolve().parent.parent

# Runs in the child: one set, every op once and twice, timings as JSON on the last line.
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
t_numpy = time.perf_counter()
import kernels
t_import = time.perf_counter()
name, device, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
ks = kernels.get(name, device=device, threads=threads)
t_get = time.perf_counter()

def sync():
    if device != "cpu":
        import torch
        torch.cuda.synchronize()

rng = np.random.default_rng(0)
def arr(*shape, scale=1.0):
    return ks.asarray((rng.standard_normal(shape) * scale).astype(np.float32))

B, I, O = 32, 784, 128
x, w, b, g = arr(B, I), arr(I, O, scale=0.05), arr(O), arr(B, O)
y = arr(B, O)
logits, labels = arr(B, 10), ks.asarray(rng.integers(0, 10, B))
p, m, v = arr(I, O), ks.asarray(np.zeros((I, O), np.float32)), ks.asarray(np.zeros((I, O), np.float32))
ops = {
    "matmul": lambda: ks.matmul(x, w),
    "matmul_trans_a": lambda: ks.matmul(x, g, trans_a=True),
    "matmul_trans_b": lambda: ks.matmul(g, w, trans_b=True),
    "relu": lambda: ks.relu(y),
    "relu_backward": lambda: ks.relu_backward(g, y),
    "softmax_cross_entropy": lambda: ks.softmax_cross_entropy(logits, labels),
    "linear": lambda: ks.linear(x, w, b, relu=True),
    "linear_backward": lambda: ks.linear_backward(x, w, y, g, relu=True),
    "sgd_step": lambda: ks.sgd_step(p, w, lr=1e-3),
    "adam_step": lambda: ks.adam_step(p, w, m, v, step=1, lr=1e-3),
}
sync()
result = {}
for op, fn in ops.items():
    times = []
    for _ in range(2):
        s = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - s)
    result[op] = {"first_s": times[0], "second_s": times[1], "once_s": max(times[0] - times[1], 0.0)}
print(json.dumps({"numpy_import_s": t_numpy - t0, "import_s": t_import - t_numpy, "get_s": t_get - t_import,
                  "ops": result, "first_calls_s": sum(r["first_s"] for r in result.values()),
                  "once_total_s": sum(r["once_s"] for r in result.values())}))
"""


# Runs in the child: what nn.train does before its first step, timed from the process's launch
# (argv[3], time.time() in the parent); with argv[4] == "profile", compile seconds per function.
TRAINER_CHILD = r"""
import json, sys, time
name, threads, launched, profile = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "profile"
t0 = time.perf_counter()
self_s, stack = {}, []
if profile:
    from numba.core import event

    class Listener(event.Listener):
        def on_start(self, ev):
            stack.append([time.perf_counter(), 0.0])

        def on_end(self, ev):
            start, inner = stack.pop()
            took = time.perf_counter() - start
            if stack:
                stack[-1][1] += took
            d = ev.data["dispatcher"]
            key = getattr(d, "__qualname__", None) or str(d)
            self_s[key] = self_s.get(key, 0.0) + took - inner

    event.register("numba:compile", Listener())
from nn.train import Config, setup
run = setup(Config(kernels=name, threads=threads, quiet=True, download=False))
t_setup = time.perf_counter()
warm = run.engine.warm_up()
t_warm = time.perf_counter()
print(json.dumps({"to_first_step_s": time.time() - launched, "setup_s": t_setup - t0, "warm_up_s": t_warm - t_setup,
                  "compiled_functions": len(warm.compiled),
                  "compile_self_s": dict(sorted(self_s.items(), key=lambda kv: -kv[1]))}))
"""


def run_trainer_child(name, threads, cache_dir, profile, timeout=900):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONDONTWRITEBYTECODE": "1"}
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-c", TRAINER_CHILD, name, str(threads), repr(time.time()),
                           "profile" if profile else "-"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load_average_1min"] = load
    return out


def measure_trainer(name, threads, runs) -> dict:
    """Cold and warm runs of the trainer's path to its first step, ``runs`` of each, alternating
    (cold, warm, cold, warm, ...: a disturbance hits both); medians over the runs."""
    import statistics

    record = {"runs": runs, "cold": [], "warm": []}
    print(f"nn.train --kernels {name}: timing its path to the first step, {runs} cold and {runs} warm runs "
          "(each cold run compiles from scratch, in an empty cache: tens of seconds)", flush=True)
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
            record["cold"].append(run_trainer_child(name, threads, cache, profile=(i == 0)))
            record["warm"].append(run_trainer_child(name, threads, cache, profile=False))
    for kind in ("cold", "warm"):
        ok = [r for r in record[kind] if "error" not in r]
        if ok:
            record[f"{kind}_median"] = {k: statistics.median(r[k] for r in ok)
                                        for k in ("to_first_step_s", "setup_s", "warm_up_s", "load_average_1min")}
    return record


def run_child(name, device, threads, cache_dir, timeout=900):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, name, device, str(threads)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"], "process_s": wall}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out


def measure(threads=None, sets=None, trainer_runs=3) -> dict:
    import kernels

    threads = threads or kernels.cpu_count()
    todo = [(n, "cpu", n) for n, reason in kernels.available().items() if reason is None]
    if kernels.available("cuda")["torch"] is None:
        todo.append(("torch", "cuda", "torch-cuda"))
    skipped = {n: r for n, r in kernels.available().items() if r is not None}
    if sets:
        todo = [t for t in todo if t[2] in sets]
    from bench.machine import describe

    from kernels import _isa

    result = {"threads": threads, "dtype": "float32", "batch": 32, "cpu": describe()["cpu"],
              "isa": _isa.selected(), "isa_forced": _isa.requested(), "sets": {},
              "unavailable": skipped,
              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for name, device, label in todo:
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
            cold = run_child(name, device, threads, cache)
            warm = run_child(name, device, threads, cache)
        result["sets"][label] = {"cold": cold, "warm": warm}
        summary = ", ".join(f"{k} {v.get('get_s', float('nan')) + v.get('first_calls_s', float('nan')):.2f} s"
                            for k, v in (("cold", cold), ("warm", warm)))
        print(f"first call {label:13s} get + first calls: {summary}", flush=True)
    result["trainer"] = {}
    for name in ("numba",):
        if trainer_runs and name in {t[2] for t in todo}:
            rec = result["trainer"][name] = measure_trainer(name, threads, trainer_runs)
            summary = ", ".join(f"{k} {rec[k + '_median']['to_first_step_s']:.1f} s" for k in ("cold", "warm")
                                if k + "_median" in rec)
            print(f"nn.train --kernels {name}: to the first step, median of {trainer_runs}: {summary}", flush=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sets", default=None, help="comma-separated set names (default: every available set)")
    parser.add_argument("--trainer-runs", type=int, default=3,
                        help="cold and warm runs of nn.train's path to its first step (default 3; 0: none)")
    parser.add_argument("--out", default=str(ROOT / "results" / "first_call.json"))
    args = parser.parse_args(argv)
    sets = {s.strip() for s in args.sets.split(",")} if args.sets else None
    result = measure(args.threads, sets, args.trainer_runs)
    out = write_json(args.out, result, indent=2)
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    main()
