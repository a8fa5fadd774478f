"""The strongest peers: the work of ``ks.train_steps`` written in JAX and PyTorch as their users
would write it to go fast, so that a ratio against them is a ratio of the same work.

Every trainer here trains the same ReLU MLP (``sizes``, e.g. 784-128-64-10) from the same
initial parameters (``[w1, b1, ..., wL, bL]``, w_i (n_{i-1}, n_i), float32), on the same
samples in the same order (``order``: rows of ``x``, ``batch`` at a time, the gather of each
batch inside the trainer's compiled code where it has some), with the same update (SGD at
``lr``, or Adam with torch.optim.Adam's rule), the step kernels/_steps.py writes out:

    xb, yb = x[rows], y[rows]
    a_i = relu(a_{i-1} @ w_i + b_i)  (i < L);  logits = a_{L-1} @ w_L + b_L
    loss = mean cross-entropy(logits, yb);  grads by backpropagation;  update every parameter

The trainers (``TRAINERS``):

* ``numpy``, ``numba``, ``cython``: ``nn.engine.KernelEngine`` on that kernel set, as the
  trainer and bench_train's epochs run it: one ``ks.train_steps`` call per 4096 samples.
* ``jax``: ``jax.jit`` of a chunk of steps, a ``lax.scan`` over the chunk's batches whose
  body gathers its rows from the training set (passed in whole, on the device), takes
  ``jax.value_and_grad`` of the loss and updates the parameters; the parameters' buffers are
  donated, so XLA updates them in place.
* ``torch-compile``: ``torch.compile(fullgraph=True)`` (inductor) of one whole functional step
  (gather, forward, loss, ``torch.func.grad_and_value``, update), called once a step.
* ``torch-eager``: the same step in eager PyTorch on preloaded tensors (``index_select`` from
  the training set), autograd, ``torch.optim.SGD/Adam(foreach=True)``.
* ``torch-reference``: the seeds' reference, ``nn.torch_reference.TorchEngine`` (an nn.Module
  fed by a DataLoader, as PyTorch's tutorials write it): timed beside the others for context,
  never counted as a peer.

The torch peers keep the weights in the sets' (in, out) layout and use ``addmm``; they differ
from the idiomatic reference (nn/torch_reference.py: an nn.Module fed by a DataLoader) in
being written for speed, and that reference stays the seeds' comparison, not the peers'.

tests/test_peers.py checks that every trainer available here ends within float32 tolerance of
the numpy set's ``train_steps`` after the same steps. The timings are bench/peers_run.py's,
each framework in a process of its own. JAX is an optional extra (``pip install -e .[peers]``);
without it the ``jax`` trainer is unavailable with that reason.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

SETS = ("numpy", "numba", "cython")           # kernel sets: KernelEngine over ks.train_steps
PEERS = ("jax", "torch-compile", "torch-eager")
REFERENCE = "torch-reference"                  # the seeds' comparison: context, never a peer
TRAINERS = SETS + PEERS + (REFERENCE,)
WHAT = {
    "numpy": "numpy set, `ks.train_steps` (its kernels composed op by op)",
    "numba": "numba set, `ks.train_steps` (fused in compiled code)",
    "cython": "cython set, `ks.train_steps` (fused in compiled code)",
    "jax": "`jax.jit` of a chunk of steps (`lax.scan`, gather inside, donated parameters)",
    "torch-compile": "`torch.compile` (inductor, fullgraph) of the whole functional step",
    "torch-eager": "torch eager on preloaded tensors, `foreach` SGD / Adam",
    REFERENCE: "the seeds' idiomatic PyTorch trainer (nn.Module, DataLoader, torch.optim; nn/torch_reference.py)",
}
SAMPLES_PER_CALL = 4096    # KernelEngine's: one train_steps call (one jax chunk) per this many samples
BETAS, EPS = (0.9, 0.999), 1e-8


def unavailable(name: str) -> str | None:
    """Why trainer ``name`` cannot run here, or None."""
    if name not in TRAINERS:
        return f"unknown trainer {name!r}; expected one of {', '.join(TRAINERS)}"
    if name in SETS:
        import kernels

        return kernels.available().get(name)
    if name == "jax" and importlib.util.find_spec("jax") is None:
        return "JAX is not installed (pip install -e .[peers], or pip install jax)"
    if name.startswith("torch") and importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    return None


def steps_per_call(batch: int, samples_per_call: int = SAMPLES_PER_CALL) -> int:
    return max(1, samples_per_call // batch)


def make(name, sizes, params, x, y, *, batch, optimizer="sgd", lr=0.05, threads=None,
         samples_per_call=SAMPLES_PER_CALL, data=None):
    """A trainer of ``sizes`` starting from ``params`` (NumPy, copied), over x (N, n0) float32 and
    y (N,) int64. ``trainer.train(order)`` trains on x[order] (a multiple of ``batch`` rows);
    ``trainer.params()`` is the parameters as NumPy, (in, out) weights. ``data``: the
    nn.data.Dataset that x and y are the training set of, for the reference to read as it
    reads it (Fashion-MNIST's files through torchvision); without it, tensors of x and y."""
    reason = unavailable(name)
    if reason is not None:
        raise RuntimeError(f"trainer {name!r} cannot run here: {reason}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if len(params) != 2 * (len(sizes) - 1):
        raise ValueError(f"params must be [w1, b1, ..., wL, bL] for sizes {sizes}: "
                         f"{2 * (len(sizes) - 1)} arrays, got {len(params)}")
    params = [np.array(p, np.float32) for p in params]
    if name == REFERENCE:
        return ReferenceTrainer(name, list(sizes), params, x, y, batch=int(batch), optimizer=optimizer,
                                lr=float(lr), threads=threads, steps=steps_per_call(batch, samples_per_call),
                                data=data)
    cls = {"jax": JaxTrainer, "torch-compile": TorchCompileTrainer, "torch-eager": TorchEagerTrainer}.get(name, SetTrainer)
    return cls(name, list(sizes), params, x, y, batch=int(batch), optimizer=optimizer, lr=float(lr),
               threads=threads, steps=steps_per_call(batch, samples_per_call))


class _Trainer:
    def __init__(self, name, sizes, params, x, y, *, batch, optimizer, lr, threads, steps):
        self.name, self.sizes, self.batch, self.optimizer, self.lr = name, sizes, batch, optimizer, lr
        self.threads, self.steps = threads, steps
        self.t = 0  # optimizer steps taken (Adam's bias corrections)

    def _check(self, order):
        order = np.asarray(order)
        if order.ndim != 1 or order.shape[0] % self.batch:
            raise ValueError(f"{self.name}: order must be a 1-d run of whole batches ({self.batch} rows "
                             f"each), got shape {order.shape}")
        return order.astype(np.int64, copy=False)


class SetTrainer(_Trainer):
    """A kernel set's ``train_steps``, through the trainer's own engine."""

    def __init__(self, name, sizes, params, x, y, **kw):
        super().__init__(name, sizes, params, x, y, **kw)
        import kernels
        from nn.engine import KernelEngine

        self.ks = kernels.get(name, threads=self.threads)
        self.engine = KernelEngine(self.ks, sizes, params, optimizer=self.optimizer, lr=self.lr,
                                   batch_size=self.batch, train=(x, y), samples_per_call=self.steps * self.batch)

    @property
    def isa(self):
        return self.ks.isa

    def train(self, order):
        for _ in self.engine.epoch(self._check(order)):
            pass

    def params(self):
        return [self.ks.to_numpy(p).copy() for p in self.engine.model.params]


class JaxTrainer(_Trainer):
    """``jax.jit`` over a chunk of ``steps`` steps: ``lax.scan``, the batch gathered inside."""

    isa = None

    def __init__(self, name, sizes, params, x, y, **kw):
        super().__init__(name, sizes, params, x, y, **kw)
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax
        import jax.numpy as jnp
        from jax import lax

        self.jax = jax
        self.x, self.y = jax.device_put(x), jax.device_put(y.astype(np.int32))
        self.p = [jax.device_put(p) for p in params]
        self.state = [jnp.zeros_like(p) for _ in range(2) for p in self.p] if self.optimizer == "adam" else []  # m, v
        n_layers = len(params) // 2
        lr, (b1, b2) = self.lr, BETAS

        def loss_fn(p, xb, yb):
            a = xb
            for i in range(n_layers):
                a = a @ p[2 * i] + p[2 * i + 1]
                if i < n_layers - 1:
                    a = jax.nn.relu(a)
            picked = jnp.take_along_axis(a, yb[:, None], axis=1)[:, 0]
            return jnp.mean(jax.nn.logsumexp(a, axis=1) - picked)

        def update(p, g, state, t):
            if self.optimizer == "sgd":
                return [pi - lr * gi for pi, gi in zip(p, g)], state
            m, v = state[:len(p)], state[len(p):]
            m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
            v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
            tf = t.astype(jnp.float32)
            step_size, root = lr / (1 - b1 ** tf), jnp.sqrt(1 - b2 ** tf)
            p = [pi - step_size * mi / (jnp.sqrt(vi) / root + EPS) for pi, mi, vi in zip(p, m, v)]
            return p, m + v

        def chunk(p, state, t, x, y, rows):  # rows (steps, batch)
            def body(carry, idx):
                p, state, t = carry
                loss, g = jax.value_and_grad(loss_fn)(p, x[idx], y[idx])  # the gather, inside
                p, state = update(p, g, state, t + 1)
                return (p, state, t + 1), loss

            (p, state, t), losses = lax.scan(body, (p, state, t), rows)
            return p, state, t, losses

        self._chunk = jax.jit(chunk, donate_argnums=(0, 1))
        self._t = jnp.asarray(0, jnp.int32)

    def train(self, order):
        order = self._check(order).reshape(-1, self.batch)
        for start in range(0, order.shape[0], self.steps):
            rows = order[start:start + self.steps].astype(np.int32)
            self.p, self.state, self._t, losses = self._chunk(self.p, self.state, self._t, self.x, self.y, rows)
        self.jax.block_until_ready(self.p)

    def params(self):
        return [np.asarray(p).copy() for p in self.p]


def _torch(threads):
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch


class _TorchTrainer(_Trainer):
    isa = None

    def __init__(self, name, sizes, params, x, y, **kw):
        super().__init__(name, sizes, params, x, y, **kw)
        torch = self.torch = _torch(self.threads)
        self.x, self.y = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))
        self.p = [torch.tensor(p) for p in params]
        self.n_layers = len(params) // 2

    def forward_loss(self, p, xb, yb):
        torch = self.torch
        a = xb
        for i in range(self.n_layers):
            a = torch.addmm(p[2 * i + 1], a, p[2 * i])
            if i < self.n_layers - 1:
                a = torch.relu(a)
        return torch.nn.functional.cross_entropy(a, yb)

    def params(self):
        return [p.detach().numpy().copy() for p in self.p]


