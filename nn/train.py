"""Train the MLP on one kernel set (or the PyTorch reference) and record how it went.

    python -m nn.train --kernels numpy                  # 784-128-64-10 on Fashion-MNIST, Adam
    python -m nn.train --kernels torch --device cuda
    python -m nn.train --kernels torch-autograd         # the nn.Module / autograd reference
    python -m nn.train --kernels cython --activation tanh --dropout 0.1

Programmatic use (the benchmarks and nn.compare): ``train(Config(kernels="numba", epochs=3))``
returns the metrics dict that is also written to metrics.json.

Fairness: the initial weights, the validation split and every epoch's batch order come from
one numpy.random.Generator(seed), drawn in that order, in NumPy, before any set sees them; only
the kernel set differs between two runs with the same options. The generator's state is saved
in checkpoints, so a resumed run draws the same orders as an uninterrupted one. Dropout's masks
are a hash of (--seed, step, layer, row, unit) (kernels/_layers.py): the same in every set and
in the torch-autograd reference, and a resumed run, whose step count the checkpoint keeps,
draws the masks an uninterrupted one would.

Timing: an epoch's seconds cover its training steps (gather, forward, backward, update, and
reading each step's loss), not the evaluation passes after it; samples/s is samples / seconds.
What a run pays once comes before its first timed step and is reported apart, as
``compile_seconds``: the engine's warm-up (``engine.warm_up``), which compiles the kernels the
run calls (Numba's, on a first run: tens of seconds, said on the console while it happens) or
loads them from Numba's cache (later runs: under a second), and torch's one-off set-up.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from . import checkpoint as ckpt
from .data import load_dataset
from .errors import TrainingDiverged, UsageError
from .model import init_params

REFERENCE = "torch-autograd"
OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"adam": 1e-3, "momentum": 0.01, "sgd": 0.05}
RESULTS = Path("results")

# Options that define the training itself: a resumed run takes them from its checkpoint.
TRAINING_FIELDS = ("dataset", "hidden", "batch_size", "optimizer", "lr", "weight_decay", "init",
                   "seed", "val_split", "limit", "activation", "dropout")
ACTIVATIONS = ("relu", "tanh")


@dataclass
class Config:
    kernels: str = "numpy"
    device: str = "cpu"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 15
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float | None = None                 # None: DEFAULT_LR[optimizer]
    weight_decay: float = 0.0
    init: str = "he"
    activation: str = "relu"                # of the hidden layers
    dropout: float = 0.0                    # inverted dropout's rate on the hidden layers
    seed: int = 0
    threads: int | None = None              # None: every core this process may use
    val_split: float = 0.0
    limit: int | None = None                # train on the first N training samples only
    out: str | None = None                  # None: results/runs/<time>-<kernels>
    checkpoint: bool = False                # write out/checkpoint.npz after every epoch
    resume: str | None = None
    quiet: bool = False
    eval_train: bool = True                 # accuracy on the training set after each epoch
    download: bool = True
    # For tests: act as if Ctrl-C came after this many steps of this run.
    interrupt_after_steps: int | None = field(default=None, repr=False)

    def check(self) -> "Config":
        """Raise UsageError for any option out of range; fill lr's default."""
        def bad(option, value, why):
            raise UsageError(f"{option} {value}: {why}")

        if self.optimizer not in OPTIMIZERS:
            bad("--optimizer", self.optimizer, f"use one of {', '.join(OPTIMIZERS)}")
        if self.init not in ("he", "xavier"):
            bad("--init", self.init, "use he or xavier")
        if self.activation not in ACTIVATIONS:
            bad("--activation", self.activation, f"use one of {', '.join(ACTIVATIONS)}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):  # NaN fails too
            bad("--dropout", self.dropout, "the dropout rate must be a fraction in [0, 1) (0: no dropout)")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if not (math.isfinite(self.lr) and self.lr > 0):
            bad("--lr", self.lr, "the learning rate must be a positive number")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            bad("--weight-decay", self.weight_decay, "must be a number >= 0")
        if self.batch_size < 1:
            bad("--batch-size", self.batch_size, "must be at least 1 (1 is online SGD)")
        if self.epochs < 1:
            bad("--epochs", self.epochs, "must be at least 1")
        if not self.hidden or any(h < 1 for h in self.hidden):
            bad("--hidden", ",".join(map(str, self.hidden)), "every layer needs at least 1 unit")
        if not 0 <= self.val_split < 1:
            bad("--val-split", self.val_split, "must be a fraction in [0, 1)")
        if self.threads is not None and self.threads < 1:
            bad("--threads", self.threads, "must be at least 1")
        if self.limit is not None and self.limit < 1:
            bad("--limit", self.limit, "must be at least 1")
        if self.seed < 0:
            bad("--seed", self.seed, "must be >= 0")
        self.hidden = tuple(self.hidden)
        return self


# ---------------------------------------------------------------------------- building a run


def split_data(data, cfg: Config, rng: np.random.Generator):
    """(train_idx, val_idx) into data.x_train: the first --limit rows, less a random
    --val-split of them held out. Drawn from rng after the weights, before any batch order."""
    n = len(data.y_train) if cfg.limit is None else min(cfg.limit, len(data.y_train))
    idx = np.arange(n, dtype=np.int64)
    n_val = int(round(n * cfg.val_split))
    if n_val == 0:
        return idx, idx[:0]
    if n_val >= n:
        raise UsageError(f"--val-split {cfg.val_split} leaves no training samples out of {n}")
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def kernel_set(cfg: Config):
    """The kernel set cfg names on cfg.device (None for the torch-autograd reference, whose
    device is checked here too); UsageError when it does not exist or cannot run here."""
    import kernels

    if cfg.kernels == REFERENCE:
        if cfg.device != "cpu":
            import torch

            reason = _cuda_problem(torch, cfg.device)
            if reason:
                raise UsageError(reason)
        return None
    if cfg.kernels not in kernels.names():
        raise UsageError(f"unknown kernel set {cfg.kernels!r}; use one of {', '.join(kernels.names())}, {REFERENCE}")
    try:
        return kernels.get(cfg.kernels, device=cfg.device, threads=cfg.threads)
    except (ValueError, TypeError, kernels.UnavailableError) as exc:
        raise UsageError(str(exc)) from None


def make_engine(cfg: Config, ks, data, sizes, params, train_idx, val_idx):
    """The engine that trains with cfg.kernels: a KernelEngine on ``ks``, or (ks None) the
    torch-autograd reference."""
    opts = dict(optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                batch_size=min(cfg.batch_size, len(train_idx)), activation=cfg.activation,
                dropout=cfg.dropout, seed=cfg.seed)
    if ks is None:
        from .torch_reference import TorchEngine

        return TorchEngine(data, sizes, params, train_idx=train_idx, val_idx=val_idx,
                           device=cfg.device, threads=cfg.threads, **opts)
    from .engine import KernelEngine

    eval_sets = {"train": _rows(data.x_train, data.y_train, train_idx), "test": (data.x_test, data.y_test)}
    if len(val_idx):
        eval_sets["val"] = _rows(data.x_train, data.y_train, val_idx)
    return KernelEngine(ks, sizes, params, train=eval_sets["train"], eval_sets=eval_sets, **opts)


def _rows(x, y, idx):
    """(x[idx], y[idx]), as views when idx (sorted, from split_data) is 0, 1, ..., n-1: without
    a validation split, copying the 188 MB of Fashion-MNIST's training images cost up to a
    second (its page faults) before the first step, for nothing."""
    n = len(idx)
    if n and idx[0] == 0 and idx[-1] == n - 1:
        return x[:n], y[:n]
    return x[idx], y[idx]


def _cuda_problem(torch, device):
    try:
        dev = torch.device(device)
    except RuntimeError:
        return f"--device {device!r} is not a device torch knows; use cpu or cuda"
    if dev.type == "cpu":
        return None
    if dev.type != "cuda":
        return f"--device {device!r}: use cpu or cuda"
    if not torch.cuda.is_available():
        return f"--device {device}: no CUDA GPU is visible to PyTorch here; use --device cpu"
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)"
    return None


