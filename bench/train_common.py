"""What the end-to-end benchmarks share: the data, the engines, and their names.

Engines come from the trainer (nn/): ``nn.engine.KernelEngine`` on a kernel set, and
``nn.torch_reference.TorchEngine``, the PyTorch eager reference (an nn.Module, autograd,
torch.optim, a DataLoader), named ``torch-reference`` here. All start from the same initial
weights (``nn.model.init_params``, seed 0) and see the same batch order.
"""

from __future__ import annotations

import functools

import numpy as np

SIZES = [784, 128, 64, 10]
REFERENCE = "torch-reference"
# At batch 1 an epoch is 60,000 steps: the end-to-end benchmarks time this many instead.
BATCH1_STEPS = 2000


@functools.lru_cache(maxsize=1)
def dataset():
    """Fashion-MNIST when it is installed, else random data of its shape (60,000 + 10,000 rows),
    which trains no better than chance but times the same."""
    from nn.data import Dataset, load_dataset

    try:
        return load_dataset("fashion-mnist", allow_download=False, log=lambda *a, **k: None)
    except Exception:  # noqa: BLE001 - any failure to find the files: time on random data
        rng = np.random.default_rng(0)
        return Dataset("synthetic", rng.random((60000, 784), dtype=np.float32), rng.integers(0, 10, 60000),
                       rng.random((10000, 784), dtype=np.float32), rng.integers(0, 10, 10000),
                       tuple(str(i) for i in range(10)), {})


def initial_params(seed=0):
    from nn.model import init_params

    return init_params(SIZES, "he", np.random.default_rng(seed))


def make_engine(set_name, ks, *, batch, optimizer="sgd", lr=None, threads=None, eval_test=False):
    """A trainer engine for ``set_name`` (a kernel set, or the torch reference on cpu/cuda)."""
    from nn.train import DEFAULT_LR

    data = dataset()
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    if set_name.startswith(REFERENCE):
        from nn.torch_reference import TorchEngine

        device = "cuda" if set_name.endswith("-cuda") else "cpu"
        return TorchEngine(data, SIZES, initial_params(), train_idx=np.arange(len(data.y_train)),
                           optimizer=optimizer, lr=lr, batch_size=batch, device=device, threads=threads)
    from nn.engine import KernelEngine

    eval_sets = {"test": (data.x_test, data.y_test)} if eval_test else None
    return KernelEngine(ks, SIZES, initial_params(), optimizer=optimizer, lr=lr, batch_size=batch,
                        train=(data.x_train, data.y_train), eval_sets=eval_sets)
