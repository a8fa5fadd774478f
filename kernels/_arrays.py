"""What the dispatch layer needs to know about a kernel set's native arrays.

Two kinds exist: NumPy arrays (the numpy, numba and cython sets) and torch tensors (the torch
set). The checks in ``_front`` are written once against this small interface, so every set is
checked by the same code.
"""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class NumpyArrays:
    """numpy.ndarray as the native array of a set."""

    type_name = "numpy.ndarray"

    def __init__(self, device: str = "cpu"):
        self.device = device

    def is_native(self, x) -> bool:
        return isinstance(x, np.ndarray)

    # The fast paths of the front's checks: one call that says "all is well" for the common
    # case; when it does not, the front runs its checks one by one to say what is wrong.

    def float_dtype(self, x):
        """x's dtype when x is a float32 or float64 ndarray, else None."""
        if isinstance(x, np.ndarray):
            dtype = x.dtype
            if dtype in FLOAT_DTYPES:
                return dtype
        return None

    def ready_out(self, out, shape, dtype) -> bool:
        """out is an ndarray of this shape and dtype, C-contiguous and writeable."""
        if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype:
            return False
        flags = out.flags
        return flags.c_contiguous and flags.writeable

    def ready_together(self, arrays) -> bool:
        """An optimizer's arrays, [(name, x, updated in place)], are ndarrays of one float
        dtype and one non-empty shape, C-contiguous, and the in-place ones writeable, each a
        distinct array owning its memory (so that none shares it with another): what the front
        checks one by one, in one pass. An Adam step over a bias is a microsecond of work, and
        the checks one by one took 2 us of it."""
        first = arrays[0][1]
        if type(first) is not np.ndarray:
            return False
        dtype, shape = first.dtype, first.shape
        if dtype not in FLOAT_DTYPES or not shape or 0 in shape:
            return False
        in_place = []
        for _, x, updated in arrays:
            if type(x) is not np.ndarray or x.shape != shape or (x.dtype is not dtype and x.dtype != dtype):
                return False
            flags = x.flags
            if not flags.c_contiguous:
                return False
            if updated:
                if not (flags.writeable and flags.owndata):
                    return False
                for y in in_place:      # (a loop: a generator's set-up cost more than the test)
                    if x is y:
                        return False
                in_place.append(x)
        return True

    def int_vector(self, x, n):
        """x as a contiguous int64 array when x is an integer ndarray of shape (n,), else None."""
        if isinstance(x, np.ndarray) and x.shape == (n,) and x.dtype.kind in "iu":
            return np.ascontiguousarray(x, dtype=np.int64)
        return None

    def dtype(self, x) -> np.dtype:
        return x.dtype

    def is_integer(self, x) -> bool:
        return x.dtype.kind in "iu"

    def on_device(self, x) -> bool:
        return True

    def asarray(self, a):
        return np.asarray(a)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def scalar(self, value, dtype):
        return np.asarray(value, dtype=dtype)

    def is_c_contiguous(self, x) -> bool:
        return x.flags.c_contiguous

    def is_f_contiguous(self, x) -> bool:
        return x.flags.f_contiguous

    def writeable(self, x) -> bool:
        return x.flags.writeable

    def contiguous(self, x):
        return np.ascontiguousarray(x)

    def labels(self, x):
        """Labels as a contiguous int64 array (no copy when they already are)."""
        return np.ascontiguousarray(x, dtype=np.int64)

    def in_range(self, labels, classes) -> bool:
        """All int64 ``labels`` in [0, classes): one pass, since a negative int64 read as
        uint64 is larger than any class count."""
        return int(labels.view(np.uint64).max()) < classes

    def min_max(self, x):
        return int(x.min()), int(x.max())

    def overlaps(self, a, b) -> bool:
        # Two distinct arrays that each own their memory cannot share it: two flag reads,
        # cheaper than asking np.may_share_memory (this runs on every op with out=).
        if a is not b and a.flags.owndata and b.flags.owndata:
            return False
        return np.may_share_memory(a, b)

    def copy_into(self, dst, src):
        dst[...] = src

    def take_rows(self, x, idx, out):
        """out[...] = x[idx] along the first axis, into preallocated ``out``. The indices are
        checked already: mode="clip" skips NumPy's own check, which under the default
        mode="raise" writes into a temporary copy of ``out`` (a page-faulting allocation a
        step) so that a bad index leaves ``out`` untouched."""
        np.take(x, idx, axis=0, out=out, mode="clip")


class TorchArrays:
    """torch.Tensor as the native array of a set, on one device."""

    type_name = "torch.Tensor"

    def __init__(self, device: str = "cpu"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self._to_numpy_dtype = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
        self._to_torch_dtype = {v: k for k, v in self._to_numpy_dtype.items()}
        self._to_torch_dtype[np.dtype(np.int64)] = torch.int64  # labels and indices
        self._int_dtypes = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}

    def is_native(self, x) -> bool:
        return isinstance(x, self.torch.Tensor)

    def float_dtype(self, x):
        if isinstance(x, self.torch.Tensor) and self.on_device(x):
            return self._to_numpy_dtype.get(x.dtype)
        return None

    def ready_out(self, out, shape, dtype) -> bool:
        return (isinstance(out, self.torch.Tensor) and tuple(out.shape) == shape
                and self._to_numpy_dtype.get(out.dtype) == dtype and self.on_device(out)
                and self.writeable(out) and out.is_contiguous())

    def ready_together(self, arrays) -> bool:
        return False    # tensors take the front's checks one by one

    def int_vector(self, x, n):
        if (isinstance(x, self.torch.Tensor) and x.dtype in self._int_dtypes and tuple(x.shape) == (n,)
                and self.on_device(x)):
            return self.labels(x)
        return None

    def dtype(self, x) -> np.dtype | str:
        # An unsupported torch dtype is reported by its torch name ("torch.float16").
        return self._to_numpy_dtype.get(x.dtype, str(x.dtype))

    def is_integer(self, x) -> bool:
        return x.dtype in self._int_dtypes

    def on_device(self, x) -> bool:
        return x.device.type == self.device.type and (
            self.device.index is None or x.device.index == self.device.index
        )

    def asarray(self, a):
        a = np.asarray(a)
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy()

    def empty(self, shape, dtype):
        return self.torch.empty(shape, dtype=self._to_torch_dtype[np.dtype(dtype)], device=self.device)

    def zeros(self, shape, dtype):
        return self.torch.zeros(shape, dtype=self._to_torch_dtype[np.dtype(dtype)], device=self.device)

    def scalar(self, value, dtype):
        if isinstance(value, self.torch.Tensor):
            return value.reshape(())
        return self.torch.tensor(value, dtype=self._to_torch_dtype[np.dtype(dtype)], device=self.device)

    def is_c_contiguous(self, x) -> bool:
        return x.is_contiguous()

    def is_f_contiguous(self, x) -> bool:
        return x.ndim == 2 and x.t().is_contiguous()

    def writeable(self, x) -> bool:
        return not x.requires_grad or not x.is_leaf

    def contiguous(self, x):
        return x.contiguous()

    def labels(self, x):
        return x.to(self.torch.int64).contiguous()

    def in_range(self, labels, classes) -> bool:
        lo, hi = self.min_max(labels)
        return lo >= 0 and hi < classes

    def min_max(self, x):
        lo, hi = self.torch.aminmax(x)
        return int(lo), int(hi)

    def overlaps(self, a, b) -> bool:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()

    def copy_into(self, dst, src):
        dst.copy_(src)

    def take_rows(self, x, idx, out):
        self.torch.index_select(x, 0, idx, out=out)
