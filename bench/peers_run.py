"""Every set and peer trained side by side, each framework in a process of its own, in
alternating turns: ``python -m bench.peers_run``.

    python -m bench.peers_run [--threads 2] [--out results/peers.json] [--quick]
                              [--trainers numpy,numba,cython,jax,torch-compile,torch-eager,torch-reference]
                              [--sizes 784-128-64-10,784-64-10] [--batches 1,32,128] [--no-adam]

Why processes: on a machine with few cores a runtime's idle thread pool keeps spinning after
its last call (OpenBLAS's, OpenMP's under numba and torch, XLA's Eigen pool), and a framework
timed in the same process as another, or right after it, shares its cores with those spinning
threads: one such measurement put ``torch.optim.Adam`` at 7.7 ms where it takes 0.7 ms alone.
So each trainer (bench/peers.py) runs in a worker process that imports only its own runtime
(``python -m bench.peers_run --worker NAME``, JSON lines on stdin and stdout), and the driver
here gives the workers turns one at a time: A B C, C B A, A B C, ... with a pause of
``SETTLE_S`` before each turn, so the previous worker's pool has gone to sleep. Each turn first
trains a few steps untimed (the pool wakes, caches warm), then times whole chunks of the epoch
(``SAMPLES_PER_CALL`` samples, one ``train_steps`` call or one jax chunk each) for about
``TURN_S``, continuing through a fixed permutation of the training set; a trainer too slow
for a chunk in that time (batch 1 on the wide networks) times whole steps instead. A cell's
turns are sized from a probe of a few hundred samples, and one untimed turn compiles whatever
the probe did not. Every worker pins itself to ``threads`` cores and gives its runtime
``threads`` threads.

What is measured:

* the grid: every trainer at every (sizes, batch) of ``GRID_SIZES`` x ``BATCHES``: samples/s,
  the median over the rounds; and per round, the best compiled set's over the strongest
  peer's, whose median is the cell's ratio. The seeds' network, 784-128-64-10, gets
  ``HEADLINE_ROUNDS`` rounds, the other cells ``GRID_ROUNDS``;
* Adam over 784-128-64-10's parameters: each set's ``adam_step`` (once per array) against
  ``torch.optim.Adam`` by default, ``foreach=True`` and ``fused=True``, each variant in its
  own process, in alternating turns: microseconds a step.

Writes peers.json (after every cell, so an interrupted run keeps what it measured); bench.report
reads it (bench/peers_report.py). A full run takes about 30 minutes on a quiet 2-core machine
(35 cells, each set up by every worker: torch.compile compiles for about 12 s a cell), ``--quick``
about two. Beside other busy processes it takes longer and its figures mean little: a pooled
runtime whose threads wait for each other at every op collapses when a neighbour takes one of
its cores (each cell records the load average, and the report says when it was high).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import peers as P
from bench import write_json

ROOT = Path(__file__).resolve().parent.parent
SEEDS_SIZES = (784, 128, 64, 10)
# The variables that hold a run to one instruction-set path (bench/__main__.py sets them for a
# forced path), recorded with the run
FORCING_VARS = ("KERNELS_ISA", "OPENBLAS_CORETYPE", "XLA_FLAGS", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                "ONEDNN_MAX_CPU_ISA", "NUMBA_CPU_NAME")
# Two hidden layers from 64 to 1024 wide, and the seeds' one-hidden-layer 784-64-10.
GRID_SIZES = ((784, 64, 10), (784, 64, 64, 10), SEEDS_SIZES, (784, 256, 128, 10), (784, 512, 256, 10),
              (784, 1024, 512, 10), (784, 1024, 1024, 10))
BATCHES = (1, 8, 32, 128, 512)
SGD_LR = 0.05
TURN_S = 0.5          # a timed turn lasts about this long (whole chunks: at least one)
SETTLE_S = 0.2        # the pause before each turn: the last worker's pool goes to sleep
WARM_STEPS = 3        # untimed steps at the start of each turn
PROBE_SAMPLES = 256   # timed (twice) to size a cell's turns
GRID_ROUNDS, HEADLINE_ROUNDS, ADAM_ROUNDS = 3, 7, 15
ADAM_TURN_S = 0.2
QUICK = dict(sizes=(SEEDS_SIZES,), batches=(1, 128), grid_rounds=2, headline_rounds=3, adam_rounds=5,
             turn_s=0.1, adam_turn_s=0.05, settle_s=SETTLE_S, samples_per_call=1024)


def flops_per_sample(sizes) -> float:
    """Dense flops of one sample's share of a step: the forward matmuls, every layer's weight
    gradient, and the input gradient of every layer but the first (2 flops a multiply-add)."""
    mm = sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))
    dx = sum(i * o for i, o in zip(sizes[1:-1], sizes[2:]))
    return 2.0 * (2 * mm + dx)


def parse_sizes(text):
    """'784-128-64-10' -> (784, 128, 64, 10), with a message for anything else."""
    try:
        sizes = tuple(int(s) for s in text.split("-"))
    except ValueError:
        sizes = ()
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"network sizes must be layer widths joined by '-', like 784-128-64-10; got {text!r}")
    return sizes


# ---------------------------------------------------------------- the worker (one runtime)


class _Job:
    """What a worker is set up to time: a trainer over a fixed permutation, or an Adam step."""

    def __init__(self, msg, threads):
        from bench.train_common import dataset
        from nn.model import init_params

        self.kind = msg["cmd"]
        sizes = [int(s) for s in msg["sizes"]]
        if self.kind == "adam":
            self.fn, self.isa = P.make_adam(msg["variant"], sizes, threads)
            self.chunk = 1
            return
        data = dataset()
        if sizes[0] != data.x_train.shape[1] or sizes[-1] < int(data.y_train.max()) + 1:
            raise ValueError(f"sizes {sizes} do not fit the data ({data.x_train.shape[1]} inputs, "
                             f"{int(data.y_train.max()) + 1} classes)")
        self.batch = int(msg["batch"])
        self.trainer = P.make(msg["trainer"], sizes, init_params(sizes, "he", np.random.default_rng(0)),
                              data.x_train, data.y_train, batch=self.batch, optimizer=msg.get("optimizer", "sgd"),
                              lr=float(msg.get("lr", SGD_LR)), threads=threads,
                              samples_per_call=int(msg.get("samples_per_call", P.SAMPLES_PER_CALL)), data=data)
        self.isa = getattr(self.trainer, "isa", None)
        self.chunk = self.trainer.steps * self.batch
        n = len(data.y_train) - len(data.y_train) % self.batch
        self.order = np.random.default_rng(2).permutation(len(data.y_train))[:n]  # as bench_train's
        self.at = 0

    def _slice(self, samples):
        out = np.empty(samples, np.int64)
        done = 0
        while done < samples:
            take = min(samples - done, len(self.order) - self.at)
            out[done:done + take] = self.order[self.at:self.at + take]
            done += take
            self.at = (self.at + take) % len(self.order)
        return out

    def run(self, units):
        if self.kind == "adam":
            for _ in range(units):
                self.fn()
        else:
            self.trainer.train(self._slice(units))

    def warm(self):
        self.run(1 if self.kind == "adam" else WARM_STEPS * self.batch)

    def time(self, units, clock=time.perf_counter):
        self.warm()  # untimed: the pool wakes, caches warm
        t0 = clock()
        self.run(units)
        return clock() - t0


def pin(threads):
    """Keep this process on ``threads`` of the cores it may use (none of them if it may use fewer)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning, the runtimes' thread counts still apply
        return
    if threads and threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])


