"""Every op of every set, called from several Python threads at once, gives exactly the answer
it gives called alone (issue 15): a threaded data pipeline, a web server or a
concurrent.futures pool must never see another call's scratch memory.

Each worker thread has its own inputs; all of them start each round together (a barrier) and
run every op, so the calls overlap; every result is compared bit for bit with the same call
made before, from the main thread, with nothing else running. Shapes include ones that take the
compiled sets' packed matmul path (300 x 300 x 300 and the MLP's 128 x 784 @ 784 x 128) and
small ones that do not.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import SET_NAMES, kernel_set
from kernels._steps import n_steps

WORKERS = 4
# (set, op name's start) pairs seen to differ, with why: reported, not hidden. The test xfails
# when every difference it finds is one of these, and fails on any other.
KNOWN = {
    ("torch", "matmul 257x300x129 trans_a=False trans_b=True"):
        "torch's float64 matmul with trans_b differed in the last bits (1e-13) on each worker's first "
        "round, in the full suite only: state of torch's own per thread, not this project's",
}


def _known(name, op):
    return next((why for (s, start), why in KNOWN.items() if s == name and op.startswith(start)), None)
ROUNDS = 3
DTYPES = [np.float32, np.float64]
MATMULS = [(300, 300, 300, False, False), (300, 300, 300, True, False), (257, 300, 129, False, True),
           (7, 5, 3, False, False), (40, 33, 70, True, False)]


def _calls(ks, seed, dtype):
    """{name: call} for one worker: each call makes its outputs (and fresh copies of anything an
    op updates in place) and returns its results as NumPy arrays."""
    rng = np.random.default_rng(seed)

    def arr(*shape, scale=1.0):
        return ks.asarray((scale * rng.standard_normal(shape)).astype(dtype))

    def out(*results):
        return [np.array(ks.to_numpy(r)) if r is not None else None for r in results]

    calls = {}
    for m, k, n, ta, tb in MATMULS:
        a, b = arr(*((k, m) if ta else (m, k))), arr(*((n, k) if tb else (k, n)))
        calls[f"matmul {m}x{k}x{n} trans_a={ta} trans_b={tb}"] = \
            lambda a=a, b=b, ta=ta, tb=tb: out(ks.matmul(a, b, trans_a=ta, trans_b=tb))
    x, gy = arr(300, 200), arr(300, 200)
    calls["relu"] = lambda: out(ks.relu(x))
    calls["relu_backward"] = lambda: out(ks.relu_backward(gy, x))
    for batch, classes in ((128, 10), (300, 1000)):
        logits = arr(batch, classes, scale=3.0)
        labels = ks.asarray(rng.integers(0, classes, batch))
        calls[f"softmax_cross_entropy {batch}x{classes}"] = \
            lambda lg=logits, lb=labels: out(*ks.softmax_cross_entropy(lg, lb))
    for batch, n_in, n_out in ((128, 784, 128), (300, 300, 300), (3, 20, 10)):
        xs, w, b = arr(batch, n_in), arr(n_in, n_out, scale=n_in ** -0.5), arr(n_out)
        gys = arr(batch, n_out)
        calls[f"linear {batch}x{n_in}x{n_out}"] = lambda xs=xs, w=w, b=b: out(ks.linear(xs, w, b, relu=True))

        def backward(xs=xs, w=w, b=b, gys=gys):
            y = ks.linear(xs, w, b, relu=True)
            return out(y, *ks.linear_backward(xs, w, y, gys, relu=True))

        calls[f"linear_backward {batch}x{n_in}x{n_out}"] = backward
    p0, g = ks.to_numpy(arr(300, 300)), arr(300, 300)

    def sgd():
        p, v = ks.asarray(p0.copy()), ks.asarray(np.zeros_like(p0))
        ks.sgd_step(p, g, lr=0.1, momentum=0.9, velocity=v, weight_decay=1e-3)
        return out(p, v)

    def adam():
        p, m, v = ks.asarray(p0.copy()), ks.asarray(np.zeros_like(p0)), ks.asarray(np.zeros_like(p0))
        ks.adam_step(p, g, m, v, step=3, lr=1e-2, weight_decay=1e-3)
        return out(p, m, v)

    calls["sgd_step"], calls["adam_step"] = sgd, adam
    sizes, samples = (784, 64, 10), 300
    data = arr(samples, sizes[0])
    targets = ks.asarray(rng.integers(0, sizes[-1], samples))
    order = ks.asarray(rng.permutation(samples))
    init = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        init += [ks.to_numpy(arr(n_in, n_out, scale=n_in ** -0.5)), ks.to_numpy(arr(n_out, scale=0.1))]
    for batch in (128, 1):
        def train(batch=batch):
            params = [ks.asarray(p.copy()) for p in init]
            losses = ks.train_steps(params, data, targets, order[:samples if batch > 1 else 20],
                                    batch=batch, lr=0.05)
            return out(losses, *params)

        calls[f"train_steps batch={batch}"] = train
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SET_NAMES)
def test_concurrent_calls_give_the_single_threaded_answer(name, dtype):
    if name.endswith("-naive"):
        pytest.skip("the naive sets take minutes at these shapes; they keep no state between calls")
    ks = kernel_set(name)
    workers = [_calls(ks, seed, dtype) for seed in range(WORKERS)]
    want = [{op: call() for op, call in calls.items()} for calls in workers]   # one at a time
    barrier = threading.Barrier(WORKERS)

    def run(w):
        wrong = []
        for r in range(ROUNDS):
            barrier.wait()
            for op, call in workers[w].items():
                for j, (got, exp) in enumerate(zip(call(), want[w][op])):
                    if not np.array_equal(got, exp, equal_nan=True):
                        err = np.max(np.abs(got.astype(np.float64) - exp)) if got.shape == exp.shape else "shape"
                        wrong.append((op, f"round {r}, worker {w}: {op} result {j} differs (max abs {err})"))
        return wrong

    with ThreadPoolExecutor(WORKERS) as pool:
        wrong = [line for lines in pool.map(run, range(WORKERS)) for line in lines]
    unknown = [line for op, line in wrong if _known(name, op) is None]
    assert not unknown, f"{len(unknown)} results differ from the single-threaded ones:\n" + "\n".join(unknown[:20])
    if wrong:
        pytest.xfail("; ".join(sorted({_known(name, op) for op, _ in wrong})))
