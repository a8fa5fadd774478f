"""Sets that slow each other down: a set timed right after another runtime's call, and alone.

    python -m bench.mixing [--threads 2] [--repeats 3] [--rounds 7] [--quick]
                           [--configs quiet,none] [--out results/mixing.json]

Each thread pool in the process (OpenBLAS's for numpy, libgomp's OpenMP team for cython and for
Numba's omp layer, torch's own libgomp for torch) keeps its workers spinning for a while after a
call. On two cores the next set's threads then share the cores with spinning ones. For each
ordered pair A -> B of sets and each op (the MLP's linear at batch 128 with relu, and a 2048³
matmul), a round times B twice, in alternating order:

* ``after``: B's call right after A's call of the same op (A, then B timed, repeated so the turn
  lasts about ``MIN_TURN_S``: the loop of a program that mixes two sets);
* ``alone``: B's call repeated on its own.

A turn's figure is the median of its calls (on a shared machine a neighbour's time slice lands
on a few of them).

Both turns start after a ``PAUSE_S`` pause (every pool asleep) and an untimed call of B (its own
pool awake). The figure is the median over rounds of after / alone (target: at most 1.3).

The thread pools' wait policies are read when their libraries load, so each configuration runs
in a fresh process: ``quiet`` is ``import kernels`` first with ``KERNELS_QUIET_POOLS=1``
(kernels/_runtimes.py sets its defaults), ``none`` the libraries' own. Configurations take
turns, ``repeats`` times, so a neighbour's burst on this shared machine lands on all of them;
the JSON keeps every repeat's figure, and the summary says the median and the spread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETS = ("numpy", "numba", "cython", "torch")
PAUSE_S = 0.3     # every pool's workers asleep after this (OpenBLAS's spin for ~0.1 s by default)
MIN_TURN_S = 0.02  # a linear turn repeats its call until it lasts this long
# name -> environment of the child process
# (besides quiet and none, each of kernels' defaults alone, to see which one matters)
CONFIGS = {"quiet": {"KERNELS_QUIET_POOLS": "1"}, "none": {},
           "openblas-only": {"OPENBLAS_THREAD_TIMEOUT": "4"},
           "omp-only": {"OMP_WAIT_POLICY": "passive"},
           # a short spin instead of none: libgomp's workers spin GOMP_SPINCOUNT pause loops (about
           # 0.1 ms at 10,000 here) so that back-to-back calls of one set find them awake
           "short-spin": {"OPENBLAS_THREAD_TIMEOUT": "4", "GOMP_SPINCOUNT": "10000"}}
DEFAULT_CONFIGS = ("quiet", "none")


def _ops(ks, quick):
    """{op: a call of ks on its own inputs}."""
    import numpy as np

    from bench import cases as C
    from bench.inputs import linear_inputs, matmul_operands

    f32 = np.float32
    lin = next(c for c in C.linear_cases() if c.params["batch"] == 128 and c.params["relu"])
    x, w, b, out = linear_inputs(ks, lin, f32)
    n = 512 if quick else 2048
    a, bm, o = matmul_operands(ks, C.matmul_case(n, n, n), f32)
    return {f"linear-b128": lambda: ks.linear(x, w, b, relu=True, out=out),
            f"matmul-{n}": lambda: ks.matmul(a, bm, out=o)}


def child(threads: int, rounds: int, quick: bool, ops=None, sets=None) -> dict:
    """Every pair's rounds, in this process (its environment is the configuration)."""
    import kernels

    report = kernels.runtime_report()  # what is in effect; before any pool starts
    sets = [s for s in (sets or SETS) if kernels.available()[s] is None]
    calls = {s: _ops(kernels.get(s, threads=threads), quick) for s in sets}
    if ops:
        calls = {s: {op: f for op, f in c.items() if op.split("-")[0] in ops} for s, c in calls.items()}
    for s in sets:  # compile, load, first-touch
        for f in calls[s].values():
            f()
    clock = time.perf_counter
    results = []
    for op in calls[sets[0]]:
        for b in sets:
            fb = calls[b][op]
            t0 = clock()
            fb()
            reps = max(1, math.ceil(MIN_TURN_S / max(clock() - t0, 1e-9)))
            for a in sets:
                if a == b:
                    continue
                fa = calls[a][op]
                after, alone = [], []
                for r in range(rounds):
                    for kind in (("after", "alone") if r % 2 == 0 else ("alone", "after")):
                        time.sleep(PAUSE_S)
                        fb()
                        took = []
                        for _ in range(reps):
                            if kind == "after":
                                fa()
                            t0 = clock()
                            fb()
                            took.append(clock() - t0)
                        # the turn's median call: a neighbour's process that takes a core for a
                        # time slice lands on a few calls, not on the turn's figure
                        (after if kind == "after" else alone).append(statistics.median(took))
                ratios = [x / y for x, y in zip(after, alone)]
                results.append({"op": op, "a": a, "b": b, "after_s": statistics.median(after),
                                "alone_s": statistics.median(alone), "ratio": statistics.median(ratios),
                                "ratios": ratios, "reps": reps})
    return {"runtime": report, "results": results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="512³ instead of 2048³, for a smoke run")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "mixing.json")
    p.add_argument("--ops", default="linear,matmul", help="comma-separated, of linear, matmul")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.rounds < 1:
        p.error("--threads, --repeats and --rounds must be at least 1")
    bad_sets = [x for x in args.sets.split(",") if x not in SETS]
    if bad_sets or len(args.sets.split(",")) < 2:
        p.error(f"--sets: expected two or more of {', '.join(SETS)}, got {args.sets!r}")
    bad_ops = [x for x in args.ops.split(",") if x not in ("linear", "matmul")]
    if bad_ops:
        p.error(f"--ops: expected some of linear, matmul, got {args.ops!r}")
    if args.child:
        print(json.dumps(child(args.threads, args.rounds, args.quick, args.ops.split(","), args.sets.split(","))))
        return 0
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {', '.join(unknown)}; expected some of {', '.join(CONFIGS)}")

    from bench import write_json
    from bench.machine import describe

    runs = {c: [] for c in configs}
    for rep in range(args.repeats):
        for c in configs:
            from kernels._runtimes import DEFAULTS, ENV

            drop = {ENV, "GOMP_SPINCOUNT", *DEFAULTS}  # each configuration says all of its own
            env = {k: v for k, v in os.environ.items() if k not in drop}
            env.update(CONFIGS[c])
            cmd = [sys.executable, "-m", "bench.mixing", "--child", "--threads", str(args.threads),
                   "--rounds", str(args.rounds), "--ops", args.ops, "--sets", args.sets] + (["--quick"] if args.quick else [])
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            runs[c].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"repeat {rep + 1}/{args.repeats} {c}: done", file=sys.stderr, flush=True)

    summary = []
    for c in configs:
        first = runs[c][0]["results"]
        for i, row in enumerate(first):
            per = [run["results"][i] for run in runs[c]]
            ratios = [x["ratio"] for x in per]
            summary.append({"config": c, "op": row["op"], "a": row["a"], "b": row["b"],
                            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                            "alone_s": statistics.median(x["alone_s"] for x in per),
                            "after_s": statistics.median(x["after_s"] for x in per)})
    out = {"machine": describe(),
           "threads": args.threads, "repeats": args.repeats, "rounds": args.rounds, "pause_s": PAUSE_S,
           "runtime": {c: runs[c][0]["runtime"] for c in configs}, "summary": summary, "runs": runs}
    write_json(args.out, out)
    print(f"{'config':9} {'op':12} {'A -> B':17} {'alone ms':>9} {'after ms':>9} {'after/alone':>11} (min-max)")
    for s in summary:
        print(f"{s['config']:9} {s['op']:12} {s['a'] + ' -> ' + s['b']:17} {s['alone_s'] * 1e3:9.3f} "
              f"{s['after_s'] * 1e3:9.3f} {s['ratio']:11.2f} ({s['ratio_min']:.2f}-{s['ratio_max']:.2f})")
    if "none" in configs:  # what quiet pools cost a set alone: its alone time, config / none
        print(f"\nalone, against none (median over the pairs that end in the set): {'op':12} {'set':7} config/none")
        for c in (c for c in configs if c != "none"):
            for op in dict.fromkeys(x["op"] for x in summary):
                for b in dict.fromkeys(x["b"] for x in summary):
                    t = {cfg: statistics.median(x["alone_s"] for x in summary if (x["config"], x["op"], x["b"]) == (cfg, op, b))
                         for cfg in (c, "none")}
                    print(f"{c:>58} {op:12} {b:7} {t[c] / t['none']:.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