def environment(cfg: Config) -> dict:
    """Versions, CPU and threads: what a reader needs to reproduce a run's speed."""
    versions = {"python": platform.python_version()}
    for pkg in ("numpy", "torch", "torchvision", "numba", "Cython", "threadpoolctl"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import kernels

        cores = kernels.cpu_count()
    except ImportError:
        cores = os.cpu_count()
    env = {"versions": versions, "platform": platform.platform(), "cpu": cpu, "cores": cores,
           "threads": cfg.threads or cores}
    if cfg.device.startswith("cuda"):
        import torch

        env["gpu"] = torch.cuda.get_device_name(torch.device(cfg.device))
    return env


# ---------------------------------------------------------------------------- the loop


class _InterruptFlag:
    """Ctrl-C sets a flag that the loop reads between the engine's runs of steps (a run is
    tens of milliseconds), so the checkpoint it then writes is of whole steps, never of
    parameters half updated. A second Ctrl-C exits at once."""

    def __init__(self):
        self.set = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:          # not the main thread: leave Ctrl-C alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _say(cfg, msg, bar=None):
    if cfg.quiet:
        return
    if bar is not None:
        bar.write(msg)
    else:
        print(msg, flush=True)


def setup(cfg: Config) -> SimpleNamespace:
    """Everything a run needs before its first step, for train() and for benchmarks:

        run = setup(Config(kernels="numba", threads=2, batch_size=64))
        order = run.rng.permutation(len(run.train_idx))     # epoch 1's order, as train() draws it
        run.engine.epoch(order)                             # iterator: arrays of per-step losses
        run.engine.step(run.engine.batches.order(order[:64]))   # one step (KernelEngine)

    Fields: cfg (checked), ks (None for torch-autograd), data, sizes, params0 (NumPy initial
    weights), rng (after the weights and the split were drawn), train_idx, val_idx, batch
    (the batch size in use), engine.
    """
    cfg.check()
    ks = kernel_set(cfg)            # before the data: a wrong set or device fails at once
    data = load_dataset(cfg.dataset, cfg.data_dir, allow_download=cfg.download,
                        log=(lambda m: None) if cfg.quiet else print)
    sizes = [data.features, *cfg.hidden, len(data.classes)]
    rng = np.random.default_rng(cfg.seed)
    params0 = init_params(sizes, cfg.init, rng)            # first draws: the weights
    train_idx, val_idx = split_data(data, cfg, rng)        # then the validation split
    engine = make_engine(cfg, ks, data, sizes, params0, train_idx, val_idx)
    return SimpleNamespace(cfg=cfg, ks=ks, data=data, sizes=sizes, params0=params0, rng=rng,
                           train_idx=train_idx, val_idx=val_idx, batch=min(cfg.batch_size, len(train_idx)),
                           engine=engine)


def train(cfg: Config) -> dict:
    """Run one training; returns the metrics (also written to <out>/metrics.json).

    metrics["status"] is "finished" or "interrupted" (Ctrl-C; a checkpoint was written).
    Raises UsageError for bad input and TrainingDiverged when the loss stops being finite.
    """
    from tqdm import tqdm

    resumed = None
    if cfg.resume:
        resumed = ckpt.load(cfg.resume)
        saved = resumed["meta"]["config"]
        for name in TRAINING_FIELDS:
            value = saved.get(name, getattr(Config, name))   # (checkpoints from before a field)
            setattr(cfg, name, tuple(value) if name == "hidden" else value)
        if cfg.out is None:
            cfg.out = str(Path(cfg.resume).parent)
        if cfg.data_dir is None:
            cfg.data_dir = saved.get("data_dir")
        done = resumed["meta"]["epoch"]
        if done >= cfg.epochs:
            raise UsageError(f"checkpoint {cfg.resume} is already at epoch {done}; "
                             f"ask for more with --epochs (at least {done + 1})")
    run = setup(cfg)
    engine, data, rng, sizes, params0 = run.engine, run.data, run.rng, run.sizes, run.params0
    train_idx, val_idx, batch = run.train_idx, run.val_idx, run.batch

    out = Path(cfg.out) if cfg.out else _new_run_dir(cfg.kernels)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.npz"

    # where to start: epoch, batch within it, that epoch's order and its running sums
    epoch, start_batch, order = 0, 0, None
    history: list[dict] = []
    running = {"loss_sum": 0.0, "steps": 0, "seconds": 0.0}
    if resumed:
        meta = resumed["meta"]
        engine.load(resumed["params"], resumed["optim"])
        rng.bit_generator.state = meta["rng_state"]
        epoch, start_batch = meta["epoch"], meta["batch"]
        order = resumed["order"]
        history = meta["history"]
        running = meta["running"]
        _say(cfg, f"resuming from {cfg.resume}: epoch {epoch + 1}, batch {start_batch}")

    metrics = {
        "status": "running",
        "test_accuracy": None,
        "config": {k: v for k, v in asdict(cfg).items() if k != "interrupt_after_steps"},
        "environment": environment(cfg),
        "network": {"sizes": sizes, "parameters": int(sum(p.size for p in params0))},
        "data": {"dataset": data.name, "files": data.files, "train": len(train_idx),
                 "val": len(val_idx), "test": len(data.y_test)},
        "compile_seconds": None,        # the warm-up before the first step: in no epoch's seconds
        "compiled_functions": None,     # of it, the functions Numba compiled (0: all from its cache)
        "epochs": history,
    }
    metrics["config"]["batch_size_used"] = batch
    metrics["config"]["lr"] = cfg.lr

    def save_checkpoint(epoch_, batch_, order_, running_):
        params, optim = engine.state()
        meta = {"config": metrics["config"], "epoch": epoch_, "batch": batch_, "running": running_,
                "history": history, "rng_state": rng.bit_generator.state, "kernels": cfg.kernels}
        return ckpt.save(ckpt_path, params, optim, meta, order=order_)

    steps_this_run = 0
    n = len(train_idx)
    n_batches = math.ceil(n / batch)
    _say(cfg, f"training {'-'.join(map(str, sizes))} ({cfg.activation}"
              + (f", dropout {cfg.dropout:g}" if cfg.dropout else "")
              + f") on {data.name} ({n} samples) with {cfg.kernels} [{cfg.device}], {cfg.optimizer} "
              f"lr={cfg.lr:g}, batch {batch}, {cfg.epochs} epochs -> {out}")
    # compiling (or loading from Numba's cache) happens here, before the first timed step
    warm = engine.warm_up(progress=None if cfg.quiet else sys.stderr)
    metrics["compile_seconds"] = warm.seconds
    metrics["compiled_functions"] = len(warm.compiled)
    # a diverging run overflows before its loss turns NaN; the loss check below reports it once
    with _InterruptFlag() as interrupt, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        while epoch < cfg.epochs:
            if order is None:
                order = rng.permutation(n)
            bar = tqdm(total=n_batches, initial=start_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="batch", disable=cfg.quiet, leave=False, dynamic_ncols=True)
            b = start_batch
            t0 = time.perf_counter()
            limit = None if cfg.interrupt_after_steps is None else cfg.interrupt_after_steps - steps_this_run
            for losses in engine.epoch(order, start_batch, max_steps=limit):
                bad = np.flatnonzero(~np.isfinite(losses))
                if bad.size:
                    bar.close()
                    kept = (f"the last good checkpoint, {ckpt_path}, is kept" if ckpt_path.exists()
                            else "no checkpoint was written (use --checkpoint to keep one per epoch)")
                    metrics["status"] = "diverged"
                    _write_metrics(out, metrics)
                    raise TrainingDiverged(
                        f"the loss became {losses[bad[0]]} at epoch {epoch + 1}, batch {b + bad[0] + 1}; training "
                        f"stopped (try a smaller --lr than {cfg.lr:g}); {kept}"
                    )
                running["loss_sum"] += float(losses.sum())
                running["steps"] += len(losses)
                b += len(losses)
                steps_this_run += len(losses)
                bar.update(len(losses))
                done = min(b * batch, n) - min(start_batch * batch, n)
                bar.set_postfix(loss=f"{running['loss_sum'] / running['steps']:.4f}",
                                samples_s=f"{done / max(time.perf_counter() - t0, 1e-9):,.0f}", refresh=False)
                # the parameters are those after the last step of `losses`: a checkpoint here
                # resumes exactly
                if interrupt.set or steps_this_run == cfg.interrupt_after_steps:
                    bar.close()
                    running_now = dict(running, seconds=running["seconds"] + time.perf_counter() - t0)
                    path = save_checkpoint(epoch, b, order, running_now)
                    metrics["status"] = "interrupted"
                    metrics["checkpoint"] = str(path)
                    _write_metrics(out, metrics)
                    print(f"interrupted: checkpoint saved to {path}; continue with "
                          f"python -m nn.train --resume {path} --kernels {cfg.kernels}", file=sys.stderr)
                    return metrics
            seconds = running["seconds"] + time.perf_counter() - t0
            bar.close()

            record = {"epoch": epoch + 1, "train_loss": running["loss_sum"] / max(running["steps"], 1)}
            if cfg.eval_train:
                record["train_eval_loss"], preds = engine.evaluate("train")
                record["train_accuracy"] = float(np.mean(preds == data.y_train[train_idx]))
            if len(val_idx):
                record["val_loss"], preds = engine.evaluate("val")
                record["val_accuracy"] = float(np.mean(preds == data.y_train[val_idx]))
            record["test_loss"], test_preds = engine.evaluate("test")
            record["test_accuracy"] = float(np.mean(test_preds == data.y_test))
            record["seconds"] = seconds
            record["samples_per_second"] = n / seconds if seconds > 0 else None
            history.append(record)
            _say(cfg, _epoch_line(record))
            _write_metrics(out, metrics)            # so far: a long run can be watched

            epoch += 1
            start_batch, order = 0, None
            running = {"loss_sum": 0.0, "steps": 0, "seconds": 0.0}
            if cfg.checkpoint or epoch == cfg.epochs:
                save_checkpoint(epoch, 0, None, running)

    if hasattr(engine, "close"):
        engine.close()
    _finish(cfg, metrics, history, data, test_preds, out)
    return metrics


def _epoch_line(r: dict) -> str:
    parts = [f"epoch {r['epoch']:>3}", f"train loss {r['train_loss']:.4f}"]
    if "train_accuracy" in r:
        parts.append(f"acc {100 * r['train_accuracy']:.2f}%")
    if "val_loss" in r:
        parts.append(f"val loss {r['val_loss']:.4f} acc {100 * r['val_accuracy']:.2f}%")
    parts.append(f"test loss {r['test_loss']:.4f} acc {100 * r['test_accuracy']:.2f}%")
    parts.append(f"{r['seconds']:.2f} s ({r['samples_per_second'] or 0:,.0f} samples/s)")
    return " | ".join(parts)


def _finish(cfg, metrics, history, data, test_preds, out: Path):
    from . import plots

    k = len(data.classes)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (data.y_test, test_preds), 1)
    per_class = {c: float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None for i, c in enumerate(data.classes)}
    seconds = [h["seconds"] for h in history]
    metrics.update(
        status="finished",
        test_accuracy=history[-1]["test_accuracy"],
        test_loss=history[-1]["test_loss"],
        seconds_per_epoch=float(np.mean(seconds)),
        samples_per_second=float(metrics["data"]["train"] * len(seconds) / sum(seconds)),
        per_class_accuracy=per_class,
        confusion_matrix=cm.tolist(),
        checkpoint=str(out / "checkpoint.npz"),
    )
    title = f"{cfg.kernels} on {data.name}"
    metrics["plots"] = [
        str(plots.curves(history, out / "curves.png", title=title)),
        str(plots.confusion(cm, data.classes, out / "confusion.png", title=f"confusion matrix: {title}")),
    ]
    _write_metrics(out, metrics)
    width = max(len(c) for c in data.classes)
    lines = [f"test accuracy {100 * metrics['test_accuracy']:.2f}% ({cfg.kernels}, "
             f"{metrics['seconds_per_epoch']:.2f} s/epoch, {metrics['samples_per_second']:,.0f} samples/s; "
             f"{_compile_note(metrics)})"]
    if not cfg.quiet:
        lines.append("per-class accuracy:")
        lines += [f"  {c:<{width}}  {100 * a:6.2f}%" if a is not None else f"  {c:<{width}}     n/a"
                  for c, a in per_class.items()]
        lines.append("confusion matrix (rows: true class, columns: predicted):")
        lines += ["  " + " ".join(f"{v:5d}" for v in row) for row in cm]
        lines.append(f"results in {out}")
    print("\n".join(lines), flush=True)


