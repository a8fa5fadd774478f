"""Every bad input is rejected by the shared front with a TypeError or ValueError that names
the argument, for every set (so no compiled kernel ever sees unchecked input)."""

import numpy as np
import pytest

import kernels

f32 = np.float32


def arr(ks, shape, dtype=f32, fill=1.0):
    return ks.asarray(np.full(shape, fill, dtype=dtype))


def labels(ks, values):
    return ks.asarray(np.asarray(values))


@pytest.mark.parametrize(
    "call, error, words",
    [
        # wrong ndim
        (lambda ks: ks.matmul(arr(ks, (3,)), arr(ks, (3, 2))), ValueError, ["a", "2-D"]),
        (lambda ks: ks.linear(arr(ks, (2, 3)), arr(ks, (3, 4, 1)), arr(ks, (4,))), ValueError, ["w", "2-D"]),
        (lambda ks: ks.linear(arr(ks, (2, 3)), arr(ks, (3, 4)), arr(ks, (1, 4))), ValueError, ["b", "1-D"]),
        (lambda ks: ks.softmax_cross_entropy(arr(ks, (4,)), labels(ks, [0])), ValueError, ["logits", "2-D"]),
        # mismatched shapes, also under trans flags
        (lambda ks: ks.matmul(arr(ks, (3, 4)), arr(ks, (5, 2))), ValueError, ["k=", "b"]),
        (lambda ks: ks.matmul(arr(ks, (3, 4)), arr(ks, (4, 2)), trans_a=True), ValueError, ["trans_a=True"]),
        (lambda ks: ks.matmul(arr(ks, (3, 4)), arr(ks, (4, 2)), trans_b=True), ValueError, ["trans_b=True"]),
        (lambda ks: ks.linear(arr(ks, (2, 3)), arr(ks, (4, 5)), arr(ks, (5,))), ValueError, ["in=", "w"]),
        (lambda ks: ks.linear(arr(ks, (2, 3)), arr(ks, (3, 5)), arr(ks, (4,))), ValueError, ["out=", "b"]),
        (lambda ks: ks.linear_backward(arr(ks, (2, 3)), arr(ks, (3, 5)), arr(ks, (2, 5)), arr(ks, (3, 5))),
         ValueError, ["grad_y", "batch="]),
        (lambda ks: ks.relu_backward(arr(ks, (2, 3)), arr(ks, (3, 2))), ValueError, ["grad_y", "y"]),
        (lambda ks: ks.sgd_step(arr(ks, (3,)), arr(ks, (4,)), lr=0.1), ValueError, ["grad", "param"]),
        (lambda ks: ks.adam_step(arr(ks, (3,)), arr(ks, (3,)), arr(ks, (3,)), arr(ks, (2,)), step=1, lr=0.1),
         ValueError, ["v", "shape"]),
        # integer and mixed dtypes
        (lambda ks: ks.matmul(arr(ks, (2, 2), np.int64), arr(ks, (2, 2))), TypeError, ["a", "float32 or float64"]),
        (lambda ks: ks.relu(arr(ks, (2, 2), np.int32)), TypeError, ["x", "float32 or float64"]),
        (lambda ks: ks.matmul(arr(ks, (2, 2)), arr(ks, (2, 2), np.float64)), TypeError, ["a", "b", "dtype"]),
        (lambda ks: ks.linear(arr(ks, (2, 2)), arr(ks, (2, 2)), arr(ks, (2,), np.float64)), TypeError, ["b", "dtype"]),
        (lambda ks: ks.adam_step(arr(ks, (2,)), arr(ks, (2,)), arr(ks, (2,), np.float64), arr(ks, (2,)), step=1, lr=1.0),
         TypeError, ["m", "dtype"]),
        # out of the wrong shape or dtype
        (lambda ks: ks.matmul(arr(ks, (2, 3)), arr(ks, (3, 4)), out=arr(ks, (4, 2))), ValueError, ["out", "(2, 4)"]),
        (lambda ks: ks.matmul(arr(ks, (2, 3)), arr(ks, (3, 4)), out=arr(ks, (2, 4), np.float64)), TypeError, ["out", "float32"]),
        (lambda ks: ks.relu(arr(ks, (2, 3)), out=arr(ks, (3, 2))), ValueError, ["out"]),
        (lambda ks: ks.linear(arr(ks, (2, 3)), arr(ks, (3, 4)), arr(ks, (4,)), out=arr(ks, (2, 4), np.float64)), TypeError, ["out"]),
        (lambda ks: ks.softmax_cross_entropy(arr(ks, (2, 3)), labels(ks, [0, 1]), out=arr(ks, (3, 2))), ValueError, ["out"]),
        (lambda ks: ks.linear_backward(arr(ks, (2, 3)), arr(ks, (3, 4)), arr(ks, (2, 4)), arr(ks, (2, 4)),
                                       out=(arr(ks, (2, 3)), arr(ks, (4, 3)), arr(ks, (4,)))), ValueError, ["grad_w", "(3, 4)"]),
        (lambda ks: ks.linear_backward(arr(ks, (2, 3)), arr(ks, (3, 4)), arr(ks, (2, 4)), arr(ks, (2, 4)),
                                       out=arr(ks, (2, 3))), TypeError, ["out", "tuple"]),
        # labels out of range, not integers, not one per row
        (lambda ks: ks.softmax_cross_entropy(arr(ks, (2, 3)), labels(ks, [0, 3])), ValueError, ["labels", "[0, 3)", "3"]),
        (lambda ks: ks.softmax_cross_entropy(arr(ks, (2, 3)), labels(ks, [-1, 0])), ValueError, ["labels", "-1"]),
        (lambda ks: ks.softmax_cross_entropy(arr(ks, (2, 3)), labels(ks, [0.0, 1.0])), TypeError, ["labels", "integer"]),
        (lambda ks: ks.softmax_cross_entropy(arr(ks, (2, 3)), labels(ks, [0, 1, 2])), ValueError, ["labels", "one class index per row"]),
        (lambda ks: ks.softmax_cross_entropy(arr(ks, (2, 3)), labels(ks, [[0], [1]])), ValueError, ["labels", "(2,)"]),
        (lambda ks: ks.softmax_cross_entropy(arr(ks, (2, 3)), [0, 1]), TypeError, ["labels"]),
        # an empty batch
        (lambda ks: ks.linear(arr(ks, (0, 3)), arr(ks, (3, 4)), arr(ks, (4,))), ValueError, ["x", "empty batch"]),
        (lambda ks: ks.softmax_cross_entropy(arr(ks, (0, 3)), labels(ks, np.zeros(0, int))), ValueError, ["logits", "empty"]),
        (lambda ks: ks.matmul(arr(ks, (2, 0)), arr(ks, (0, 2))), ValueError, ["a", "empty"]),
        (lambda ks: ks.relu(arr(ks, (0, 5))), ValueError, ["x", "empty"]),
        # optimizer arguments
        (lambda ks: ks.adam_step(*(arr(ks, (2,)) for _ in range(4)), step=0, lr=1.0), ValueError, ["step", "at least 1"]),
        (lambda ks: ks.adam_step(*(arr(ks, (2,)) for _ in range(4)), step=1.5, lr=1.0), TypeError, ["step", "integer"]),
        (lambda ks: ks.adam_step(*(arr(ks, (2,)) for _ in range(4)), step=1, lr=1.0, beta1=1.0), ValueError, ["beta1"]),
        (lambda ks: ks.sgd_step(arr(ks, (2,)), arr(ks, (2,)), lr=-0.1), ValueError, ["lr", ">= 0"]),
        (lambda ks: ks.sgd_step(arr(ks, (2,)), arr(ks, (2,)), lr=float("nan")), ValueError, ["lr"]),
        (lambda ks: ks.sgd_step(arr(ks, (2,)), arr(ks, (2,)), lr="0.1"), TypeError, ["lr"]),
        (lambda ks: ks.sgd_step(arr(ks, (2,)), arr(ks, (2,)), lr=0.1, momentum=0.9), ValueError, ["velocity"]),
        (lambda ks: (lambda p: ks.adam_step(p, arr(ks, (2,)), p, arr(ks, (2,)), step=1, lr=1.0))(arr(ks, (2,))),
         ValueError, ["param", "m", "share memory"]),
        # not an array at all, or a flag that is not a bool
        (lambda ks: ks.matmul([[1.0]], arr(ks, (1, 1))), TypeError, ["a", "asarray"]),
        (lambda ks: ks.matmul(arr(ks, (1, 1)), arr(ks, (1, 1)), trans_a="yes"), TypeError, ["trans_a"]),
        (lambda ks: ks.linear(arr(ks, (1, 1)), arr(ks, (1, 1)), arr(ks, (1,)), relu=1), TypeError, ["relu"]),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(ks, call, error, words):
    assert_rejected(ks, call, error, words)


def assert_rejected(ks, call, error, words):
    """call(ks) raises ``error`` whose message names every one of ``words``."""
    with pytest.raises(error) as info:
        call(ks)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in error message: {message}"


def mlp(ks, sizes=(4, 3, 2), dtype=f32):
    """[w1, b1, ...] of ones for a ReLU MLP of ``sizes``, as native arrays."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params += [arr(ks, (fan_in, fan_out), dtype), arr(ks, (fan_out,), dtype)]
    return params


def steps(ks, params=None, x=None, y=None, order=None, **kwargs):
    """ks.train_steps on a valid 5-sample problem, with any argument replaced."""
    kwargs.setdefault("batch", 2)
    kwargs.setdefault("lr", 0.1)
    return ks.train_steps(mlp(ks) if params is None else params, arr(ks, (5, 4)) if x is None else x,
                          labels(ks, [0, 1, 0, 1, 1]) if y is None else y,
                          labels(ks, [4, 3, 2, 1, 0]) if order is None else order, **kwargs)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda ks: steps(ks, params=mlp(ks)[:3]), TypeError, ["params", "[w1, b1", "length 3"]),
        (lambda ks: steps(ks, params=tuple(mlp(ks)[:0])), TypeError, ["params"]),
        (lambda ks: steps(ks, params=mlp(ks)[:2] + mlp(ks, (4, 2))[:2]), ValueError, ["w2", "n1=4", "w1 has n1=3"]),
        (lambda ks: steps(ks, x=arr(ks, (5, 3))), ValueError, ["w1", "n0=4", "x"]),
        (lambda ks: steps(ks, params=mlp(ks, dtype=np.float64)), TypeError, ["x", "w1", "dtype"]),
        (lambda ks: steps(ks, y=labels(ks, [0, 1, 2, 0, 1])), ValueError, ["labels", "[0, 2)", "2"]),
        (lambda ks: steps(ks, y=labels(ks, [0, 1])), ValueError, ["labels", "(5,)"]),
        (lambda ks: steps(ks, order=labels(ks, [0, 5])), ValueError, ["order", "[0, 5)", "5"]),
        (lambda ks: steps(ks, order=labels(ks, [-1, 2])), ValueError, ["order", "-1"]),
        (lambda ks: steps(ks, order=labels(ks, [0.0, 1.0])), TypeError, ["order", "integer"]),
        (lambda ks: steps(ks, order=labels(ks, np.zeros(0, int))), ValueError, ["order", "non-empty"]),
        (lambda ks: steps(ks, order=[0, 1]), TypeError, ["order", "list"]),
        (lambda ks: steps(ks, batch=0), ValueError, ["batch", "at least 1"]),
        (lambda ks: steps(ks, batch=2.0), TypeError, ["batch", "integer"]),
        (lambda ks: steps(ks, optimizer="rmsprop"), ValueError, ["optimizer", "'sgd' or 'adam'"]),
        (lambda ks: steps(ks, momentum=0.9), ValueError, ["momentum", "velocity="]),
        (lambda ks: steps(ks, optimizer="adam"), ValueError, ["adam", "m=", "v="]),
        (lambda ks: steps(ks, optimizer="adam", m=mlp(ks), v=mlp(ks)[:2]), TypeError, ["v", "list of 4"]),
        (lambda ks: steps(ks, optimizer="adam", m=mlp(ks), v=mlp(ks, (4, 3, 3))), ValueError, ["v[2]", "shape"]),
        (lambda ks: steps(ks, momentum=0.9, velocity=mlp(ks, dtype=np.float64)), TypeError, ["velocity[0]", "float32"]),
        (lambda ks: steps(ks, step=-1), ValueError, ["step", "at least 0"]),
        (lambda ks: steps(ks, lr=-1.0), ValueError, ["lr"]),
        (lambda ks: (lambda p: steps(ks, params=p, momentum=0.9, velocity=p))(mlp(ks)), ValueError, ["share memory"]),
        (lambda ks: steps(ks, params=[arr(ks, (4, 6))[:, ::2]] + mlp(ks)[1:]), ValueError, ["w1", "C-contiguous"]),
        (lambda ks: steps(ks, out=arr(ks, (2,))), ValueError, ["out", "(3,)"]),
    ],
)
def test_train_steps_bad_input(ks, call, error, words):
    assert_rejected(ks, call, error, words)


def test_read_only_out_is_rejected():
    ks = kernels.get("numpy")
    out = np.zeros((2, 2), f32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        ks.relu(np.ones((2, 2), f32), out=out)


def test_unknown_set_lists_the_registered_names():
    with pytest.raises(ValueError) as info:
        kernels.get("fortran")
    for name in ("numpy", "numba", "cython", "torch"):
        assert name in str(info.value)


def test_registry_names_and_availability():
    names = kernels.names()
    assert {"numpy", "numba", "cython", "torch"} <= set(names)
    avail = kernels.available()
    assert set(avail) == set(names)
    assert avail["numpy"] is None and avail["torch"] is None
    assert all(reason is None or isinstance(reason, str) and reason for reason in avail.values())


@pytest.mark.parametrize("threads, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_thread_counts(threads, error):
    with pytest.raises(error, match="threads"):
        kernels.get("numpy", threads=threads)


def test_cpu_only_sets_reject_other_devices():
    with pytest.raises(kernels.UnavailableError, match="CPU"):
        kernels.get("numpy", device="cuda")


def test_torch_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    reason = kernels.available("cuda")["torch"]
    assert reason and "cuda" in reason.lower()
    with pytest.raises(kernels.UnavailableError, match="torch.cuda.is_available"):
        kernels.get("torch", device="cuda")
    with pytest.raises(kernels.UnavailableError, match="not a device|supports devices"):
        kernels.get("torch", device="tpu")


def test_threads_are_applied_per_set():
    import torch
    from threadpoolctl import threadpool_info

    one = kernels.get("torch", threads=1)
    two = kernels.get("torch", threads=2)
    x = one.asarray(np.ones((2, 2), f32))
    one.relu(x)
    assert torch.get_num_threads() == 1
    two.relu(x)
    assert torch.get_num_threads() == 2
    kernels.get("numpy", threads=1).relu(np.ones((2, 2), f32))
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas and all(p["num_threads"] == 1 for p in blas)
