"""The targets' ratios, each side timed in alternating turns: ``python -m bench.paired``.

    python -m bench.paired [--threads 2] [--out results/paired.json] [--quick]

The suite (pytest-benchmark) times each benchmark as a group of its own, one after another:
numpy's 2048³ rounds and cython's are minutes apart, and an epoch gets two rounds. On this
shared machine a neighbour can take one of the two cores for minutes, so a ratio of two medians
taken apart carries whatever happened in between; in this project's runs the same unchanged
kernel has read anywhere from 0.55× to 1.04× numpy. Here the two sides of a ratio take turns
(A B, B A, A B, ...) and the figure quoted is the median over the rounds of each round's ratio:
a disturbance that lasts longer than a round slows both sides, and the ratio keeps.

Each turn calls its side once untimed (caches and the thread pool warm, as in a benchmark group
of its own), then times ``calls`` calls in a row, enough to take about ``MIN_TURN_S`` (so that
neither the timer's resolution nor the first call after a pause decides the turn; the count is
sized from the fastest of a few calls). Between two turns on different thread pools it waits
``SETTLE_S``, so that the previous pool's workers have stopped spinning: OpenBLAS's keep a core
busy for about 0.1 s after numpy's last matmul, and a cython matmul of 256³ run in that time
measured 7.5 ms instead of 0.3 (conftest.SET_SETTLE_S). The untimed call after the pause wakes
the pool again, whose threads went to sleep.

The pairs (``value`` is what the target is stated in):

* ``matmul-2048``: numpy's 2048³ time / the set's (speed-up, ≥ 0.9 best, ≥ 0.6 each);
* ``shapes``: numpy's time / the set's for each of the MLP's 24 products (bench.cases'
  mlp_matmul_cases), quoted as their geometric mean (≥ 1.0 best);
* ``relu``, ``relu_backward`` at 4096×1000: the op's bytes per second / a copy's, the copy
  over the same arrays (its input into its output), split over the threads as bench.peak
  splits its copy (fraction of the copy bandwidth, ≥ 0.8);
* ``epilogue``: linear(relu=True) / matmul of the same shape, each hidden layer at batch 32,
  128 and 512 (cost of the fused epilogue, ≤ 1.05 as a geometric mean); ``epilogue-tanh`` the
  same with activation="tanh" (≤ 1.1);
* ``tanh`` at 4096×1000: np.tanh's time (called directly, over NumPy arrays) / the set's
  ks.tanh (speed-up, ≥ 3 best);
* ``softmax_cross_entropy`` at 128×10 and 4096×1000: F.cross_entropy + backward / the set's;
* ``epoch-b128``, ``epoch-b1``: numpy's epoch / the set's, as bench_train times them (60,000
  samples at batch 128, ``BATCH1_STEPS`` steps at batch 1);
* ``perop-b128``: the user's own loop, op by op through the interface (nn.model.MLP's
  train_step after the batch's gather), numpy's / the set's, ``PEROP_STEPS`` steps at batch 128.

Run as part of ``python -m bench``, after the suite; bench.report puts these figures beside the
suite's in its targets table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bench import cases as C
from bench import write_json
from bench.peak import split_copy

ROOT = Path(__file__).resolve().parent.parent
# A turn times this long at least: many calls of a microsecond op, and several of a millisecond
# one. At 2 ms, the 4096x1000 ops (1-3 ms a call) got turns of one or two calls, and their
# rounds split by order: the same pair read about 2 in the rounds where the set followed its
# own turn and 0.2-0.8 where it followed the other side's (tanh, numba: 0.19-2.22 in one run).
MIN_TURN_S = 0.02
SETTLE_S = 0.2      # the pause between turns on two different thread pools
# The sets that can stand on the second side (numpy and torch are the first; the naive sets would take
# minutes a turn at 2048^3).
PAIRED_SETS = C.COMPILED_SETS + ("torch",)
# Rounds per pair, by the part of its key before "-": more for the short calls, whose turns are
# milliseconds, fewer for the epochs, whose turns are most of a second (9 rather than 5: at 5 the
# middle half of the batch-128 epoch's rounds spanned 1.61-2.10, too wide for a target at 2).
ROUNDS = {"matmul": 9, "shapes": 7, "relu": 21, "relu_backward": 21, "epilogue": 15, "softmax_cross_entropy": 15, "epoch": 9,
          "perop": 9, "tanh": 21}
PEROP_STEPS = 100   # steps a turn of the per-op loop pair takes (12,800 samples at batch 128)


@dataclass
class Side:
    """One side of a ratio: a call to time, whose threads run it, and what warms it (the call
    itself unless said: an epoch is warmed on a few steps, as bench_train warms it)."""

    label: str
    fn: Callable[[], object]
    pool: str
    warm: Callable[[], object] | None = None


def alternate(a: Side, b: Side, rounds: int, *, scale: float = 1.0, min_turn=MIN_TURN_S, settle=SETTLE_S,
              clock=time.perf_counter, sleep=time.sleep) -> dict:
    """Time a and b in alternating turns; value = scale * (a's time / b's time), per round.

    Returns the medians of both sides' times (seconds a call), the median of the per-round
    values (``value``), and every round's value.
    """
    calls = {side.label: _calls_per_turn(side, min_turn, settle, clock, sleep) for side in (a, b)}
    times = {a.label: [], b.label: []}
    last_pool = b.pool
    for r in range(rounds):
        for side in ((a, b) if r % 2 == 0 else (b, a)):
            if side.pool != last_pool:
                sleep(settle)
            (side.warm or side.fn)()  # untimed: caches and the thread pool warm
            n = calls[side.label]
            t0 = clock()
            for _ in range(n):
                side.fn()
            times[side.label].append((clock() - t0) / n)
            last_pool = side.pool
    values = [scale * ta / tb for ta, tb in zip(times[a.label], times[b.label])]
    return {"a": a.label, "b": b.label, "a_s": statistics.median(times[a.label]),
            "b_s": statistics.median(times[b.label]), "value": statistics.median(values),
            "values": values, "rounds": rounds, "calls": [calls[a.label], calls[b.label]]}


CALIBRATION_CALLS = 3   # timed calls, the fastest of which sizes a turn
LONG_CALL_S = 0.1       # a call this long makes a turn of one call however it was disturbed


def _calls_per_turn(side, min_turn, settle, clock, sleep):
    # How many calls make a turn of min_turn: after a pause (the other side's pool stops
    # spinning) and an untimed call, the fastest of CALIBRATION_CALLS timed ones. One call timed
    # right after the other side's, as before, could land while OpenBLAS's threads still spun:
    # a 20 us matmul read 8 ms, its turns became one call each, and every round then timed one
    # call just after its pool woke up (ratios of 0.003 to 1.8 within one pair).
    if settle > 0:
        sleep(settle)
    (side.warm or side.fn)()
    fastest = math.inf
    for _ in range(CALIBRATION_CALLS):
        t0 = clock()
        side.fn()
        fastest = min(fastest, clock() - t0)
        if fastest >= LONG_CALL_S:
            break
    return max(1, math.ceil(min_turn / max(fastest, 1e-9) - 1e-9))   # (6 ms / 3 ms is 2 calls, not 3)


# ---------------------------------------------------------------- the pairs


def pairs(sets, threads, quick=False):
    """Yield (key, set, what, a, b, scale) for every target's pair, inputs made here."""
    import kernels
    from bench.inputs import (autograd_cross_entropy, empty, linear_inputs, matmul_operands, native, normal,
                              relu_backward_inputs, softmax_inputs)

    f32 = np.float32
    numpy_ks = kernels.get("numpy", threads=threads)
    pool = ThreadPoolExecutor(threads)  # the copies' threads, idle between calls

    def copy(src, dst):  # as bench.peak copies: np.copyto, split over the threads
        return (lambda: np.copyto(dst, src)) if threads <= 1 else split_copy(src, dst, pool, threads)

    for s in sets:
        ks = kernels.get(s, threads=threads)

        n = 256 if quick else 2048
        case = C.matmul_case(n, n, n, id=str(n))
        operands = {name: matmul_operands(k, case, f32) for name, k in (("numpy", numpy_ks), (s, ks))}
        yield ("matmul-2048", s, f"matmul {n}³: numpy / {s}",
               Side("numpy", lambda o=operands["numpy"]: numpy_ks.matmul(o[0], o[1], out=o[2]), "numpy"),
               Side(s, lambda o=operands[s]: ks.matmul(o[0], o[1], out=o[2]), s), 1.0)

        # the MLP's own products (a step's forward, x^T g and g w^T at batch 32, 128, 512)
        for c in C.mlp_matmul_cases():
            if quick and c.params["batch"] != 32:
                continue
            p = c.params
            mm = {name: matmul_operands(k, c, f32) for name, k in (("numpy", numpy_ks), (s, ks))}

            def call(k, o, p=p):
                return lambda: k.matmul(o[0], o[1], trans_a=p["trans_a"], trans_b=p["trans_b"], out=o[2])

            yield ("shapes", s, f"matmul {c.label}: numpy / {s}", Side("numpy", call(numpy_ks, mm["numpy"]), "numpy"),
                   Side(s, call(ks, mm[s]), s), 1.0)

        # the op's bytes over the copy's: the copy reads one array and writes one
        size = "512x784" if quick else "4096x1000"
        for c in C.elementwise_cases("relu") + C.elementwise_cases("relu_backward"):
            if c.id != size:
                continue
            shape, scale = (c.params["rows"], c.params["cols"]), c.elems / (2 * c.params["rows"] * c.params["cols"])
            if c.op == "relu":
                x, out = native(ks, shape, f32), empty(ks, shape, f32)
                src, op = x, lambda x=x, out=out: ks.relu(x, out=out)
            else:
                grad_y, y, out = relu_backward_inputs(ks, shape, f32)
                src, op = grad_y, lambda g=grad_y, y=y, out=out: ks.relu_backward(g, y, out=out)
            yield (c.op, s, f"{c.op} {size}: {s}'s GB/s / a copy's", Side("copy", copy(src, out), "copy"),
                   Side(s, op, s), scale)

        for c in C.linear_cases():
            p = c.params
            if not p["relu"] or p["batch"] < 32 or (quick and p["batch"] > 32):
                continue
            x, w, b, out = linear_inputs(ks, c, f32)
            mm = matmul_operands(ks, C.matmul_case(p["batch"], p["n_in"], p["n_out"]), f32)
            yield ("epilogue", s, f"linear(relu) / matmul {c.label}: {s}",
                   Side(f"linear {c.id}", lambda x=x, w=w, b=b, out=out: ks.linear(x, w, b, relu=True, out=out), s),
                   Side(f"matmul {c.id}", lambda o=mm: ks.matmul(o[0], o[1], out=o[2]), s), 1.0)

        for c in C.linear_cases():
            p = c.params
            if p["activation"] != "tanh" or p["batch"] < 32 or (quick and p["batch"] > 32):
                continue
            x, w, b, out = linear_inputs(ks, c, f32)
            mm = matmul_operands(ks, C.matmul_case(p["batch"], p["n_in"], p["n_out"]), f32)
            yield ("epilogue-tanh", s, f"linear(tanh) / matmul {c.label}: {s}",
                   Side(f"linear {c.id}", lambda x=x, w=w, b=b, out=out: ks.linear(x, w, b, activation="tanh",
                                                                                 out=out), s),
                   Side(f"matmul {c.id}", lambda o=mm: ks.matmul(o[0], o[1], out=o[2]), s), 1.0)

        # tanh against np.tanh itself (no interface on that side), the same values
        shape = (512, 784) if quick else (4096, 1000)
        x_np = normal(shape, f32, seed=1, scale=2.0)
        out_np = np.empty_like(x_np)
        x, out = ks.asarray(x_np), empty(ks, shape, f32)
        yield ("tanh", s, f"tanh {shape[0]}x{shape[1]}: np.tanh / {s}",
               Side("np.tanh", lambda: np.tanh(x_np, out=out_np), "numpy"),
               Side(s, lambda x=x, out=out: ks.tanh(x, out=out), s), 1.0)

        import torch

        torch.set_num_threads(threads)
        for batch, classes in ((128, 10), (512, 100) if quick else (4096, 1000)):
            logits, target, grad = softmax_inputs(ks, batch, classes, f32)
            yield (f"softmax_cross_entropy-{batch}x{classes}", s,
                   f"softmax_cross_entropy {batch}x{classes}: F.cross_entropy+backward / {s}",
                   Side("torch-autograd", autograd_cross_entropy(torch, batch, classes, f32), "torch"),
                   Side(s, lambda lg=logits, t=target, g=grad: ks.softmax_cross_entropy(lg, t, out=g), s), 1.0)

    yield from _epoch_pairs(sets, threads, quick)
    yield from _perop_pairs(sets, threads, quick)