class TorchCompileTrainer(_TorchTrainer):
    """``torch.compile`` of one whole functional step, gather to update, called once a step."""

    def __init__(self, name, sizes, params, x, y, **kw):
        super().__init__(name, sizes, params, x, y, **kw)
        torch = self.torch
        lr, (b1, b2) = self.lr, BETAS
        grad_and_loss = torch.func.grad_and_value(self.forward_loss)

        def step(p, state, t, x, y, rows):
            g, loss = grad_and_loss(p, x[rows], y[rows])  # the gather, inside
            if self.optimizer == "sgd":
                return [pi - lr * gi for pi, gi in zip(p, g)], state, loss
            n = len(p)
            m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(state[:n], g)]
            v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(state[n:], g)]
            step_size, root = lr / (1 - b1 ** t), torch.sqrt(1 - b2 ** t)  # t: a 0-d tensor, no recompiles
            return [pi - step_size * mi / (torch.sqrt(vi) / root + EPS) for pi, mi, vi in zip(p, m, v)], m + v, loss

        # A worker builds one trainer per cell, each compiling this same `step` code object anew;
        # Dynamo keeps every earlier cell's compiled entries against it, and from its recompile
        # limit (8) on, fullgraph=True fails the cell (it did, from the 8th cell of a grid run).
        # The earlier cells' trainers are gone: forget their entries.
        torch._dynamo.reset()
        self._step = torch.compile(step, fullgraph=True, dynamic=False)
        self.state = [torch.zeros_like(p) for _ in range(2) for p in self.p] if self.optimizer == "adam" else []  # m, v

    def train(self, order):
        torch = self.torch
        rows = torch.from_numpy(self._check(order)).view(-1, self.batch)
        with torch.no_grad():
            for k in range(rows.shape[0]):
                self.t += 1
                self.p, self.state, _ = self._step(self.p, self.state, torch.tensor(float(self.t)),
                                                   self.x, self.y, rows[k])


