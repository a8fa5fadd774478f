"""Training time to 88% Fashion-MNIST test accuracy, per set and for the PyTorch reference.

    python -m bench.time_to_accuracy [--sets numba,cython,...] [--target 0.88] [--threads N]
                                     [--batch 128] [--optimizer adam] [--lr 1e-3] [--max-epochs 15]

Each set trains the MLP from the same initial weights (seed 0) with the same batch order, as
the trainer does (``engine.epoch``); after every epoch the test accuracy is computed, outside
the clock. The time reported is the wall time of the training epochs until the first epoch
after which test accuracy reaches the target (accuracy is checked once per epoch, so the time
is that of whole epochs). Needs the real data set (``apt-get install dataset-fashion-mnist``);
on random data nothing can reach the target and the run says so.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench import write_json
from bench.train_common import REFERENCE, dataset, make_engine

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETS = ("numpy", "numba", "cython", "torch", REFERENCE)


def run(set_name, *, threads, batch, optimizer, lr, target, max_epochs, max_seconds):
    import kernels

    data = dataset()
    ks = None
    if not set_name.startswith(REFERENCE):
        reason = kernels.available().get(set_name)
        if reason:
            return {"skipped": reason}
        ks = kernels.get(set_name, threads=threads)
    engine = make_engine(set_name, ks, batch=batch, optimizer=optimizer, lr=lr, threads=threads, eval_test=True)
    rng = np.random.default_rng(0)
    # warm: compile and allocate on a few batches of a throwaway engine, so the clock sees training
    warm = make_engine(set_name, ks, batch=batch, optimizer=optimizer, lr=lr, threads=threads, eval_test=True)
    for _ in warm.epoch(rng.permutation(len(data.y_train))[:4 * batch]):
        pass
    warm.evaluate("test")
    seconds, history = 0.0, []
    for epoch in range(1, max_epochs + 1):
        order = rng.permutation(len(data.y_train))
        t0 = time.perf_counter()
        for _ in engine.epoch(order):
            pass
        seconds += time.perf_counter() - t0
        _, preds = engine.evaluate("test")
        acc = float((preds == data.y_test).mean())
        history.append({"epoch": epoch, "seconds": seconds, "test_accuracy": acc})
        print(f"  {set_name:16s} epoch {epoch:2d}  {seconds:7.2f} s  test accuracy {100 * acc:.2f}%", flush=True)
        if acc >= target or seconds > max_seconds:
            break
    reached = history[-1]["test_accuracy"] >= target
    return {"reached": reached, "seconds": seconds if reached else None, "train_seconds": seconds,
            "epochs": len(history), "accuracy": history[-1]["test_accuracy"], "history": history,
            "batch": batch, "optimizer": optimizer, "lr": lr}


def main(argv=None):
    import kernels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS))
    parser.add_argument("--target", type=float, default=0.88)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--optimizer", default="adam", choices=("sgd", "momentum", "adam"))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="give up on a set after this much training")
    parser.add_argument("--out", default=str(ROOT / "results" / "time_to_accuracy.json"))
    args = parser.parse_args(argv)
    threads = args.threads or kernels.cpu_count()
    data = dataset()
    result = {"target": args.target, "dataset": data.name, "threads": threads, "batch": args.batch,
              "optimizer": args.optimizer, "lr": args.lr, "runs": {},
              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if data.name != "fashion-mnist":
        result["note"] = "Fashion-MNIST is not installed: trained on random data, the target cannot be reached"
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        time.sleep(0.5)  # let the previous set's idle threads stop spinning (see bench/conftest.py)
        result["runs"][name] = run(name, threads=threads, batch=args.batch, optimizer=args.optimizer, lr=args.lr,
                                   target=args.target, max_epochs=args.max_epochs, max_seconds=args.max_seconds)
    out = write_json(args.out, result, indent=2)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
