"""A trainer's engine: what the training loop in nn.train drives, one kernel set or PyTorch.

Both engines (KernelEngine here, TorchEngine in nn.torch_reference) have the same face:

    engine.epoch(order, start_batch=0)  -> iterator of per-step losses (Python floats)
    engine.evaluate(name)               -> (mean loss, predicted classes as NumPy int64)
    engine.state()                      -> (params, optimizer state) as NumPy dicts
    engine.load(params, optim)          -> restore them (checkpoints are interchangeable)

``order`` is a permutation of the training samples (NumPy int64) drawn by the loop, so every
engine sees the same batches. For benchmarks, ``KernelEngine.step(idx)`` runs one gather and
one training step on the samples ``idx`` (a native index array from ``batches.order``).
"""

from __future__ import annotations

import numpy as np

from .model import MLP, Batches, Optimizer


class KernelEngine:
    """The MLP trained by a kernel set: every op of the step is one of ``ks``'s."""

    def __init__(self, ks, sizes, params, *, optimizer="adam", lr=1e-3, weight_decay=0.0,
                 momentum=0.9, batch_size=64, train=None, eval_sets=None, eval_batch=1000):
        # train: (x float32 (N, in), y int64 (N,)) NumPy; eval_sets: {name: (x, y)} NumPy
        self.ks = ks
        self.batch_size = int(batch_size)
        self.model = MLP(ks, sizes, params)
        self.opt = Optimizer(ks, self.model.params, optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum)
        self.batches = Batches(ks, *train) if train is not None else None
        self.eval_batch = eval_batch
        self.eval_sets = {}
        for name, (x, y) in (eval_sets or {}).items():
            self.eval_sets[name] = (ks.asarray(np.ascontiguousarray(x, np.float32)),
                                    ks.asarray(np.ascontiguousarray(y, np.int64)))

    def step(self, idx) -> float:
        """Gather the samples ``idx`` (native indices) and train on them once; the loss."""
        buf = self.model.buffers(int(idx.shape[0]))
        self.batches.gather(idx, buf)
        return float(self.model.train_step(buf, self.opt))

    def epoch(self, order: np.ndarray, start_batch: int = 0):
        idx = self.batches.order(order)
        b, n = self.batch_size, len(order)
        for start in range(start_batch * b, n, b):
            yield self.step(idx[start:start + b])

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
