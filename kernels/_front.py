"""The one front every kernel set sits behind: checks, allocation, then the set's kernel.

Design (after scikit-learn's Cython losses and PyTorch's dispatcher):

* Every public op is defined once, here, with the interface's signature. It checks its
  arguments, allocates outputs, and only then calls the backend's kernel of the same name.
  Backends never see unchecked input, so compiled kernels can run with bounds checks off.
* Backends receive C-contiguous arrays of one float dtype and preallocated outputs that do not
  overlap the inputs. A Fortran-ordered matmul operand is passed as its (C-contiguous)
  transpose with the trans flag flipped, so transposes cost no copy; any other strided input
  is copied once to contiguous memory.
* Outputs the caller passes (``out=``) are written and returned. When such an ``out`` is not
  contiguous, or overlaps an input in a way the kernel cannot handle, the kernel writes a
  scratch array that is then copied into ``out``.

The backend protocol (every argument already checked; arrays C-contiguous)::

    matmul(a, b, out, trans_a, trans_b)                           # out = op(a) @ op(b)
    relu(x, out)
    relu_backward(grad_y, y, out)
    tanh(x, out)
    tanh_backward(grad_y, y, out)                                  # out = grad_y * (1 - y^2)
    dropout(x, out, key, threshold, scale)                         # x, out (rows, units); see
        # kernels/_layers.py: out = x * scale where the hash of (key, unit) >= threshold, else 0
    softmax_cross_entropy(logits, labels_int64, grad) -> loss     # float or 0-d native array;
        # with CHECKS_LABELS = True the front leaves the label range to the kernel, which
        # returns a negative loss (a real one never is) if any label is outside [0, classes)
    linear(x, w, b, out, act)                                      # act: kernels._layers'
    linear_backward(x, w, y, grad_y, grad_x_or_None, grad_w, grad_b, act)   # ACT_NONE, ACT_RELU
        # or ACT_TANH (ints; True and False still mean ReLU and none)
    sgd_step(param, grad, velocity_or_None, lr, momentum, weight_decay)
    adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)
    train_steps(params, x, labels_int64, order_int64, batch, losses, opt, hidden)  # optional:
        # fused; without it the set runs kernels/_steps.py's per_op, which composes the ops
        # above (hidden: kernels._steps.Hidden, the hidden layers' activation and dropout)
    set_threads(n)
    isa() -> str                                                   # optional: the instruction-set
        # path the set runs (kernels._isa: avx512, avx2, neon, generic; numpy: its BLAS kernel)
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _layers
from ._arrays import FLOAT_DTYPES
from ._steps import Hidden

# The thread count last applied to each backend's threading runtime (Numba's, OpenMP's,
# torch's, BLAS's). Each set applies its own count before an op when it differs, so two sets
# made with different ``threads=`` in one process each run with their own.
_applied_threads: dict[str, int] = {}


def _shape(x) -> tuple:
    return tuple(x.shape)  # torch.Size is a tuple already; this keeps messages uniform


def _dims(dims) -> str:
    return "(" + ", ".join(dims) + ")"


class KernelSet:
    """A kernel set: the interface's ops, checked here, computed by ``backend``."""

    def __init__(self, name: str, backend, arrays, device: str, threads: int):
        self.name = name
        self.device = device
        self.threads = threads
        self._backend = backend
        self._arrays = arrays
        self._threads_key = getattr(backend, "THREADS_KEY", name)
        self._checks_labels = getattr(backend, "CHECKS_LABELS", False)

    @property
    def isa(self) -> str | None:
        """The instruction-set path this set runs here (``kernels._isa``: avx512, avx2, neon or
        generic; the numpy set names its BLAS's kernel), or None where that is not the set's
        to choose (torch)."""
        isa = getattr(self._backend, "isa", None)
        return isa() if isa else None

    def __repr__(self) -> str:
        isa = f" isa={self.isa!r}" if self.isa else ""
        return f"<kernel set {self.name!r} device={self.device!r} threads={self.threads}{isa}>"

    # ------------------------------------------------------------------ conversion

    def asarray(self, a):
        """A NumPy array (or anything np.asarray takes) as this set's native array."""
        return self._arrays.asarray(a)

    def to_numpy(self, x) -> np.ndarray:
        """A native array of this set as a numpy.ndarray."""
        if not self._arrays.is_native(x):
            raise TypeError(f"to_numpy: expected a {self._arrays.type_name}, got {type(x).__name__}")
        return self._arrays.to_numpy(x)

    # ------------------------------------------------------------------ the ops

    def matmul(self, a, b, *, trans_a=False, trans_b=False, out=None):
        """op(a) @ op(b), where op transposes its argument when trans_a / trans_b is set."""
        op = "matmul"
        trans_a = self._flag(op, "trans_a", trans_a)
        trans_b = self._flag(op, "trans_b", trans_b)
        dims_a = ("k", "m") if trans_a else ("m", "k")
        dims_b = ("n", "k") if trans_b else ("k", "n")
        dtype, size = self._check(op, [("a", a, dims_a, f"trans_a={trans_a}"), ("b", b, dims_b, f"trans_b={trans_b}")])
        shape = (size["m"], size["n"])
        target = self._out(op, "out", out, shape, dtype, inputs=(a, b))
        self._sync_threads()
        a, trans_a = self._operand(a, trans_a)
        b, trans_b = self._operand(b, trans_b)
        self._backend.matmul(a, b, target, trans_a, trans_b)
        return self._finish(out, target)

    def relu(self, x, *, out=None):
        """max(x, 0), elementwise."""
        return self._unary("relu", x, out)

    def relu_backward(self, grad_y, y, *, out=None):
        """grad_y * (y > 0): the gradient through a ReLU whose output was y."""
        return self._unary_backward("relu_backward", grad_y, y, out)

    def tanh(self, x, *, out=None):
        """tanh(x), elementwise."""
        return self._unary("tanh", x, out)

    def tanh_backward(self, grad_y, y, *, out=None):
        """grad_y * (1 - y^2): the gradient through a tanh whose output was y."""
        return self._unary_backward("tanh_backward", grad_y, y, out)

    def _unary(self, op, x, out):
        """An activation op: x of any shape -> the backend's op of that name, elementwise."""
        dtype = self._float(op, "x", x, (), any_ndim=True)
        target = self._out(op, "out", out, _shape(x), dtype, inputs=(x,), elementwise=True)
        self._sync_threads()
        getattr(self._backend, op)(self._c(x), target)
        return self._finish(out, target)

    def _unary_backward(self, op, grad_y, y, out):
        """An activation's backward op: grad_y and y (its output) of one shape -> the backend's."""
        self._float(op, "grad_y", grad_y, (), any_ndim=True)
        self._float(op, "y", y, (), any_ndim=True)
        dtype = self._same_dtype(op, grad_y=grad_y, y=y)
        if _shape(grad_y) != _shape(y):
            raise ValueError(
                f"{op}: grad_y has shape {_shape(grad_y)} but y has shape {_shape(y)}; they must match"
            )
        target = self._out(op, "out", out, _shape(y), dtype, inputs=(grad_y, y), elementwise=True)
        self._sync_threads()
        getattr(self._backend, op)(self._c(grad_y), self._c(y), target)
        return self._finish(out, target)

    def dropout(self, x, *, p, seed, step, layer=0, out=None):
        """Inverted dropout of a batch of activations x (rows, units): each unit kept with
        probability 1 - p and scaled by 1 / (1 - p), the rest zero. The mask is a hash of
        (seed, step, layer, row, unit) (kernels/_layers.py), the same in every set; the
        backward pass is dropout_backward with the same four numbers."""
        return self._dropout("dropout", "x", x, p, seed, step, layer, out)

    def dropout_backward(self, grad_y, *, p, seed, step, layer=0, out=None):
        """The gradient through dropout(x, p=p, seed=seed, step=step, layer=layer): grad_y
        masked and scaled as x was (the mask recomputed, not stored)."""
        return self._dropout("dropout_backward", "grad_y", grad_y, p, seed, step, layer, out)

    def _dropout(self, op, name, x, p, seed, step, layer, out):
        dtype = self._float(op, name, x, ("rows", "units"))
        p = self._rate(op, p)
        key = _layers.mask_key(self._count(op, "seed", seed, 64), self._count(op, "step", step, 63),
                               self._count(op, "layer", layer, 32))
        target = self._out(op, "out", out, _shape(x), dtype, inputs=(x,), elementwise=True)
        self._sync_threads()
        self._backend.dropout(self._c(x), target, key, _layers.threshold(p), _layers.scale(p))
        return self._finish(out, target)

    def softmax_cross_entropy(self, logits, labels, *, out=None):
        """(mean cross-entropy loss as a 0-d array, its gradient with respect to logits).

        grad = (softmax(logits) - onehot(labels)) / batch. ``out``, if given, receives grad.
        """
        op = "softmax_cross_entropy"
        dtype = self._float(op, "logits", logits, ("batch", "classes"))
        batch, classes = _shape(logits)
        # A backend whose kernel checks each label as it reads it spares the front a pass
        labels = self._labels(op, labels, batch, classes, check_range=not self._checks_labels)
        target = self._out(op, "out", out, (batch, classes), dtype, inputs=(logits,))
        self._sync_threads()
        loss = self._backend.softmax_cross_entropy(self._c(logits), labels, target)
        if self._checks_labels and loss < 0:  # its signal for a label outside [0, classes)
            self._labels(op, labels, batch, classes)   # raises the error that names the label
            raise RuntimeError(f"{op}: the kernel reported a label out of range, but none is")
        return self._arrays.scalar(loss, dtype), self._finish(out, target)

    def linear(self, x, w, b, *, activation=None, relu=False, out=None):
        """act(x @ w + b), the activation in the same pass: ``activation`` None (identity),
        "relu" or "tanh"; relu=True is activation="relu"."""
        op = "linear"
        act = self._activation(op, activation, relu)
        dtype, size = self._check(op, [("x", x, ("batch", "in")), ("w", w, ("in", "out")), ("b", b, ("out",))])
        target = self._out(op, "out", out, (size["batch"], size["out"]), dtype, inputs=(x, w, b))
        self._sync_threads()
        self._backend.linear(self._c(x), self._c(w), self._c(b), target, act)
        return self._finish(out, target)

    def linear_backward(self, x, w, y, grad_y, *, activation=None, relu=False, need_grad_x=True, out=None):
        """Gradients of linear(x, w, b, activation=activation) = y: (grad_x or None, grad_w,
        grad_b); the activation's derivative is taken from its output y.

        ``out``, if given, is a tuple (grad_x or None, grad_w, grad_b) of arrays to write.
        """
        op = "linear_backward"
        act = self._activation(op, activation, relu)
        need_grad_x = self._flag(op, "need_grad_x", need_grad_x)
        dtype, size = self._check(op, [
            ("x", x, ("batch", "in")),
            ("w", w, ("in", "out")),
            ("y", y, ("batch", "out")),
            ("grad_y", grad_y, ("batch", "out")),
        ])
        if out is None:
            out = (None, None, None)
        elif not isinstance(out, (tuple, list)) or len(out) != 3:
            raise TypeError(f"{op}: out must be a tuple (grad_x or None, grad_w, grad_b), got {type(out).__name__}")
        inputs = (x, w, y, grad_y)
        gx = None
        if need_grad_x:
            gx = self._out(op, "out[0] (grad_x)", out[0], (size["batch"], size["in"]), dtype, inputs=inputs)
        elif out[0] is not None:
            raise ValueError(f"{op}: out[0] (grad_x) must be None when need_grad_x=False")
        gw = self._out(op, "out[1] (grad_w)", out[1], (size["in"], size["out"]), dtype, inputs=inputs)
        gb = self._out(op, "out[2] (grad_b)", out[2], (size["out"],), dtype, inputs=inputs)
        self._sync_threads()
        self._backend.linear_backward(
            self._c(x), self._c(w), self._c(y), self._c(grad_y), gx, gw, gb, act
        )
        return (
            self._finish(out[0], gx) if need_grad_x else None,
            self._finish(out[1], gw),
            self._finish(out[2], gb),
        )

    def sgd_step(self, param, grad, *, lr, momentum=0.0, velocity=None, weight_decay=0.0):
        """One step of torch.optim.SGD (dampening 0, no Nesterov), in place on param and velocity."""
        op = "sgd_step"
        lr = self._hyper(op, "lr", lr)
        momentum = self._hyper(op, "momentum", momentum)
        weight_decay = self._hyper(op, "weight_decay", weight_decay)
        if momentum != 0.0 and velocity is None:
            raise ValueError(f"{op}: momentum={momentum} needs a velocity array (zeros, same shape as param)")
        arrays = [("param", param, True), ("grad", grad, False)]
        if velocity is not None:  # checked even when momentum is 0, where a plain step leaves it be
            arrays.append(("velocity", velocity, True))
        targets = self._optimizer_arrays(op, arrays)
        self._sync_threads()
        self._backend.sgd_step(
            targets[0], targets[1], targets[2] if momentum != 0.0 else None, lr, momentum, weight_decay
        )
        self._write_back(arrays, targets)

    def adam_step(self, param, grad, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        """One step of torch.optim.Adam (L2 weight decay, not AdamW), in place on param, m and v.

        step counts from 1; it sets the bias corrections 1 - beta**step.
        """
        op = "adam_step"
        if type(step) is not int and (isinstance(step, bool) or not isinstance(step, numbers.Integral)):
            raise TypeError(f"{op}: step must be an integer (the step number, counting from 1), got {step!r}")
        if step < 1:
            raise ValueError(f"{op}: step must be at least 1 (steps count from 1), got {step}")
        lr = self._hyper(op, "lr", lr)
        eps = self._hyper(op, "eps", eps)
        weight_decay = self._hyper(op, "weight_decay", weight_decay)
        beta1 = self._hyper(op, "beta1", beta1, below_one=True)
        beta2 = self._hyper(op, "beta2", beta2, below_one=True)
        arrays = [("param", param, True), ("grad", grad, False), ("m", m, True), ("v", v, True)]
        targets = self._optimizer_arrays(op, arrays)
        self._sync_threads()
        p, g, m_, v_ = targets
        self._backend.adam_step(p, g, m_, v_, int(step), lr, beta1, beta2, eps, weight_decay)
        self._write_back(arrays, targets)

    def train_steps(self, params, x, labels, order, *, batch, lr, optimizer="sgd", momentum=0.0,
                    velocity=None, m=None, v=None, step=0, beta1=0.9, beta2=0.999, eps=1e-8,
                    weight_decay=0.0, activation="relu", dropout=0.0, seed=0, out=None):
        """Train an MLP on x[order] in batches of ``batch`` rows, in one call; the losses.

        params is [w1, b1, ..., wL, bL] (w_i (n_{i-1}, n_i), b_i (n_i,)), updated in place, as
        are the optimizer's state arrays: ``velocity`` (a list aligned with params) for SGD
        with momentum; ``m`` and ``v`` for Adam, whose ``step`` counts the steps taken before
        this call (it numbers the dropout masks too, so pass it for SGD as well). Hidden layers
        use ``activation`` ("relu" or "tanh") and, when ``dropout`` > 0, inverted dropout of
        that rate with masks from ``seed`` (kernels/_layers.py). Each step is exactly the
        per-op one (linear with the activation on hidden layers, dropout, softmax_cross_entropy,
        linear_backward, dropout_backward, then sgd_step or adam_step on w1, b1, w2, ...; see
        kernels/_steps.py); a set with a fused version runs it without leaving compiled code. Returns (or writes into ``out``) the loss of every step, before its update:
        ceil(len(order) / batch) values; the last batch may be partial.
        """
        op = "train_steps"
        A = self._arrays
        if not isinstance(params, (list, tuple)) or len(params) < 2 or len(params) % 2:
            raise TypeError(
                f"{op}: params must be a list [w1, b1, ..., wL, bL] of weights and biases, "
                f"got {type(params).__name__}" + (f" of length {len(params)}" if isinstance(params, (list, tuple)) else "")
            )
        n_layers = len(params) // 2
        specs = [("x", x, ("samples", "n0"))]
        for i in range(n_layers):
            specs.append((f"w{i + 1}", params[2 * i], (f"n{i}", f"n{i + 1}")))
            specs.append((f"b{i + 1}", params[2 * i + 1], (f"n{i + 1}",)))
        dtype, size = self._check(op, specs)
        samples, classes = size["samples"], size[f"n{n_layers}"]
        labels = self._labels(op, labels, samples, classes)
        order = self._indices(op, order, samples)
        if type(batch) is not int and (isinstance(batch, bool) or not isinstance(batch, numbers.Integral)):
            raise TypeError(f"{op}: batch must be an integer (rows per step), got {batch!r}")
        if batch < 1:
            raise ValueError(f"{op}: batch must be at least 1, got {batch}")
        if type(step) is not int and (isinstance(step, bool) or not isinstance(step, numbers.Integral)):
            raise TypeError(f"{op}: step must be an integer (the steps taken before this call), got {step!r}")
        if step < 0:
            raise ValueError(f"{op}: step must be at least 0 (the steps taken before this call), got {step}")
        if activation not in _layers.ACTIVATION_NAMES:
            raise ValueError(f"{op}: activation must be one of {', '.join(map(repr, _layers.ACTIVATION_NAMES))} "
                             f"(that of every hidden layer), got {activation!r}")
        rate = self._rate(op, dropout, name="dropout")
        hidden = Hidden(act=_layers.ACTIVATIONS[activation], p=rate, seed=self._count(op, "seed", seed, 64),
                        threshold=_layers.threshold(rate), scale=_layers.scale(rate))
        hyper = dict(lr=self._hyper(op, "lr", lr), weight_decay=self._hyper(op, "weight_decay", weight_decay))
        names = [spec[0] for spec in specs[1:]]
        in_place = list(zip(names, params))
        if optimizer == "sgd":
            hyper["momentum"] = self._hyper(op, "momentum", momentum)
            if m is not None or v is not None:
                raise ValueError(f"{op}: m and v are Adam's state; optimizer='sgd' takes velocity= only")
            if hyper["momentum"] != 0.0 and velocity is None:
                raise ValueError(f"{op}: momentum={momentum} needs velocity= (a list of zeros shaped like params)")
            state = None
            if hyper["momentum"] != 0.0:
                state = self._state_list(op, "velocity", velocity, params)
                in_place += [(f"velocity[{j}]", a) for j, a in enumerate(state)]
        elif optimizer == "adam":
            hyper.update(beta1=self._hyper(op, "beta1", beta1, below_one=True),
                         beta2=self._hyper(op, "beta2", beta2, below_one=True), eps=self._hyper(op, "eps", eps))
            if velocity is not None:
                raise ValueError(f"{op}: velocity is SGD's state; optimizer='adam' takes m= and v=")
            if m is None or v is None:
                raise ValueError(f"{op}: optimizer='adam' needs m= and v= (lists of zeros shaped like params)")
            state = (self._state_list(op, "m", m, params), self._state_list(op, "v", v, params))
            in_place += [(f"m[{j}]", a) for j, a in enumerate(state[0])]
            in_place += [(f"v[{j}]", a) for j, a in enumerate(state[1])]
        else:
            raise ValueError(f"{op}: optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        for j, (name, a) in enumerate(in_place):
            if not A.is_c_contiguous(a):
                raise ValueError(f"{op}: {name} is updated in place and must be C-contiguous (np.ascontiguousarray)")
            if not A.writeable(a):
                raise ValueError(f"{op}: {name} is updated in place and must be writeable")
            for other_name, other in in_place[:j]:
                if A.overlaps(a, other):
                    raise ValueError(f"{op}: {other_name} and {name} share memory; each must be its own array")
        from ._steps import Optimizer, n_steps, per_op

        losses = self._out(op, "out", out, (n_steps(int(order.shape[0]), batch),), dtype)
        opt = Optimizer(kind=optimizer, step=int(step), state=state, **hyper)
        self._sync_threads()
        fused = getattr(self._backend, "train_steps", None)
        if fused is not None:
            fused(list(params), self._c(x), labels, order, int(batch), losses, opt, hidden)
        else:
            per_op(self._backend, A, list(params), self._c(x), labels, order, int(batch), losses, opt, hidden)
        return self._finish(out, losses)

    # ------------------------------------------------------------------ checks

    def _float(self, op, name, x, dims, any_ndim=False):
        """x is a native float32/float64 array on this set's device, of len(dims) dims, none
        empty; its dtype."""
        A = self._arrays
        dtype = A.float_dtype(x)
        if dtype is not None and (any_ndim or x.ndim == len(dims)) and x.ndim and 0 not in x.shape:
            return dtype  # the common case, in one call; what follows says what is wrong
        if not A.is_native(x):
            raise TypeError(
                f"{op}: {name} must be a {A.type_name} (convert with ks.asarray), got {type(x).__name__}"
            )
        if not any_ndim and x.ndim != len(dims):
            raise ValueError(
                f"{op}: {name} must be {len(dims)}-D {_dims(dims)}, "
                f"got a {x.ndim}-D array of shape {_shape(x)}"
            )
        dtype = A.dtype(x)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be float32 or float64, got {dtype}")
        if not A.on_device(x):
            raise ValueError(f"{op}: {name} is on {x.device} but this set computes on {A.device}")
        if x.ndim == 0 or 0 in x.shape:
            what = "an empty batch" if x.ndim and _shape(x)[0] == 0 else "empty"
            raise ValueError(
                f"{op}: {name} is {what} (shape {_shape(x)}); every dimension must be at least 1"
            )
        return dtype

    def _check(self, op, specs):
        """Check each (name, array, dims[, note]) of ``specs`` as _float does; all must share
        one dtype, and a dim named twice must have one size. (dtype, {dim: size}).

        One loop for all of an op's arrays: this runs before every kernel call, thousands
        of times an epoch at small batches, so it does each check once."""
        dtype, first, size = None, None, {}
        for spec in specs:
            name, x, dims = spec[0], spec[1], spec[2]
            d = self._float(op, name, x, dims)
            if dtype is None:
                dtype, first = d, name
            elif d != dtype:
                raise TypeError(
                    f"{op}: {first} is {dtype} but {name} is {d}; "
                    "all arrays of one call must share one dtype (float32 or float64)"
                )
            for dim, n in zip(dims, x.shape):
                if size.setdefault(dim, n) != n:
                    self._mismatch(op, specs, dim)
        return dtype, size

    def _same_dtype(self, op, **arrays):
        """The one dtype that all of an op's float arrays share."""
        dtypes = {name: self._arrays.dtype(x) for name, x in arrays.items()}
        first_name, first = next(iter(dtypes.items()))
        for name, dtype in dtypes.items():
            if dtype != first:
                raise TypeError(
                    f"{op}: {first_name} is {first} but {name} is {dtype}; "
                    "all arrays of one call must share one dtype (float32 or float64)"
                )
        return first

    @staticmethod
    def _mismatch(op, specs, dim):
        """Raise the error for two arrays that disagree on ``dim`` (the slow path of _check)."""
        found = []
        for spec in specs:
            name, x, dims = spec[:3]
            note = f", {spec[3]}" if len(spec) > 3 else ""
            if dim in dims:
                found.append((name, dims, x.shape[dims.index(dim)], _shape(x), note))
        (name0, _, n0, shape0, note0), (name1, dims1, n1, shape1, note1) = next(
            (found[0], other) for other in found[1:] if other[2] != found[0][2]
        )
        raise ValueError(
            f"{op}: shapes do not match: {name1} {_dims(dims1)} has {dim}={n1} "
            f"(shape {shape1}{note1}) but {name0} has {dim}={n0} (shape {shape0}{note0})"
        )

    def _labels(self, op, labels, batch, classes, check_range=True):
        A = self._arrays
        checked = A.int_vector(labels, batch)
        if checked is not None and (not check_range or A.in_range(checked, classes)):
            return checked  # the common case, in one call; what follows says what is wrong
        if not A.is_native(labels):
            raise TypeError(
                f"{op}: labels must be a {A.type_name} of integers (convert with ks.asarray), "
                f"got {type(labels).__name__}"
            )
        if not A.is_integer(labels):
            raise TypeError(f"{op}: labels must have an integer dtype (class indices), got {A.dtype(labels)}")
        if not A.on_device(labels):
            raise ValueError(f"{op}: labels are on {labels.device} but this set computes on {A.device}")
        if labels.ndim != 1 or _shape(labels)[0] != batch:
            raise ValueError(
                f"{op}: labels must hold one class index per row of logits, shape ({batch},), "
                f"got shape {_shape(labels)}"
            )
        labels = A.labels(labels)
        if check_range and not A.in_range(labels, classes):
            lo, hi = A.min_max(labels)
            raise ValueError(
                f"{op}: labels must lie in [0, {classes}) for logits with {classes} classes, "
                f"found {lo if lo < 0 else hi}"
            )
        return labels

    def _indices(self, op, order, samples):
        """``order``: a non-empty 1-D native integer array of row indices in [0, samples)."""
        A = self._arrays
        if not A.is_native(order) or not A.is_integer(order):
            what = A.dtype(order) if A.is_native(order) else type(order).__name__
            raise TypeError(f"{op}: order must be a {A.type_name} of integer row indices, got {what}")
        if not A.on_device(order):
            raise ValueError(f"{op}: order is on {order.device} but this set computes on {A.device}")
        if order.ndim != 1 or _shape(order)[0] == 0:
            raise ValueError(f"{op}: order must be a non-empty 1-D array of row indices, got shape {_shape(order)}")
        order = A.labels(order)
        if not A.in_range(order, samples):
            lo, hi = A.min_max(order)
            raise ValueError(f"{op}: order must index rows of x, in [0, {samples}), found {lo if lo < 0 else hi}")
        return order

    def _state_list(self, op, name, arrays, params):
        """An optimizer state list: one array per parameter, of its shape and dtype."""
        if not isinstance(arrays, (list, tuple)) or len(arrays) != len(params):
            raise TypeError(f"{op}: {name} must be a list of {len(params)} arrays, one per parameter")
        dtype = self._arrays.dtype(params[0])
        for j, (a, p) in enumerate(zip(arrays, params)):
            got = self._float(op, f"{name}[{j}]", a, (), any_ndim=True)
            if got != dtype:
                raise TypeError(f"{op}: {name}[{j}] is {got} but the parameters are {dtype}")
            if _shape(a) != _shape(p):
                raise ValueError(f"{op}: {name}[{j}] has shape {_shape(a)} but its parameter has shape {_shape(p)}")
        return list(arrays)

    def _out(self, op, name, out, shape, dtype, inputs=(), elementwise=False):
        """The array a kernel writes: ``out`` itself when it can be, else a scratch array."""
        A = self._arrays
        if out is None:
            return A.empty(shape, dtype)
        if not A.ready_out(out, shape, dtype):
            self._out_error(op, name, out, shape, dtype)
            return A.empty(shape, dtype)  # usable, but not C-contiguous: a scratch array
        for x in inputs:
            # An elementwise kernel may write over the very input it reads; any other overlap
            # (a matmul reading what it writes, or a shifted view) needs a scratch array.
            if A.overlaps(out, x) and not (elementwise and out is x):
                return A.empty(shape, dtype)
        return out

    def _out_error(self, op, name, out, shape, dtype):
        """Raise the error that says why ``out`` cannot be written (the slow path of _out);
        return only when it can be, but not in place."""
        A = self._arrays
        if not A.is_native(out):
            raise TypeError(f"{op}: {name} must be a {A.type_name}, got {type(out).__name__}")
        if A.dtype(out) != dtype:
            raise TypeError(f"{op}: {name} must have dtype {dtype} (that of the inputs), got {A.dtype(out)}")
        if _shape(out) != tuple(shape):
            raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {_shape(out)}")
        if not A.on_device(out):
            raise ValueError(f"{op}: {name} is on {out.device} but this set computes on {A.device}")
        if not A.writeable(out):
            raise ValueError(f"{op}: {name} is read-only")

    def _finish(self, out, target):
        """Copy a scratch result into ``out``; return what the caller gets back."""
        if out is None:
            return target
        if target is not out:
            self._arrays.copy_into(out, target)
        return out

    def _optimizer_arrays(self, op, arrays):
        """Check an optimizer's arrays, [(name, array, updated in place)] with param first:
        one float dtype, param's shape, in-place ones writeable and not sharing memory.
        The arrays the kernel gets, in order: contiguous (a strided one as a copy that
        _write_back copies back)."""
        A = self._arrays
        if A.ready_together(arrays):    # the common case in one pass; what follows says what is wrong
            return [x for _, x, _ in arrays]
        param_dtype = self._float(op, "param", arrays[0][1], (), any_ndim=True)
        shape = arrays[0][1].shape
        targets = []
        for i, (name, x, in_place) in enumerate(arrays):
            dtype = self._float(op, name, x, (), any_ndim=True) if i else param_dtype
            if dtype != param_dtype:
                raise TypeError(
                    f"{op}: param is {param_dtype} but {name} is {dtype}; "
                    "all arrays of one call must share one dtype (float32 or float64)"
                )
            if x.shape != shape:
                raise ValueError(f"{op}: {name} has shape {_shape(x)} but param has shape {_shape(arrays[0][1])}; they must match")
            if in_place:
                if not A.writeable(x):
                    raise ValueError(f"{op}: {name} is updated in place and must be writeable")
                for other_name, other, other_in_place in arrays[:i]:
                    if other_in_place and A.overlaps(x, other):
                        raise ValueError(f"{op}: {other_name} and {name} share memory; each must be its own array")
            targets.append(x if A.is_c_contiguous(x) else A.contiguous(x))
        return targets

    def _write_back(self, arrays, targets):
        """Copy results computed in contiguous copies back into the caller's strided arrays."""
        for (_, x, in_place), target in zip(arrays, targets):
            if in_place and target is not x:
                self._arrays.copy_into(x, target)

    @staticmethod
    def _activation(op, activation, relu):
        """The backend's activation code from ``activation`` and the older ``relu`` flag."""
        relu = KernelSet._flag(op, "relu", relu)
        if activation is None:
            return _layers.ACT_RELU if relu else _layers.ACT_NONE
        if not isinstance(activation, str) or activation not in _layers.ACTIVATIONS:
            raise ValueError(f"{op}: activation must be None, 'relu' or 'tanh', got {activation!r}")
        if relu and activation != "relu":
            raise ValueError(f"{op}: relu=True and activation={activation!r} disagree; pass activation alone")
        return _layers.ACTIVATIONS[activation]

    @staticmethod
    def _rate(op, p, name="p"):
        """A dropout rate: a real number in [0, 1), as a Python float."""
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"{op}: {name} must be a real number (the dropout rate), got {p!r}")
        p = float(p)
        if not 0.0 <= p < 1.0:  # NaN fails too
            raise ValueError(f"{op}: {name} must be a dropout rate in [0, 1), got {p}")
        return p

    @staticmethod
    def _count(op, name, value, bits):
        """A non-negative integer below 2**bits (a seed, a step number, a layer index)."""
        if type(value) is not int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise TypeError(f"{op}: {name} must be an integer, got {value!r}")
        value = int(value)
        if not 0 <= value < 2**bits:
            raise ValueError(f"{op}: {name} must be in [0, 2**{bits}), got {value}")
        return value

    @staticmethod
    def _flag(op, name, value):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{op}: {name} must be True or False, got {value!r}")
        return bool(value)

    @staticmethod
    def _hyper(op, name, value, below_one=False):
        """A finite, non-negative hyperparameter as a Python float (below 1 for Adam's betas)."""
        if type(value) is not float:  # the common case skips the slower ABC check
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{op}: {name} must be a real number, got {value!r}")
            value = float(value)
        if not 0.0 <= value < (1.0 if below_one else math.inf):  # NaN fails every comparison
            expected = "in [0, 1)" if below_one else "finite and >= 0"
            raise ValueError(f"{op}: {name} must be {expected}, got {value}")
        return value

    # ------------------------------------------------------------------ plumbing

    def _c(self, x):
        A = self._arrays
        return x if A.is_c_contiguous(x) else A.contiguous(x)

    def _operand(self, x, trans):
        """A matmul operand as C-contiguous memory: F order becomes a transpose, not a copy."""
        A = self._arrays
        if A.is_c_contiguous(x):
            return x, trans
        if A.is_f_contiguous(x):
            return x.T, not trans
        return A.contiguous(x), trans

    def _sync_threads(self):
        if _applied_threads.get(self._threads_key) != self.threads:
            self._backend.set_threads(self.threads)
            _applied_threads[self._threads_key] = self.threads