def _die_with_parent():
    """On Linux, have the kernel end this worker when the driver ends (killed, or interrupted in the
    middle of a long turn); elsewhere the worker ends when its stdin closes, after its command."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker(name, threads):
    """Answer the driver's JSON lines on stdin, one reply a line on stdout; nothing else is printed
    there (the runtimes' own messages go to stderr)."""
    _die_with_parent()
    pin(threads)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proto, sys.stdout = sys.stdout, sys.stderr
    job = None

    def reply(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    reply({"ready": name, "pid": os.getpid()})
    for line in sys.stdin:
        try:
            msg = json.loads(line)
            cmd = msg.get("cmd")
            if cmd == "quit":
                reply({"bye": True})
                return 0
            if cmd in ("train", "adam"):
                job = None
                t0 = time.perf_counter()
                job = _Job(msg, threads)
                job.warm()  # compile, allocate, page in
                reply({"isa": job.isa, "chunk": job.chunk, "setup_s": time.perf_counter() - t0,
                       "versions": _versions()})
            elif cmd == "time":
                if job is None:
                    raise RuntimeError("'time' before 'train' or 'adam'")
                units = int(msg["units"])
                reply({"seconds": job.time(units), "units": units})
            elif cmd == "params":
                reply({"params": [p.tolist() for p in job.trainer.params()]})
            else:
                raise ValueError(f"unknown command {cmd!r}; expected train, adam, time, params or quit")
        except Exception as e:  # noqa: BLE001 - every failure goes back to the driver as a message
            reply({"error": f"{type(e).__name__}: {e}"})
    return 0


def _versions():
    out = {}
    for mod in ("numpy", "numba", "torch", "jax", "jaxlib"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", None)
    return out


# ---------------------------------------------------------------- the driver


class PeerError(RuntimeError):
    pass


class Worker:
    """A worker process: ``ask(cmd=..., ...)`` sends one command and returns its reply."""

    def __init__(self, name, threads):
        self.name = name
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.peers_run", "--worker", name,
                                      "--threads", str(threads)], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self._read()  # its "ready"

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            tail = self.log.read()[-2000:]
            raise PeerError(f"worker {self.name!r} exited (status {self.proc.poll()}); its stderr ends:\n{tail}")
        reply = json.loads(line)
        if "error" in reply:
            raise PeerError(f"worker {self.name!r}: {reply['error']}")
        return reply

    def ask(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def time(self, units):
        return self.ask(cmd="time", units=int(units))["seconds"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.ask(cmd="quit")
                self.proc.wait(timeout=10)
            except (PeerError, OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def turn_units(step, chunk, units_per_s, turn_s):
    """How many units make a turn of about turn_s at units_per_s: whole chunks where a chunk
    takes less than the turn, else whole steps (``step`` units each, one at least). A slow
    trainer at batch 1 (a big network, torch eager) would take seconds over one 4096-step chunk."""
    want = units_per_s * turn_s
    if want >= chunk:
        return chunk * round(want / chunk)
    return step * max(1, round(want / step))


def probe_units(step, chunk):
    """The units timed to size a turn: a few hundred samples (whole steps), a chunk at most."""
    return min(chunk, step * max(1, PROBE_SAMPLES // step))


def alternate(workers: dict, units: dict, rounds: int, settle=SETTLE_S, sleep=time.sleep) -> dict:
    """Turns in the order A B C, C B A, A B C, ...: {name: [units per second, one per round]}.

    ``workers[name].time(n)`` times n units in that worker; each turn is preceded by ``settle``
    seconds of nothing, so that no pool is still spinning when a turn starts.
    """
    names = list(workers)
    rates = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            sleep(settle)
            rates[name].append(units[name] / workers[name].time(units[name]))
    return rates


def judge(rates: dict) -> dict:
    """Medians, and per round the best compiled set over the strongest peer (by samples/s)."""
    med = {name: statistics.median(r) for name, r in rates.items()}
    sets = [n for n in rates if n in P.SETS and n != "numpy"] or [n for n in rates if n in P.SETS]
    peers = [n for n in rates if n in P.PEERS]
    out = {"median": med}
    if sets and peers:
        rounds = len(next(iter(rates.values())))
        values = [max(rates[s][r] for s in sets) / max(rates[p][r] for p in peers) for r in range(rounds)]
        out.update(best_set=max(sets, key=med.get), best_peer=max(peers, key=med.get),
                   value=statistics.median(values), values=values)
    return out


def measure_cell(workers, sizes, batch, rounds, *, turn_s, settle, samples_per_call, sleep=time.sleep, log=print):
    """One (sizes, batch): set every worker up (compile, warm), size its turn, alternate."""
    info, units = {}, {}
    load_before = _load()
    for name, w in workers.items():
        try:
            r = w.ask(cmd="train", trainer=name, sizes=list(sizes), batch=batch, optimizer="sgd", lr=SGD_LR,
                      samples_per_call=samples_per_call)
            probe = probe_units(batch, r["chunk"])
            probe_s = min(w.time(probe), w.time(probe))  # the first may compile (jax: a scan of this length)
            units[name] = turn_units(batch, r["chunk"], probe / probe_s, turn_s)
            w.time(units[name])  # untimed: compiles what a turn runs that the probe did not (jax: its scan lengths)
        except PeerError as e:  # this trainer sits the cell out; the grid goes on
            units.pop(name, None)
            info[name] = {"error": str(e)}
            log(f"{name} at {'-'.join(map(str, sizes))} batch {batch}: {e}", flush=True)
            continue
        info[name] = {"isa": r["isa"], "setup_s": r["setup_s"], "units": units[name]}
    rates = alternate({n: workers[n] for n in units}, units, rounds, settle, sleep)
    cell = {"sizes": list(sizes), "batch": batch, "flops_per_sample": flops_per_sample(sizes), "rounds": rounds,
            "rates": rates, "trainers": info, "load": [load_before, _load()], **judge(rates)}
    line = "  ".join(f"{n} {cell['median'][n]:>9,.0f}" for n in units)
    ratio = f"  best set / strongest peer {cell['value']:.2f}" if "value" in cell else ""
    log(f"{'-'.join(map(str, sizes)):>18} b{batch:<4} samples/s: {line}{ratio}", flush=True)
    return cell


def _load():
    """The 1-minute load average (None where the OS has none): above the core count, other
    processes were running beside the measurement, and a pooled runtime whose threads wait for
    each other at every op loses most when one of its cores is taken."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def measure_adam(variants, threads, rounds, *, turn_s, settle, sizes=SEEDS_SIZES, log=print):
    """Each Adam variant in its own worker, in alternating turns: microseconds a step."""
    workers, units, info = {}, {}, {}
    try:
        for v in variants:
            workers[v] = w = Worker(f"adam:{v}", threads)
            r = w.ask(cmd="adam", variant=v, sizes=list(sizes))
            units[v] = turn_units(1, 1, 1 / min(w.time(1), w.time(1)), turn_s)
            info[v] = {"isa": r["isa"], "versions": r["versions"], "what": P.ADAM_WHAT[v]}
        load_before = _load()
        rates = alternate(workers, units, rounds, settle)
    finally:
        for w in workers.values():
            w.close()
    rows = {v: {**info[v], "us": 1e6 / statistics.median(r), "us_rounds": [1e6 / x for x in r]}
            for v, r in rates.items()}
    for v, row in rows.items():
        log(f"adam {v:>14}: {row['us']:8.1f} us a step over {'-'.join(map(str, sizes))}'s parameters", flush=True)
    return {"sizes": list(sizes), "rounds": rounds, "rows": rows, "load": [load_before, _load()]}


def run(trainers, sizes_list, batches, threads, *, quick=False, adam=True, out=None, log=print,
        rounds=None) -> dict:
    from bench.machine import describe
    from kernels import _isa

    q = QUICK if quick else {}
    turn_s, settle = q.get("turn_s", TURN_S), q.get("settle_s", SETTLE_S)
    spc = q.get("samples_per_call", P.SAMPLES_PER_CALL)
    skipped = {t: P.unavailable(t) for t in trainers if P.unavailable(t)}
    for t, why in skipped.items():
        log(f"{t}: skipped ({why})", flush=True)
    result = {"threads": threads, "quick": quick, "turn_s": turn_s, "settle_s": settle, "samples_per_call": spc,
              "warm_steps": WARM_STEPS, "lr": SGD_LR, "optimizer": "sgd", "machine": describe(),
              "isa_paths": _isa.supported(), "isa_forced": _isa.requested(),
              "forced_env": {k: os.environ[k] for k in FORCING_VARS if os.environ.get(k)},
              "what": {t: P.WHAT[t] for t in trainers}, "skipped": skipped, "cells": [], "adam": None,
              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    t_start = time.perf_counter()
    workers = {}
    try:
        for t in trainers:
            if t not in skipped:
                workers[t] = Worker(t, threads)
        for sizes in sizes_list:
            for batch in batches:
                n = rounds or (q.get("headline_rounds", HEADLINE_ROUNDS) if tuple(sizes) == SEEDS_SIZES
                               else q.get("grid_rounds", GRID_ROUNDS))
                result["cells"].append(measure_cell(workers, sizes, batch, n, turn_s=turn_s, settle=settle,
                                                    samples_per_call=spc, log=log))
                result["seconds"] = time.perf_counter() - t_start
                if out:
                    write_json(out, result)
    finally:
        for w in workers.values():
            w.close()
    if adam:
        variants = [v for v in P.ADAM_VARIANTS if P.adam_unavailable(v) is None]
        result["adam"] = measure_adam(variants, threads, q.get("adam_rounds", ADAM_ROUNDS),
                                      turn_s=q.get("adam_turn_s", ADAM_TURN_S), settle=settle, log=log)
    result["seconds"] = time.perf_counter() - t_start
    if out:
        write_json(out, result)
    return result


def _terminated(signum, frame):
    raise SystemExit(f"bench.peers_run: ended by signal {signum}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help="threads (and cores) for every framework")
    parser.add_argument("--out", default=str(ROOT / "results" / "peers.json"))
    parser.add_argument("--quick", action="store_true", help="784-128-64-10 at batch 1 and 128, short turns")
    parser.add_argument("--trainers", default=",".join(P.TRAINERS))
    parser.add_argument("--sizes", default=None, help="comma-separated networks, e.g. 784-128-64-10,784-64-10")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=None, help="rounds for every cell (default: by cell)")
    parser.add_argument("--no-adam", action="store_true", help="leave out the Adam comparison")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be 1 or more, got {args.threads}")
    if args.worker:
        return worker(args.worker, args.threads)
    import signal

    signal.signal(signal.SIGTERM, _terminated)  # so that the workers are closed on the way out
    trainers = [t for t in args.trainers.split(",") if t]
    unknown = [t for t in trainers if t not in P.TRAINERS]
    if unknown or not trainers:
        parser.error(f"--trainers: unknown {', '.join(unknown) or '(none given)'}; expected a comma-separated "
                     f"list of {', '.join(P.TRAINERS)}")
    try:
        sizes = ([parse_sizes(s) for s in args.sizes.split(",") if s] if args.sizes
                 else list(QUICK["sizes"] if args.quick else GRID_SIZES))
        batches = ([int(b) for b in args.batches.split(",") if b] if args.batches
                   else list(QUICK["batches"] if args.quick else BATCHES))
    except ValueError as e:
        parser.error(f"--sizes / --batches: {e}")
    if not batches or min(batches) < 1:
        parser.error(f"--batches must be positive integers, got {args.batches!r}")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be 1 or more, got {args.rounds}")
    import kernels

    threads = args.threads or kernels.cpu_count()
    try:
        result = run(trainers, sizes, batches, threads, quick=args.quick, adam=not args.no_adam,
                     out=args.out, rounds=args.rounds)
    except PeerError as e:
        print(f"bench.peers_run: {e}", file=sys.stderr)
        return 1
    print(f"-> {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
