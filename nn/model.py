"""The MLP on a kernel set: parameters, per-batch-size buffers, and one training step read top
to bottom as the list of ops it is (forward, loss, backward, update), after llm.c.

    ks = kernels.get("numpy", threads=2)
    model = MLP(ks, sizes=[784, 128, 64, 10], params=init_params([784, 128, 64, 10], "he", rng))
    opt = Optimizer(ks, model.params, "adam", lr=1e-3)
    loss = model.train_step(xb, yb, opt)        # xb (B, 784) float32, yb (B,) int64, native arrays

Decisions:

* Every array the step touches is preallocated: activations and gradients are kept per batch
  size (a training run sees at most two sizes, the full batch and the epoch's last partial
  one), so a steady-state step allocates nothing but what a kernel makes inside itself and the
  0-d loss the interface returns.
* The step calls only the kernel set's ops. Gathering the batch (``Batches``) is the one piece
  of work outside the set: one fancy-index into a preallocated buffer, NumPy's np.take or
  torch.index_select, whichever array the set uses.
* Initial weights come from a numpy.random.Generator in float32 and are copied into the set
  (``ks.asarray``), so every set, and the torch-autograd reference, starts from the same bits.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------- initial weights


def init_params(sizes: list[int], init: str, rng: np.random.Generator) -> list[np.ndarray]:
    """[w1, b1, w2, b2, ...] as float32 NumPy arrays; w_i is (in, out), b_i is (out,) zeros.

    he: N(0, 2 / fan_in), for ReLU layers (the variance ReLU halves is restored).
    xavier: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), Glorot's choice for symmetric units.
    Drawn layer by layer from ``rng``, so one seed gives one set of weights everywhere.
    """
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        if init == "he":
            w = rng.standard_normal((fan_in, fan_out), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif init == "xavier":
            a = np.float32(np.sqrt(6.0 / (fan_in + fan_out)))
            w = rng.uniform(-a, a, size=(fan_in, fan_out)).astype(np.float32)
        else:
            raise ValueError(f"unknown init {init!r}; use 'he' or 'xavier'")
        params += [w, np.zeros(fan_out, dtype=np.float32)]
    return params


def param_names(n_layers: int) -> list[str]:
    return [f"{kind}{i + 1}" for i in range(n_layers) for kind in ("w", "b")]


# ---------------------------------------------------------------------------- the optimizer


class Optimizer:
    """SGD, SGD with momentum, or Adam over a list of native parameter arrays, in place,
    through the set's sgd_step / adam_step (torch.optim's update rules)."""

    KINDS = ("sgd", "momentum", "adam")

    def __init__(self, ks, params, kind: str, lr: float, weight_decay: float = 0.0,
                 momentum: float = 0.9, betas=(0.9, 0.999), eps: float = 1e-8):
        if kind not in self.KINDS:
            raise ValueError(f"unknown optimizer {kind!r}; use one of {', '.join(self.KINDS)}")
        self.ks, self.params, self.kind = ks, params, kind
        self.lr, self.weight_decay, self.momentum = lr, weight_decay, momentum
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.step_count = 0             # Adam's t: steps taken so far
        zeros = [ks.asarray(np.zeros(ks.to_numpy(p).shape, np.float32)) for p in params]
        if kind == "momentum":
            self.state = {"velocity": zeros}
        elif kind == "adam":
            self.state = {"m": zeros, "v": [ks.asarray(np.zeros(ks.to_numpy(p).shape, np.float32)) for p in params]}
        else:
            self.state = {}

    def step(self, grads) -> None:
        ks = self.ks
        self.step_count += 1
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if self.kind == "adam":
                ks.adam_step(p, g, self.state["m"][i], self.state["v"][i], step=self.step_count, lr=self.lr,
                             beta1=self.beta1, beta2=self.beta2, eps=self.eps, weight_decay=self.weight_decay)
            elif self.kind == "momentum":
                ks.sgd_step(p, g, lr=self.lr, momentum=self.momentum, velocity=self.state["velocity"][i],
                            weight_decay=self.weight_decay)
            else:
                ks.sgd_step(p, g, lr=self.lr, weight_decay=self.weight_decay)

    def train_steps_args(self) -> dict:
        """This optimizer as ks.train_steps' keyword arguments (its state arrays, updated there).
        ``step`` goes for every kind: it numbers the dropout masks too."""
        args = dict(lr=self.lr, weight_decay=self.weight_decay, step=self.step_count)
        if self.kind == "adam":
            return dict(args, optimizer="adam", m=self.state["m"], v=self.state["v"],
                        beta1=self.beta1, beta2=self.beta2, eps=self.eps)
        if self.kind == "momentum":
            return dict(args, optimizer="sgd", momentum=self.momentum, velocity=self.state["velocity"])
        return dict(args, optimizer="sgd")

    # state as NumPy, for checkpoints
    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"step_count": np.asarray(self.step_count, np.int64)}
        for key, arrays in self.state.items():
            for i, a in enumerate(arrays):
                out[f"{key}{i}"] = self.ks.to_numpy(a).copy()
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.step_count = int(state["step_count"])
        for key, arrays in self.state.items():
            for i, a in enumerate(arrays):
                _copy_in(self.ks, a, state[f"{key}{i}"])


def _copy_in(ks, native, values: np.ndarray) -> None:
    """Write NumPy ``values`` into the native array in place (optimizers hold references)."""
    if isinstance(native, np.ndarray):
        native[...] = values
    else:
        native.copy_(ks.asarray(np.ascontiguousarray(values)))


# ---------------------------------------------------------------------------- the network


class _Buffers:
    """Everything one step at batch size B writes: activations, their gradients, the batch."""

    def __init__(self, ks, sizes: list[int], batch: int, label_dtype, dropout: bool = False):
        def zeros(*shape, dtype=np.float32):
            return ks.asarray(np.zeros(shape, dtype=dtype))

        self.x = zeros(batch, sizes[0])                              # the gathered inputs
        self.y = zeros(batch, dtype=label_dtype)                     # the gathered labels
        self.acts = [zeros(batch, n) for n in sizes[1:]]             # outputs of each linear
        self.grad_acts = [zeros(batch, n) for n in sizes[1:]]        # d loss / d each output
        # grad_acts[-1] is d loss / d logits, written by softmax_cross_entropy
        # with dropout, each hidden layer's output after it (the next layer's input)
        self.dropped = [zeros(batch, n) for n in sizes[1:-1]] if dropout else None


class MLP:
    """A fully connected network with softmax-cross-entropy, computed by kernel set ``ks``.

    sizes [784, 128, 64, 10] means three linear layers, ``activation`` ("relu" or "tanh")
    after all but the last, then (in training only) inverted dropout of rate ``dropout``,
    its masks from ``seed`` and the step number (kernels/_layers.py).
    params: [w1, b1, ...] as NumPy float32 (from init_params); copied into the set.
    """

    def __init__(self, ks, sizes: list[int], params: list[np.ndarray], activation: str = "relu",
                 dropout: float = 0.0, seed: int = 0):
        self.ks = ks
        self.activation, self.dropout, self.seed = activation, float(dropout), int(seed)
        self.sizes = list(sizes)
        self.n_layers = len(sizes) - 1
        self.params = [ks.asarray(np.array(p, dtype=np.float32, copy=True)) for p in params]
        self.grads = [ks.asarray(np.zeros_like(p, dtype=np.float32)) for p in params]
        self._buffers: dict[int, _Buffers] = {}

    # weights and biases by layer
    def w(self, i):
        return self.params[2 * i]

    def b(self, i):
        return self.params[2 * i + 1]

    def buffers(self, batch: int) -> _Buffers:
        """The preallocated arrays for a batch of ``batch`` rows, made on first use."""
        if batch not in self._buffers:
            self._buffers[batch] = _Buffers(self.ks, self.sizes, batch, np.int64, self.dropout > 0)
        return self._buffers[batch]

    def hidden_args(self) -> dict:
        """The hidden layers as ks.train_steps' keyword arguments."""
        return dict(activation=self.activation, dropout=self.dropout, seed=self.seed)

    # ------------------------------------------------------------------ forward, backward

    def _input(self, x, buf: _Buffers, i: int, step):
        """Layer i's input: x, the layer below's output, or (training with dropout) that
        output after dropout."""
        if i == 0:
            return x
        return buf.dropped[i - 1] if step is not None and buf.dropped is not None else buf.acts[i - 1]

    def forward(self, x, buf: _Buffers, step: int | None = None):
        """x (B, sizes[0]) -> logits (B, sizes[-1]); every layer's output kept in buf.acts.
        ``step`` (the run's step number, from 1) in training: dropout's masks; None evaluates."""
        ks = self.ks
        for i in range(self.n_layers):
            # inp (B, in), w (in, out), b (out,) -> acts[i] (B, out); the activation on hidden layers
            hidden = i < self.n_layers - 1
            ks.linear(self._input(x, buf, i, step), self.w(i), self.b(i),
                      activation=self.activation if hidden else None, out=buf.acts[i])
            if hidden and step is not None and buf.dropped is not None:
                # dropped[i] = acts[i] * mask / (1 - p): the next layer's input
                ks.dropout(buf.acts[i], p=self.dropout, seed=self.seed, step=step, layer=i + 1, out=buf.dropped[i])
        return buf.acts[-1]

    def backward(self, x, buf: _Buffers, step: int | None = None) -> None:
        """Gradients of every parameter into self.grads, from buf.grad_acts[-1] (d loss / d logits)
        back through the layers in reverse; each step undoes one forward line."""
        ks = self.ks
        for i in reversed(range(self.n_layers)):
            # forward was: acts[i] = act?(inp @ w_i + b_i), inp = x, acts[i-1] or dropped[i-1]
            hidden = i < self.n_layers - 1
            grad_inp = buf.grad_acts[i - 1] if i > 0 else None   # the input's gradient is never needed
            ks.linear_backward(
                self._input(x, buf, i, step), self.w(i), buf.acts[i], buf.grad_acts[i],
                activation=self.activation if hidden else None, need_grad_x=i > 0,
                out=(grad_inp, self.grads[2 * i], self.grads[2 * i + 1]),
            )
            if i > 0 and buf.dropped is not None:
                # through dropout: the gradient at acts[i-1], the same mask recomputed
                ks.dropout_backward(grad_inp, p=self.dropout, seed=self.seed, step=step, layer=i, out=grad_inp)

    # ------------------------------------------------------------------ one step

    def train_step(self, buf: _Buffers, opt: Optimizer):
        """One step on the batch already gathered into buf.x, buf.y; returns the loss (0-d native).
        Its dropout masks are those of step opt.step_count + 1, as ks.train_steps numbers them."""
        ks = self.ks
        step = opt.step_count + 1
        logits = self.forward(buf.x, buf, step)
        # loss = mean_b -log softmax(logits)[b, y_b]; grad_acts[-1] = (softmax - onehot) / B
        loss, _ = ks.softmax_cross_entropy(logits, buf.y, out=buf.grad_acts[-1])
        self.backward(buf.x, buf, step)
        opt.step(self.grads)
        return loss

    # ------------------------------------------------------------------ evaluation

    def predict_logits(self, x_native, batch: int = 1000) -> np.ndarray:
        """Logits for every row of x (a native array), as NumPy float32, in batches."""
        n = int(x_native.shape[0])
        out = np.empty((n, self.sizes[-1]), np.float32)
        for start in range(0, n, batch):
            xb = x_native[start:start + batch]
            buf = self.buffers(int(xb.shape[0]))
            out[start:start + batch] = self.ks.to_numpy(self.forward(xb, buf))
        return out

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: self.ks.to_numpy(p).copy() for name, p in zip(param_names(self.n_layers), self.params)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for name, p in zip(param_names(self.n_layers), self.params):
            _copy_in(self.ks, p, state[name])


