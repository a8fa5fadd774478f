"""Compile a kernel set's kernels before they are timed, and say so while it happens.

    from kernels.warmup import warm_up
    report = warm_up(kernels.get("numba"), dtype="float32", layers=3)     # what nn.train runs
    report.seconds, report.compiled                    # wall time; functions Numba compiled

    python -m kernels warmup [--sets numba] [--dtype float32] [--layers 3] [--all-ops]

Why: the Numba sets compile each kernel on its first call with new argument types (one
specialisation per dtype, and for ``train_steps`` per dtype and layer count) and keep the
machine code in Numba's on-disk cache (``cache=True``; ``NUMBA_CACHE_DIR`` when set). With an
empty cache a training run's first ``train_steps`` call spends about 13 s compiling on a
2-core machine; with the cache filled, loading takes well under a second. ``warm_up`` pays
that before anything is timed, so that no figure counts it, and ``python -m kernels warmup``
pays it ahead of time (once per machine, checkout and Numba version: a classroom or a CI job).

What it compiles is what the run needs, nothing more: ``warm_up`` calls the set's ops on tiny
arrays of the run's dtype and layer count (a kernel is compiled for its argument types,
whatever their sizes), so the run's own first calls find their kernels compiled. The trainer's
ops are ``train_steps`` (its training loop) and ``linear`` and ``softmax_cross_entropy`` (its
evaluation passes); ``ops="all"`` adds every other op of the interface (what the benchmarks
and the tests call). No argument, state or parameter of the caller is touched.

``compile_progress`` is how the wait is shown: it listens to Numba's compile events
(``numba.core.event``, fired only when a function is really compiled, not when it is loaded
from the cache), so nothing is printed on a warm cache; on the first compile it says what is
happening, and shows the functions compiled so far and the time elapsed until it is done.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

TRAINER_OPS = ("train_steps", "linear", "softmax_cross_entropy")
ALL_OPS = TRAINER_OPS + ("matmul", "relu", "relu_backward", "linear_backward", "sgd_step", "adam_step")
OPTIMIZERS = ("sgd", "momentum", "adam")
# What a cold compile of the trainer's ops took on the 2-core machine the project is measured
# on (python -m bench.first_call, "trainer"), said before a compile so that the wait is expected.
TYPICAL = {"numba": "about 15 s on 2 cores", "numba-naive": "a few seconds"}


@dataclass
class WarmUp:
    """What one warm-up cost: wall seconds, and the functions Numba compiled (qualified names;
    empty when everything came from the cache, or for a set that compiles nothing at run time)."""
    seconds: float = 0.0
    compiled: list[str] = field(default_factory=list)
    compile_seconds: float = 0.0       # wall time from the first compile's start to the last's end


def warm_up(ks, *, dtype="float32", layers=3, optimizer="adam", ops=TRAINER_OPS, progress=None) -> WarmUp:
    """Call ``ks``'s ``ops`` once each on tiny arrays of ``dtype`` (an MLP of ``layers`` weight
    layers for train_steps, with ``optimizer``), so that each is compiled, or loaded from the
    cache, before a run's first timed call. ``progress``: a stream to show compiles on (see
    compile_progress), or None for silence. Returns a WarmUp."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a whole number >= 1 (weight layers of the MLP), got {layers!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    unknown = [op for op in ops if op not in ALL_OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(unknown)}; use some of {', '.join(ALL_OPS)}")
    label = f"{ks.name} kernels ({dtype.name}" + (f", {layers} layers" if "train_steps" in ops else "") + ")"
    t0 = time.perf_counter()
    with compile_progress(label, progress, typical=TYPICAL.get(ks.name)) as seen:
        for op in ops:
            _CALLS[op](ks, dtype, layers, optimizer)
    return WarmUp(time.perf_counter() - t0, seen.compiled, seen.seconds)


# ---------------------------------------------------------------- the calls, on tiny arrays
#
# Sizes are irrelevant to what gets compiled (only dtypes, dimensions and layouts are), so every
# array is a few elements: the calls themselves take microseconds.

