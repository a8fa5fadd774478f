"""A trainer's engine: what the training loop in nn.train drives, one kernel set or PyTorch.

Both engines (KernelEngine here, TorchEngine in nn.torch_reference) have the same face:

    engine.epoch(order, start_batch=0, max_steps=None)
                                        -> iterator of NumPy arrays of per-step losses, each
                                           array a run of consecutive steps
    engine.evaluate(name)               -> (mean loss, predicted classes as NumPy int64)
    engine.state()                      -> (params, optimizer state) as NumPy dicts
    engine.load(params, optim)          -> restore them (checkpoints are interchangeable)
    engine.warm_up(progress=None)       -> kernels.warmup.WarmUp: compile (or load from
                                           Numba's cache) what the run calls, and any other
                                           one-off set-up, before the first timed step

``order`` is a permutation of the training samples (NumPy int64) drawn by the loop, so every
engine sees the same batches. The loop may only stop (Ctrl-C, a checkpoint) between the arrays
``epoch`` yields: their last step is the one the parameters are at.

KernelEngine trains an epoch with the set's ``train_steps``: one call per ``steps_per_call``
steps, which the compiled sets run without leaving compiled code (the other sets compose their
ops, kernels/_steps.py). ``KernelEngine.step(idx)`` is the same step op by op, through
``nn.model.MLP``: one gather and one training step on the samples ``idx`` (a native index array
from ``batches.order``), what the per-step benchmarks time.
"""

from __future__ import annotations

import numpy as np

from .model import MLP, Batches, Optimizer


class KernelEngine:
    """The MLP trained by a kernel set: every op of the step is one of ``ks``'s."""

    def __init__(self, ks, sizes, params, *, optimizer="adam", lr=1e-3, weight_decay=0.0,
                 momentum=0.9, batch_size=64, activation="relu", dropout=0.0, seed=0, train=None,
                 eval_sets=None, eval_batch=1000, samples_per_call=4096):
        # train: (x float32 (N, in), y int64 (N,)) NumPy; eval_sets: {name: (x, y)} NumPy
        self.ks = ks
        self.batch_size = int(batch_size)
        # a train_steps call covers about samples_per_call samples: its checks are paid once
        # per call, and Ctrl-C waits at most one call (tens of milliseconds)
        self.steps_per_call = max(1, samples_per_call // self.batch_size)
        self.model = MLP(ks, sizes, params, activation=activation, dropout=dropout, seed=seed)
        self.opt = Optimizer(ks, self.model.params, optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum)
        self.batches = Batches(ks, *train) if train is not None else None
        self.eval_batch = eval_batch
        self.eval_sets = {}
        for name, (x, y) in (eval_sets or {}).items():
            self.eval_sets[name] = (ks.asarray(np.ascontiguousarray(x, np.float32)),
                                    ks.asarray(np.ascontiguousarray(y, np.int64)))

    def warm_up(self, progress=None):
        """Compile (or load from the cache) the kernels this engine calls: train_steps for its
        layer count and optimizer, linear and softmax_cross_entropy for evaluate; float32, as
        the data. On tiny arrays of its own: the model, optimizer and data are not touched.
        ``progress``: a stream to show a compile on. Returns a kernels.warmup.WarmUp."""
        from kernels.warmup import TRAINER_OPS, warm_up

        return warm_up(self.ks, dtype=np.float32, layers=len(self.model.params) // 2, optimizer=self.opt.kind,
                       ops=TRAINER_OPS, progress=progress)

    def step(self, idx) -> float:
        """Gather the samples ``idx`` (native indices) and train on them once; the loss."""
        buf = self.model.buffers(int(idx.shape[0]))
        self.batches.gather(idx, buf)
        return float(self.model.train_step(buf, self.opt))

    def epoch(self, order: np.ndarray, start_batch: int = 0, max_steps: int | None = None):
        """The epoch's steps from batch ``start_batch`` on (at most ``max_steps`` of them): one
        ks.train_steps call per ``steps_per_call`` steps, each yielding its losses (float64)."""
        ks, b = self.ks, self.batch_size
        idx = self.batches.order(order)
        start, end = start_batch * b, len(order)
        if max_steps is not None:
            end = min(end, start + max_steps * b)
        while start < end:
            part = idx[start:min(start + self.steps_per_call * b, end)]
            losses = ks.train_steps(self.model.params, self.batches.x, self.batches.y, part, batch=b,
                                    **self.opt.train_steps_args(), **self.model.hidden_args())
            self.opt.step_count += int(losses.shape[0])
            start += int(part.shape[0])
            yield ks.to_numpy(losses).astype(np.float64)

    def evaluate(self, name: str) -> tuple[float, np.ndarray]:
        """(mean cross-entropy, predictions) of the current weights on eval set ``name``."""
        ks, model = self.ks, self.model
        x, y = self.eval_sets[name]
        n = int(x.shape[0])
        total, preds = 0.0, np.empty(n, np.int64)
        for start in range(0, n, self.eval_batch):
            xb, yb = x[start:start + self.eval_batch], y[start:start + self.eval_batch]
            rows = int(xb.shape[0])
            buf = model.buffers(rows)
            logits = model.forward(xb, buf)
            loss, _ = ks.softmax_cross_entropy(logits, yb, out=buf.grad_acts[-1])
            total += float(loss) * rows
            preds[start:start + rows] = ks.to_numpy(logits).argmax(axis=1)
        return total / n, preds

    def state(self):
        return self.model.state_dict(), self.opt.state_dict()

    def load(self, params, optim) -> None:
        self.model.load_state_dict(params)
        self.opt.load_state_dict(optim)