def _compile_note(metrics: dict) -> str:
    """What the run paid before its first step, which the figures beside it leave out."""
    seconds, compiled = metrics.get("compile_seconds", 0.0), metrics.get("compiled_functions", 0)
    what = f"compiling {compiled} functions" if compiled else "warm-up"
    return f"{what} took {seconds:.2f} s before the first step, not counted"


def _write_metrics(out: Path, metrics: dict) -> None:
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    os.replace(tmp, out / "metrics.json")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _new_run_dir(kernels_name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = RESULTS / "runs" / f"{stamp}-{kernels_name}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


# ---------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see python -m {self.prog} --help)\n")


def _whole_number(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    return value


def _number(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return value


def _hidden(text):
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer sizes such as 128,64") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: every hidden layer needs at least 1 unit")
    return sizes


def build_parser(prog="nn.train") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Train a fully connected network on one kernel set.")
    d = Config()
    p.add_argument("--kernels", default=None,
                   help=f"kernel set: numpy, numba, numba-naive, cython, cython-naive, torch, or {REFERENCE} "
                        f"(the nn.Module reference); default {d.kernels}")
    p.add_argument("--device", default=None, help="cpu or cuda (cuda: torch and torch-autograd only)")
    p.add_argument("--dataset", default=None, help="fashion-mnist (default), mnist, or csv:TRAIN[,TEST]")
    p.add_argument("--data-dir", default=None, help="folder holding the IDX files (searched first)")
    p.add_argument("--hidden", type=_hidden, default=None, help="hidden layer sizes (default 128,64)")
    p.add_argument("--epochs", type=_whole_number, default=None, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=_whole_number, default=None,
                   help=f"samples per step, 1 (online SGD) up to the whole set; default {d.batch_size}")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help=f"default {d.optimizer}")
    p.add_argument("--lr", type=_number, default=None,
                   help="learning rate (default: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    p.add_argument("--weight-decay", type=_number, default=None, help="L2 penalty (default 0)")
    p.add_argument("--init", choices=("he", "xavier"), default=None, help="initial weights (default he)")
    p.add_argument("--activation", choices=ACTIVATIONS, default=None,
                   help=f"the hidden layers' activation (default {d.activation})")
    p.add_argument("--dropout", type=_number, default=None, metavar="P",
                   help="inverted dropout of rate P in [0, 1) on the hidden layers while training "
                        "(default 0: none); masks from --seed, the same in every set")
    p.add_argument("--seed", type=_whole_number, default=None, help="weights and batch order (default 0)")
    p.add_argument("--threads", type=_whole_number, default=None, help="cores to use (default: all)")
    p.add_argument("--val-split", type=_number, default=None, help="fraction of training data held out (default 0)")
    p.add_argument("--limit", type=_whole_number, default=None, help="train on the first N samples only")
    p.add_argument("--out", default=None, help="run folder (default results/runs/<time>-<kernels>)")
    p.add_argument("--checkpoint", action="store_true", default=None,
                   help="write <out>/checkpoint.npz after every epoch (one is always written at the end)")
    p.add_argument("--resume", default=None, metavar="PATH", help="continue from a checkpoint")
    p.add_argument("--no-eval-train", dest="eval_train", action="store_false", default=None,
                   help="skip the accuracy pass over the training set after each epoch")
    p.add_argument("--no-download", dest="download", action="store_false", default=None,
                   help="never download a missing data set")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress bar, only the result")
    return p


def config_from_args(args: argparse.Namespace) -> tuple[Config, set[str]]:
    """The Config, and which options were given explicitly."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    cfg = Config(**{f.name: given[f.name] for f in fields(Config) if f.name in given})
    return cfg, set(given)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg, given = config_from_args(args)
    try:
        if cfg.resume:
            saved = ckpt.load(cfg.resume)           # first: a missing checkpoint is the news
            if "kernels" not in given:
                cfg.kernels = saved["meta"].get("kernels", cfg.kernels)
            if "epochs" not in given:
                cfg.epochs = saved["meta"]["config"]["epochs"]
            clash = sorted(given & set(TRAINING_FIELDS))
            if clash:
                raise UsageError(
                    f"--resume continues the checkpoint's training; drop {', '.join('--' + c.replace('_', '-') for c in clash)} "
                    "(only --kernels, --device, --threads, --epochs, --out, --data-dir, --checkpoint, --quiet may change)"
                )
        metrics = train(cfg)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 130 if metrics["status"] == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