# ---------------------------------------------------------------------------- batches


class Batches:
    """A data set as the set's native arrays, and the gather of one batch into a buffer.

    The gather is the only non-kernel work in a training step: one fancy-index, into
    preallocated memory (np.take(..., out=) or torch.index_select(..., out=)).
    """

    def __init__(self, ks, x: np.ndarray, y: np.ndarray):
        self.ks = ks
        self.x = ks.asarray(np.ascontiguousarray(x, dtype=np.float32))
        self.y = ks.asarray(np.ascontiguousarray(y, dtype=np.int64))
        self.n = int(x.shape[0])
        self.is_numpy = isinstance(self.x, np.ndarray)

    def order(self, perm: np.ndarray):
        """An epoch's sample order (NumPy int64) in the form gather() takes (native indices)."""
        perm = np.ascontiguousarray(perm, dtype=np.int64)
        if perm.size and (perm.min() < 0 or perm.max() >= self.n):  # once an epoch; gather trusts it
            raise ValueError(f"sample order must index the {self.n} training samples, found "
                             f"{perm.min() if perm.min() < 0 else perm.max()}")
        if self.is_numpy:
            return perm
        import torch

        return torch.from_numpy(perm).to(self.x.device)

    def gather(self, idx, buf: _Buffers) -> None:
        """buf.x, buf.y = the rows ``idx`` (from order(): a permutation's slice, so in range)."""
        if self.is_numpy:
            # mode="clip": the default "raise" gathers into a temporary copy of out, an
            # allocation (and page faults) every step
            np.take(self.x, idx, axis=0, out=buf.x, mode="clip")
            np.take(self.y, idx, out=buf.y, mode="clip")
        else:
            import torch

            torch.index_select(self.x, 0, idx, out=buf.x)
            torch.index_select(self.y, 0, idx, out=buf.y)
