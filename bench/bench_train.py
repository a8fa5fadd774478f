"""End to end: training-step and epoch throughput of every set and of the PyTorch reference.

* ``test_train_step``: one SGD step (gather, forward, loss, backward, update) at batch 1, 32,
  128 and 512. For the kernel sets it is ``KernelEngine.step``; for ``torch-reference``
  ``TorchEngine.train_step`` (zero_grad, model(x), F.cross_entropy, backward, opt.step()),
  then loss.item(), on a batch already on the device.
* ``test_epoch``: one epoch of SGD over the 60,000 training images, as the trainer runs it
  (``engine.epoch``: the kernel sets gather each batch with one fancy-index; the reference
  reads it through its DataLoader). At batch 1 an epoch is 60,000 steps, so a fixed
  ``BATCH1_STEPS`` steps are timed instead; samples/s is comparable either way.

``extra_info`` has ``samples`` (per timed call) and ``samples_per_s``. The naive sets are left
out: their matmuls make an epoch take minutes. Under --benchmark-disable (CI) each runs only a
few steps, to keep the code path alive.
"""

import numpy as np
import pytest

from bench import cases as C
from bench.train_common import BATCH1_STEPS, REFERENCE, SIZES, dataset, make_engine

EPOCH_ROUNDS = 2  # an epoch is seconds long; two rounds keep the suite near 15 minutes
TEST_MODE_STEPS = 3
TRAIN_SETS = [s for s in C.COMPILED_SETS] + ["numpy", "torch", C.CUDA, REFERENCE, REFERENCE + "-cuda"]


def _step_case(op, batch, samples):
    mm = sum(i * o for i, o in zip(SIZES[:-1], SIZES[1:]))
    dx = sum(i * o for i, o in zip(SIZES[1:-1], SIZES[2:]))
    flops = 2.0 * batch * (2 * mm + dx) * samples / batch
    params = mm + sum(SIZES[1:])
    elems = (4 * params + batch * (SIZES[0] + 3 * sum(SIZES[1:]))) * samples / batch
    return C.Case(op=op, id=f"b{batch}", label=f"b{batch}", flops=flops, elems=elems,
                  params=dict(batch=batch, samples=samples, steps=samples // batch))


STEP_CASES = [_step_case("train_step", b, b) for b in C.BATCHES]
EPOCH_CASES = [_step_case("epoch", b, BATCH1_STEPS if b == 1 else 60000) for b in C.BATCHES]


def _engine(set_name, threads, batch):
    from bench.conftest import get_set, skip_unless_available

    if set_name.startswith(REFERENCE):
        skip_unless_available(set_name)
        return make_engine(set_name, None, batch=batch, threads=threads)
    return make_engine(set_name, get_set(set_name, threads), batch=batch)


@pytest.mark.cases(STEP_CASES, sets=TRAIN_SETS)
def test_train_step(set_name, case, dtype, threads, benchmark, measure):
    if dtype != np.float32:
        pytest.skip("the trainer trains in float32")
    batch = case.params["batch"]
    engine = _engine(set_name, threads, batch)
    perm = np.random.default_rng(1).permutation(len(dataset().y_train))[:batch]
    if set_name.startswith(REFERENCE):
        import torch

        data = dataset()
        xb = torch.from_numpy(data.x_train[perm]).to(engine.device)
        yb = torch.from_numpy(data.y_train[perm]).to(engine.device)
        engine.model.train()

        def step():  # the trainer's own step, with .item() as the kernel engines' float(loss)
            return engine.train_step(xb, yb).item()
    else:
        idx = engine.batches.order(perm)

        def step():
            return engine.step(idx)

    median = measure(step)
    if median:
        benchmark.extra_info["samples_per_s"] = batch / median


@pytest.mark.cases(EPOCH_CASES, sets=TRAIN_SETS)
def test_epoch(set_name, case, dtype, threads, benchmark, measure):
    if dtype != np.float32:
        pytest.skip("the trainer trains in float32")
    batch, samples = case.params["batch"], case.params["samples"]
    if benchmark.disabled:
        samples = TEST_MODE_STEPS * batch
    engine = _engine(set_name, threads, batch)
    order = np.random.default_rng(2).permutation(len(dataset().y_train))[:samples]

    def epoch(order=order):
        for _ in engine.epoch(order):
            pass

    # warm on a few steps (compilation, buffers), not a whole epoch
    median = measure(epoch, rounds=EPOCH_ROUNDS, warm=lambda: epoch(order[:TEST_MODE_STEPS * batch]))
    if median:
        benchmark.extra_info["samples_per_s"] = samples / median