class TorchEagerTrainer(_TorchTrainer):
    """Eager PyTorch as written for speed: preloaded tensors, autograd, a foreach optimizer."""

    def __init__(self, name, sizes, params, x, y, **kw):
        super().__init__(name, sizes, params, x, y, **kw)
        torch = self.torch
        for p in self.p:
            p.requires_grad_(True)
        if self.optimizer == "adam":
            self.opt = torch.optim.Adam(self.p, lr=self.lr, betas=BETAS, eps=EPS, foreach=True)
        else:
            self.opt = torch.optim.SGD(self.p, lr=self.lr, foreach=True)

    def train(self, order):
        torch = self.torch
        rows = torch.from_numpy(self._check(order)).view(-1, self.batch)
        for k in range(rows.shape[0]):
            idx = rows[k]
            loss = self.forward_loss(self.p, self.x.index_select(0, idx), self.y.index_select(0, idx))
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)


class ReferenceTrainer(_Trainer):
    """The seeds' reference trainer, as nn.train runs it: ``TorchEngine.epoch`` (DataLoader batches,
    loss.item() after every step)."""

    isa = None

    def __init__(self, name, sizes, params, x, y, *, data=None, **kw):
        super().__init__(name, sizes, params, x, y, **kw)
        from nn.data import Dataset
        from nn.torch_reference import TorchEngine

        _torch(self.threads)
        if data is None:
            data = Dataset("arrays", x, y, x[:1], y[:1], tuple(str(c) for c in range(sizes[-1])), {})
        self.engine = TorchEngine(data, sizes, params, train_idx=np.arange(len(y)), optimizer=self.optimizer,
                                  lr=self.lr, batch_size=self.batch, threads=self.threads)

    def train(self, order):
        for _ in self.engine.epoch(self._check(order)):
            pass

    def params(self):
        return list(self.engine.state()[0].values())