def _arrays(ks, dtype, *shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [ks.asarray((rng.standard_normal(s) * 0.1).astype(dtype)) for s in shapes]


def _train_steps(ks, dtype, layers, optimizer):
    sizes = [3] + [2] * (layers - 1) + [2]          # 3 inputs, 2 classes
    shapes = [s for n_in, n_out in zip(sizes, sizes[1:]) for s in ((n_in, n_out), (n_out,))]
    params = _arrays(ks, dtype, *shapes)
    x, = _arrays(ks, dtype, (4, sizes[0]), seed=1)
    labels = ks.asarray(np.array([0, 1, 1, 0], np.int64))
    order = ks.asarray(np.arange(4, dtype=np.int64))
    zeros = lambda: [ks.asarray(np.zeros(s, dtype)) for s in shapes]  # noqa: E731
    if optimizer == "adam":
        args = dict(optimizer="adam", m=zeros(), v=zeros(), step=0)
    elif optimizer == "momentum":
        args = dict(optimizer="sgd", momentum=0.9, velocity=zeros())
    else:
        args = dict(optimizer="sgd")
    ks.train_steps(params, x, labels, order, batch=2, lr=1e-3, **args)


def _linear(ks, dtype, layers, optimizer):
    x, w, b = _arrays(ks, dtype, (2, 3), (3, 2), (2,))
    for relu in (True, False):
        ks.linear(x, w, b, relu=relu)


def _softmax_cross_entropy(ks, dtype, layers, optimizer):
    logits, = _arrays(ks, dtype, (2, 3))
    ks.softmax_cross_entropy(logits, ks.asarray(np.array([0, 2], np.int64)))


def _matmul(ks, dtype, layers, optimizer):
    a, b = _arrays(ks, dtype, (2, 3), (3, 2))
    ks.matmul(a, b)
    ks.matmul(a, a, trans_a=True)
    ks.matmul(a, a, trans_b=True)


def _relu(ks, dtype, layers, optimizer):
    x, = _arrays(ks, dtype, (2, 3))
    ks.relu(x)


def _relu_backward(ks, dtype, layers, optimizer):
    g, y = _arrays(ks, dtype, (2, 3), (2, 3))
    ks.relu_backward(g, y)


def _linear_backward(ks, dtype, layers, optimizer):
    x, w, y, g = _arrays(ks, dtype, (2, 3), (3, 2), (2, 2), (2, 2))
    for relu in (True, False):
        for need_grad_x in (True, False):
            ks.linear_backward(x, w, y, g, relu=relu, need_grad_x=need_grad_x)


def _sgd_step(ks, dtype, layers, optimizer):
    p, g, v = _arrays(ks, dtype, (3,), (3,), (3,))
    ks.sgd_step(p, g, lr=1e-3)
    ks.sgd_step(p, g, lr=1e-3, momentum=0.9, velocity=v)


def _adam_step(ks, dtype, layers, optimizer):
    p, g = _arrays(ks, dtype, (3,), (3,))
    m, v = ks.asarray(np.zeros(3, dtype)), ks.asarray(np.zeros(3, dtype))
    ks.adam_step(p, g, m, v, step=1, lr=1e-3)


_CALLS = {"train_steps": _train_steps, "linear": _linear, "softmax_cross_entropy": _softmax_cross_entropy,
          "matmul": _matmul, "relu": _relu, "relu_backward": _relu_backward, "linear_backward": _linear_backward,
          "sgd_step": _sgd_step, "adam_step": _adam_step}


# ---------------------------------------------------------------- showing the wait


class _Seen:
    def __init__(self):
        self.compiled: list[str] = []
        self.first: float | None = None
        self.last: float | None = None

    @property
    def seconds(self) -> float:
        return 0.0 if self.first is None else self.last - self.first


class compile_progress:
    """A context manager that records the functions Numba compiles inside it (a _Seen: its
    ``compiled`` names and ``seconds``) and, given a ``stream``, shows them: on the first
    compile a line that says what is happening, then a progress line (tqdm: functions
    compiled, time elapsed; refreshed every half second, only on a terminal), and a closing
    line. Nothing is shown when nothing compiles (a warm cache, or a set without Numba)."""

    def __init__(self, label: str, stream=None, typical: str | None = None):
        self.label, self.stream, self.typical = label, stream, typical
        self.seen = _Seen()
        self._bar = None
        self._stop = threading.Event()
        self._ticker = None
        self._listener = None
        self._depth = 0

    def __enter__(self) -> _Seen:
        if "numba" not in sys.modules:          # a set without Numba compiles nothing at run time
            return self.seen
        from numba.core import event

        outer = self

        class Listener(event.Listener):
            def on_start(self, ev):
                outer._started()

            def on_end(self, ev):
                outer._ended(ev.data["dispatcher"])

        self._listener = Listener()
        event.register("numba:compile", self._listener)
        return self.seen

    def _started(self):
        now = time.perf_counter()
        self._depth += 1
        if self.seen.first is not None:
            return
        self.seen.first = now
        if self.stream is None:
            return
        print(f"compiling the {self.label}: first run only, cached afterwards"
              + (f" ({self.typical})" if self.typical else ""), file=self.stream, flush=True)
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(desc="  compiling", file=self.stream, leave=False,
                             bar_format="{desc}: {elapsed} elapsed, functions compiled: {n}")
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def _ended(self, dispatcher):
        self._depth -= 1
        self.seen.last = time.perf_counter()
        self.seen.compiled.append(getattr(dispatcher, "__qualname__", None) or str(dispatcher))
        if self._bar is not None:
            self._bar.update(1)

    def _tick(self):
        # the elapsed time moves on while LLVM works on one function for seconds
        while not self._stop.wait(0.5):
            self._bar.refresh()

    def __exit__(self, *exc):
        if self._listener is not None:
            from numba.core import event

            event.unregister("numba:compile", self._listener)
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is not None:
            self._bar.close()
        if self.stream is not None and self.seen.first is not None and exc[0] is None:
            print(f"compiled {len(self.seen.compiled)} functions in {self.seen.seconds:.1f} s; "
                  f"later runs load them from the cache ({cache_location()})", file=self.stream, flush=True)
        return False


def compiles_at_run_time(name: str) -> bool:
    """Whether set ``name``'s backend is Numba-compiled on first use (numba, numba-naive), as
    opposed to compiled ahead of time (cython) or not compiled (numpy, torch)."""
    import kernels

    backend = kernels.backend_module(name)
    if "numba" not in sys.modules:
        return False
    from numba.core.dispatcher import Dispatcher

    return any(isinstance(v, Dispatcher) for v in vars(backend).values())


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def cache_location() -> str:
    """Where Numba keeps the compiled kernels: NUMBA_CACHE_DIR when set, else the
    __pycache__ folder beside each kernel module (or, when that is not writable, a folder
    in the user's cache that Numba chooses)."""
    from numba.core import config

    return config.CACHE_DIR or "__pycache__ beside the kernel modules"
