"""Command line of the kernels package: ``python -m kernels warmup``.

    python -m kernels warmup                          # the numba set, as nn.train runs it:
                                                      #   float32, 3 weight layers (784-128-64-10)
    python -m kernels warmup --sets numba,numba-naive --dtype float32,float64 --all-ops
    python -m kernels warmup --layers 2,3,4           # train_steps for 1, 2 and 3 hidden layers

Compiles the kernels a run will need into Numba's on-disk cache, once (see kernels.warmup): a
classroom or a CI job pays the first run's compile ahead of time, and every later run, in any
process using the same cache (the same checkout and Numba, and NUMBA_CACHE_DIR if set), loads
them in well under a second. Exit status 0 when every set warmed up, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import kernels
from kernels.warmup import ALL_OPS, OPTIMIZERS, TRAINER_OPS, cache_location, compiles_at_run_time, warm_up


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (no usage block), exit status 2."""

    def error(self, message):
        command = " ".join(self.prog.split()[1:2])
        self.exit(2, f"error: {message} (see python -m kernels {command + ' ' if command else ''}--help)\n")


def _names(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no set")
    if names == ["all"]:
        return names
    unknown = [n for n in names if n not in kernels.names()]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown kernel set(s) {', '.join(map(repr, unknown))}; use some of {', '.join(kernels.names())}, or all")
    return names


def _dtypes(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in ("float32", "float64")]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"{text!r}: use float32, float64 or float32,float64")
    return [np.dtype(n) for n in names]


def _layers(text):
    try:
        layers = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers such as 3") from None
    if any(n < 1 for n in layers):
        raise argparse.ArgumentTypeError(f"{text!r}: a network has at least 1 weight layer")
    return layers


def _threads(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: must be at least 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kernels", description="Tools of the kernels package.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True
    w = sub.add_parser("warmup", help="compile the kernels a run needs into Numba's cache, ahead of time",
                       description=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--sets", type=_names, default=["numba"],
                   help="comma-separated kernel sets, or all (default numba; sets without Numba compile nothing)")
    w.add_argument("--dtype", type=_dtypes, default=[np.dtype(np.float32)],
                   help="float32 (nn.train's, the default), float64, or float32,float64")
    w.add_argument("--layers", type=_layers, default=[3],
                   help="weight layers of the trained MLP, comma-separated (default 3: nn.train's 784-128-64-10; "
                        "--hidden with k sizes is k+1)")
    w.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="the run's optimizer (default adam; the fused sets compile one loop for all three)")
    w.add_argument("--all-ops", action="store_true",
                   help=f"every op of the interface, not only the trainer's ({', '.join(TRAINER_OPS)}): "
                        "what the benchmarks and the tests call")
    w.add_argument("--threads", type=_threads, default=None, help="cores to use (default: all)")
    return parser


def warmup(args) -> int:
    available = kernels.available()
    names = [n for n, reason in available.items() if reason is None] if args.sets == ["all"] else args.sets
    missing = {n: available[n] for n in names if available[n] is not None}
    if missing:
        print(f"error: {'; '.join(missing.values())}", file=sys.stderr)
        return 2
    ops = ALL_OPS if args.all_ops else TRAINER_OPS
    total, jit = 0.0, False
    for name in names:
        ks = kernels.get(name, threads=args.threads)
        if not compiles_at_run_time(name):
            print(f"{name}: nothing to compile at run time", flush=True)
            continue
        jit = True
        for dtype in args.dtype:
            for i, layers in enumerate(args.layers):
                # the ops other than train_steps do not depend on the layer count: once a dtype
                todo = ops if i == 0 else ("train_steps",)
                r = warm_up(ks, dtype=dtype, layers=layers, optimizer=args.optimizer, ops=todo, progress=sys.stderr)
                total += r.seconds
                what = f"{name} {dtype.name}" + (f", {layers} layers" if "train_steps" in todo else "")
                done = f"compiled {len(r.compiled)} functions" if r.compiled else "already compiled, loaded from the cache"
                print(f"{what}: {done} ({r.seconds:.1f} s)", flush=True)
    if jit:
        print(f"Numba's cache: {cache_location()} ({total:.1f} s in all)")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return warmup(args)
    except KeyboardInterrupt:
        print("error: interrupted (what was compiled so far is cached)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