# ---------------------------------------------------------------- Adam over the MLP's parameters

ADAM_VARIANTS = ("numba", "cython", "numpy", "torch", "torch-foreach", "torch-fused")
ADAM_WHAT = {
    "numba": "numba set's `adam_step`, once per parameter array",
    "cython": "cython set's `adam_step`, once per parameter array",
    "numpy": "numpy set's `adam_step`, once per parameter array",
    "torch": "`torch.optim.Adam` with its defaults",
    "torch-foreach": "`torch.optim.Adam(foreach=True)`",
    "torch-fused": "`torch.optim.Adam(fused=True)`",
}


def adam_unavailable(variant):
    if variant not in ADAM_VARIANTS:
        return f"unknown Adam variant {variant!r}; expected one of {', '.join(ADAM_VARIANTS)}"
    return unavailable("torch-eager" if variant.startswith("torch") else variant)


def make_adam(variant, sizes, threads=None, lr=1e-3):
    """A no-argument call that takes one Adam step over parameters shaped as ``sizes``' MLP,
    with fixed random gradients (bench_ops.test_adam_step's setup), and its ``isa``."""
    reason = adam_unavailable(variant)
    if reason is not None:
        raise RuntimeError(f"Adam variant {variant!r} cannot run here: {reason}")
    rng = np.random.default_rng(0)
    shapes = [s for i, o in zip(sizes[:-1], sizes[1:]) for s in ((i, o), (o,))]
    params = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    grads = [rng.standard_normal(s, dtype=np.float32) * np.float32(1e-2) for s in shapes]
    if variant.startswith("torch"):
        torch = _torch(threads)
        ps = [torch.tensor(p, requires_grad=True) for p in params]
        for p, g in zip(ps, grads):
            p.grad = torch.tensor(g)
        kw = {"torch-foreach": {"foreach": True}, "torch-fused": {"fused": True}}.get(variant, {})
        return torch.optim.Adam(ps, lr=lr, **kw).step, None
    import kernels

    ks = kernels.get(variant, threads=threads)
    ps, gs = [ks.asarray(p) for p in params], [ks.asarray(g) for g in grads]
    ms, vs = [ks.asarray(np.zeros_like(p)) for p in params], [ks.asarray(np.zeros_like(p)) for p in params]
    t = [0]

    def step():
        t[0] += 1
        for p, g, m, v in zip(ps, gs, ms, vs):
            ks.adam_step(p, g, m, v, step=t[0], lr=lr)

    return step, ks.isa
