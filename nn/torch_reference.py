"""The PyTorch reference: the same MLP written the way PyTorch users write it, an nn.Module,
autograd, torch.optim, and a torchvision dataset read through a DataLoader.

``python -m nn.train --kernels torch-autograd`` runs it with the same options and outputs as
the hand-built sets. What it shares with them, for a fair comparison: the initial weights
(copied into nn.Linear, transposed, since nn.Linear stores (out, in)), the batch order (a
batch_sampler fed the loop's permutation), the data files (torchvision reads the very files
nn.data found, through a folder of symlinks in the layout it expects) and the pixel scaling
(ToTensor's uint8 / 255, which nn.data reproduces bit for bit), and dropout's masks: nn.Dropout
draws its masks from torch's generator, which no other set can follow, so the network's dropout
layers are ``SeededDropout``, an nn.Dropout whose training-time mask is kernels/_layers.py's
hash of (seed, step, layer, row, unit), the very masks the kernel sets apply (computed on the
model's device, in torch).
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from kernels import _layers

from .data import FILES

NAME = "torch-autograd"


class SeededDropout(nn.Dropout):
    """nn.Dropout (inverted: kept units scaled by 1 / (1 - p) in training, identity in eval)
    with the kernel sets' masks: the mask of hidden layer ``layer`` at training step ``step``
    (set by the engine before each step, counted from 1) is kernels/_layers.py's hash of
    (seed, step, layer, row, unit)."""

    def __init__(self, p: float, seed: int, layer: int):
        super().__init__(p)
        self.seed, self.layer, self.step = seed, layer, 0

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = _layers.keep_torch(_layers.mask_key(self.seed, self.step, self.layer), _layers.threshold(self.p),
                                  x.shape[0], x.shape[1], x.device)
        factor = torch.tensor(_layers.scale(self.p), dtype=x.dtype, device=x.device)
        return torch.where(keep, x * factor, torch.zeros((), dtype=x.dtype, device=x.device))


class MLP(nn.Module):
    """Linear, ReLU (or Tanh), [dropout], ..., Linear: sizes [784, 128, 64, 10] is
    784-128-64-10; with dropout > 0 a SeededDropout after each hidden activation."""

    def __init__(self, sizes, activation="relu", dropout=0.0, seed=0):
        super().__init__()
        layers = [nn.Flatten()]
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh() if activation == "tanh" else nn.ReLU())
                if dropout > 0:
                    layers.append(SeededDropout(dropout, seed, layer=i + 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)

    def linears(self):
        return [m for m in self.layers if isinstance(m, nn.Linear)]

    def set_step(self, step: int) -> None:
        """The training step (from 1) whose dropout masks the next forward pass uses."""
        for m in self.layers:
            if isinstance(m, SeededDropout):
                m.step = step


def torchvision_root(files: dict, dataset: str) -> tempfile.TemporaryDirectory:
    """A folder in torchvision's layout (<root>/FashionMNIST/raw/<name>) holding the files nn.data
    found: symlinks to raw files, decompressed copies of .gz ones (torchvision reads raw IDX)."""
    tmp = tempfile.TemporaryDirectory(prefix="nn-torchvision-")
    raw = Path(tmp.name) / ("FashionMNIST" if dataset == "fashion-mnist" else "MNIST") / "raw"
    raw.mkdir(parents=True)
    for role, stem in FILES.items():
        src = Path(files[role]).resolve()
        with open(src, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        if gz:
            with gzip.open(src, "rb") as fin, open(raw / stem, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            os.symlink(src, raw / stem)
    return tmp


class TorchEngine:
    """The reference trainer, with the engine face nn.train drives (see nn.engine)."""

    def __init__(self, data, sizes, params, *, train_idx, val_idx=None, optimizer="adam", lr=1e-3,
                 weight_decay=0.0, momentum=0.9, batch_size=64, activation="relu", dropout=0.0, seed=0,
                 device="cpu", threads=None, eval_batch=1000):
        # data: nn.data.Dataset; train_idx / val_idx: which of its training rows train / validate
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.eval_batch = eval_batch
        self._tmp = None
        train_full, test = self._datasets(data)
        self.train_set = Subset(train_full, train_idx.tolist())
        self.eval_sets = {"train": self.train_set, "test": test}
        if val_idx is not None and len(val_idx):
            self.eval_sets["val"] = Subset(train_full, val_idx.tolist())

        self.model = MLP(sizes, activation=activation, dropout=dropout, seed=seed).to(self.device)
        with torch.no_grad():
            for layer, w, b in zip(self.model.linears(), params[0::2], params[1::2]):
                layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                layer.bias.copy_(torch.from_numpy(b))
        if optimizer == "adam":
            self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        else:
            self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, weight_decay=weight_decay,
                                       momentum=momentum if optimizer == "momentum" else 0.0)
        self.kind = optimizer
        self.steps = 0                  # optimizer steps taken (Adam's t), kept for checkpoints

    def _datasets(self, data):
        if data.name in ("fashion-mnist", "mnist"):
            import torchvision
            from torchvision.transforms import ToTensor

            cls = torchvision.datasets.FashionMNIST if data.name == "fashion-mnist" else torchvision.datasets.MNIST
            self._tmp = torchvision_root(data.files, data.name)
            train = cls(self._tmp.name, train=True, download=False, transform=ToTensor())
            test = cls(self._tmp.name, train=False, download=False, transform=ToTensor())
            return train, test
        # CSV: no torchvision class reads it; tensors straight from nn.data's arrays
        return (TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)),
                TensorDataset(torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)))

    # ------------------------------------------------------------------ the engine face

    def epoch(self, order: np.ndarray, start_batch: int = 0, max_steps: int | None = None):
        """The epoch's batches from ``start_batch`` on, one step each; yields each loss as a
        one-element array (the engine face: arrays of consecutive steps' losses)."""
        b = self.batch_size
        batches = [order[s:s + b].tolist() for s in range(start_batch * b, len(order), b)]
        loader = DataLoader(self.train_set, batch_sampler=batches[:max_steps])
        self.model.train()
        for xb, yb in loader:
            yield np.array([self.train_step(xb.to(self.device), yb.to(self.device)).item()])

    def warm_up(self, progress=None):
        """One forward and backward pass on two samples through a copy of the model (so that
        nothing of the run changes): torch's one-off set-up (its kernels' first calls, on CUDA
        the context and cuBLAS) before the first timed step. A kernels.warmup.WarmUp."""
        import copy
        import time

        from kernels.warmup import WarmUp

        t0 = time.perf_counter()
        xb, yb = next(iter(DataLoader(self.train_set, batch_size=2)))
        model = copy.deepcopy(self.model)
        F.cross_entropy(model(xb.to(self.device)), yb.to(self.device)).backward()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return WarmUp(time.perf_counter() - t0)

    def train_step(self, xb, yb):
        """One step on a batch already on the device: xb (B, 1, 28, 28) or (B, 784), yb (B,).
        The loss as a 0-d tensor (benchmarks time this alone, without the DataLoader)."""
        self.opt.zero_grad()
        self.model.set_step(self.steps + 1)
        loss = F.cross_entropy(self.model(xb), yb)
        loss.backward()
        self.opt.step()
        self.steps += 1
        return loss

    @torch.no_grad()
    def evaluate(self, name: str):
        self.model.eval()
        total, preds = 0.0, []
        for xb, yb in DataLoader(self.eval_sets[name], batch_size=self.eval_batch):
            xb, yb = xb.to(self.device), yb.to(self.device)
            logits = self.model(xb)
            total += F.cross_entropy(logits, yb, reduction="sum").item()
            preds.append(logits.argmax(dim=1).cpu().numpy())
        preds = np.concatenate(preds).astype(np.int64)
        return total / len(preds), preds

    # checkpoints in the hand-built sets' layout: w (in, out), Adam's m / v, SGD's velocity
    def state(self):
        params, optim = {}, {"step_count": np.asarray(self.steps, np.int64)}
        for i, layer in enumerate(self.model.linears()):
            params[f"w{i + 1}"] = layer.weight.detach().cpu().numpy().T.copy()
            params[f"b{i + 1}"] = layer.bias.detach().cpu().numpy().copy()

        def as_ours(t, p):      # (out, in) -> (in, out) for weights; zeros before the first step
            a = torch.zeros_like(p) if t is None else t
            a = a.detach().cpu().numpy()
            return (a.T if p.ndim == 2 else a).copy()

        for j, p in enumerate(self.model.parameters()):
            st = self.opt.state.get(p, {})
            if self.kind == "adam":
                optim[f"m{j}"] = as_ours(st.get("exp_avg"), p)
                optim[f"v{j}"] = as_ours(st.get("exp_avg_sq"), p)
            elif self.kind == "momentum":
                optim[f"velocity{j}"] = as_ours(st.get("momentum_buffer"), p)
        return params, optim

    def load(self, params, optim) -> None:
        def native(a, p):
            a = a.T if p.ndim == 2 else a
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

        with torch.no_grad():
            for i, layer in enumerate(self.model.linears()):
                layer.weight.copy_(native(params[f"w{i + 1}"], layer.weight))
                layer.bias.copy_(native(params[f"b{i + 1}"], layer.bias))
        step = int(optim.get("step_count", 0))
        for j, p in enumerate(self.model.parameters()):
            if self.kind == "adam" and step > 0:
                self.opt.state[p] = {"step": torch.tensor(float(step)), "exp_avg": native(optim[f"m{j}"], p),
                                     "exp_avg_sq": native(optim[f"v{j}"], p)}
            elif self.kind == "momentum" and step > 0:
                self.opt.state[p] = {"momentum_buffer": native(optim[f"velocity{j}"], p)}
        self.steps = step

    def close(self):
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