def _epoch_pairs(sets, threads, quick):
    import kernels
    from bench.train_common import BATCH1_STEPS, dataset, make_engine

    data = dataset()
    for batch in (128, 1):
        samples = 3 * batch if quick else (BATCH1_STEPS if batch == 1 else len(data.y_train))
        order = np.random.default_rng(2).permutation(len(data.y_train))[:samples]  # as bench_train
        epochs = {}
        for name in ("numpy",) + tuple(sets):
            engine = make_engine(name, kernels.get(name, threads=threads), batch=batch)

            def epoch(engine=engine, order=order):
                for _ in engine.epoch(order):
                    pass

            epochs[name] = (epoch, lambda epoch=epoch, head=order[:3 * batch]: epoch(order=head))
        for s in sets:
            yield (f"epoch-b{batch}", s, f"SGD epoch at batch {batch} ({samples:,} samples): numpy / {s}",
                   Side("numpy", epochs["numpy"][0], "numpy", epochs["numpy"][1]),
                   Side(s, epochs[s][0], s, epochs[s][1]), 1.0)


def _perop_pairs(sets, threads, quick):
    """The user's own training loop at batch 128, op by op through the interface
    (nn.model.MLP.train_step: linear, softmax_cross_entropy, linear_backward, sgd_step, and the
    batch's gather), on each set against the same loop on numpy."""
    import kernels
    from bench.train_common import SIZES, dataset, initial_params
    from nn.model import MLP, Batches, Optimizer

    data, batch = dataset(), 128
    samples = 3 * batch if quick else PEROP_STEPS * batch
    order = np.random.default_rng(2).permutation(len(data.y_train))[:samples]
    loops = {}
    for name in ("numpy",) + tuple(sets):
        ks = kernels.get(name, threads=threads)
        model = MLP(ks, SIZES, initial_params())
        opt = Optimizer(ks, model.params, "sgd", lr=0.05)
        batches = Batches(ks, data.x_train, data.y_train)
        buf = model.buffers(batch)
        native = batches.order(order)

        def loop(steps, model=model, opt=opt, batches=batches, buf=buf, native=native):
            for k in range(steps):
                batches.gather(native[k * batch:(k + 1) * batch], buf)
                model.train_step(buf, opt)

        loops[name] = (lambda loop=loop: loop(samples // batch), lambda loop=loop: loop(3))
    for s in sets:
        yield ("perop-b128", s, f"the user's per-op loop at batch 128 ({samples:,} samples): numpy / {s}",
               Side("numpy", loops["numpy"][0], "numpy", loops["numpy"][1]),
               Side(s, loops[s][0], s, loops[s][1]), 1.0)


def measure(sets=C.COMPILED_SETS, threads=None, quick=False, log=print, settle=SETTLE_S, keys=None) -> dict:
    """Every pair's alternating turns (or only those whose key, or its family before the "-",
    is in ``keys``)."""
    import kernels

    threads = threads or kernels.cpu_count()
    available = kernels.available()
    sets = [s for s in sets if available.get(s, "unknown set") is None]
    rows = []
    t_start = time.perf_counter()
    for key, s, what, a, b, scale in pairs(sets, threads, quick):
        family = key.split("-")[0]
        if keys and key not in keys and family not in keys:
            continue
        rounds = 3 if quick else ROUNDS[family]
        row = {"key": key, "set": s, "what": what, **alternate(a, b, rounds, scale=scale, settle=settle)}
        rows.append(row)
        log(f"{what:70s} {row['value']:8.3f}  ({a.label} {row['a_s'] * 1e6:10.1f} us, "
            f"{b.label} {row['b_s'] * 1e6:10.1f} us, {rounds} rounds)", flush=True)
    isa = {name: kernels.get(name).isa for name in ("numpy",) + tuple(sets)}
    return {"threads": threads, "quick": quick, "min_turn_s": MIN_TURN_S, "settle_s": settle, "isa": isa,
            "seconds": time.perf_counter() - t_start,
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rows": rows}


# Pairs measured at several shapes, quoted as one geometric mean.
GEOMEAN_KEYS = ("epilogue", "epilogue-tanh", "shapes")


def summary(paired) -> dict:
    """{(key, set): value} with the epilogue's and the MLP products' shapes each folded into
    their geometric mean."""
    out, folded = {}, {}
    for row in (paired or {}).get("rows", []):
        if row["key"] in GEOMEAN_KEYS:
            folded.setdefault((row["key"], row["set"]), []).append(row["value"])
        else:
            out[(row["key"], row["set"])] = row["value"]
    for key, vals in folded.items():
        out[key] = statistics.geometric_mean(vals)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "results" / "paired.json"))
    parser.add_argument("--sets", default=",".join(C.COMPILED_SETS))
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 rounds: a smoke test")
    parser.add_argument("--keys", default=None,
                        help="only these pairs, comma-separated keys or families (shapes, epilogue-tanh, epoch, ...); "
                             "write them somewhere other than the full run's paired.json")
    args = parser.parse_args(argv)
    import kernels

    names = [s for s in args.sets.split(",") if s]
    unknown = [s for s in names if s not in PAIRED_SETS]
    if unknown or not names:
        parser.error(f"--sets: unknown set(s) {', '.join(unknown) or '(none given)'}; expected a comma-separated "
                     f"list of {', '.join(PAIRED_SETS)} (each is set beside numpy and torch)")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be 1 or more, got {args.threads}")
    keys = [k for k in args.keys.split(",") if k] if args.keys is not None else None
    if keys is not None and (not keys or any(k.split("-")[0] not in ROUNDS for k in keys)):
        parser.error(f"--keys: unknown pair(s) {', '.join(k for k in keys if k.split('-')[0] not in ROUNDS) or '(none given)'}; "
                     f"expected keys or families of {', '.join(ROUNDS)}")
    for s, reason in kernels.available().items():
        if s in names and reason is not None:
            print(f"{s}: skipped ({reason})")
    settle = SETTLE_S / 10 if args.quick else SETTLE_S      # quick: a smoke test, not a figure
    result = measure(names, args.threads, args.quick, settle=settle, keys=keys)
    out = write_json(args.out, result)
    print(f"-> {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
