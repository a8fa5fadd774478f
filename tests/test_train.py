"""nn.train end to end on a small subset, for every kernel set and the torch-autograd reference:
outputs (metrics.json, plots, checkpoint), fairness (same start, same batches on every set),
determinism, resume equivalence, and stopping on a non-finite loss.

The data is a small MNIST made from the real test files in ../shared/data/mnist (1,000 images
to train on, 500 to test on), so these tests need neither Fashion-MNIST nor the network.
"""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MNIST, kernel_set, requires_mnist

import kernels
from nn import checkpoint as ckpt
from nn.engine import KernelEngine
from nn.errors import TrainingDiverged
from nn.train import REFERENCE, Config, train

SETS = [*kernels.names(), REFERENCE]

pytestmark = requires_mnist()


@pytest.fixture(scope="session")
def small_mnist(tmp_path_factory):
    """A data dir holding MNIST-layout IDX files: train = test digits 0..999, test = 1000..1499."""
    images = gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())[16:]
    labels = gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:]
    root = tmp_path_factory.mktemp("mnist-small")

    def idx(name, magic, dims, body):
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
        (root / name).write_bytes(gzip.compress(header + body, compresslevel=1))

    for stem, lo, hi in (("train", 0, 1000), ("t10k", 1000, 1500)):
        idx(f"{stem}-images-idx3-ubyte.gz", 0x803, (hi - lo, 28, 28), images[lo * 784:hi * 784])
        idx(f"{stem}-labels-idx1-ubyte.gz", 0x801, (hi - lo,), labels[lo:hi])
    return root


def config(data_dir, out, **kw):
    base = dict(kernels="numpy", dataset="mnist", data_dir=str(data_dir), limit=512, epochs=2,
                batch_size=32, threads=1, out=str(out), quiet=True, download=False)
    return Config(**{**base, **kw})


def require(name):
    """Skip (or, under KERNELS_REQUIRE_ALL, fail) when set ``name`` cannot run here."""
    if name != REFERENCE:
        kernel_set(name)


def weights(out) -> dict:
    return ckpt.load(Path(out) / "checkpoint.npz")["params"]


def without_timing(epochs):
    return [{k: v for k, v in e.items() if k not in ("seconds", "samples_per_second")} for e in epochs]


# ---------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", SETS)
def test_end_to_end(name, small_mnist, tmp_path):
    require(name)
    m = train(config(small_mnist, tmp_path, kernels=name))
    assert m["status"] == "finished"
    assert m["test_accuracy"] > 0.7, "2 epochs on 512 MNIST digits should be well above chance"

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test_accuracy"] == m["test_accuracy"] and isinstance(saved["test_accuracy"], float)
    assert saved["config"]["kernels"] == name and saved["config"]["hidden"] == [128, 64]
    assert {"versions", "cpu", "threads"} <= set(saved["environment"]) and saved["environment"]["threads"] == 1
    assert saved["network"]["sizes"] == [784, 128, 64, 10]
    assert [e["epoch"] for e in saved["epochs"]] == [1, 2]
    for e in saved["epochs"]:
        assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "samples_per_second"} <= set(e)
    assert len(saved["per_class_accuracy"]) == 10
    cm = np.array(saved["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 500
    assert np.trace(cm) / 500 == pytest.approx(saved["test_accuracy"])
    for png in ("curves.png", "confusion.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(weights(tmp_path)) == {"w1", "b1", "w2", "b2", "w3", "b3"}


def test_online_sgd_partial_batches_and_validation(small_mnist, tmp_path):
    # batch 1 (online SGD, as in the NumPy seed), then a batch size that leaves a partial batch
    m = train(config(small_mnist, tmp_path / "a", limit=40, epochs=1, batch_size=1, optimizer="sgd", lr=0.01))
    assert m["status"] == "finished" and m["config"]["batch_size_used"] == 1
    m = train(config(small_mnist, tmp_path / "b", limit=100, epochs=1, batch_size=32, val_split=0.2))
    assert m["data"]["train"] == 80 and m["data"]["val"] == 20
    assert {"val_loss", "val_accuracy"} <= set(m["epochs"][0])
    # a batch larger than the set is the whole set (full-batch gradient descent)
    m = train(config(small_mnist, tmp_path / "c", limit=50, epochs=1, batch_size=10_000))
    assert m["config"]["batch_size_used"] == 50


# ---------------------------------------------------------------------------- fairness


def test_same_start_and_batches_on_every_set(small_mnist, tmp_path):
    """Every set starts from the numpy set's weights, and, trained on the same batches, ends
    within float32 noise of it (different batches would leave them far apart)."""
    names = []
    for name in SETS:
        if name == REFERENCE or kernels.available()[name] is None:
            names.append(name)
        else:
            require(name)     # fails under KERNELS_REQUIRE_ALL; otherwise the set is left out
    opts = dict(limit=256, epochs=1, batch_size=32, eval_train=False, optimizer="sgd", lr=0.05)
    for name in names:
        m = train(config(small_mnist, tmp_path / name, kernels=name, **opts))
        assert m["status"] == "finished"
    ref = weights(tmp_path / "numpy")
    for name in names:
        got = weights(tmp_path / name)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], atol=2e-4, err_msg=f"{name} {k}")
    # a different seed gives a different start
    train(config(small_mnist, tmp_path / "seed1", seed=1, **opts))
    assert not np.allclose(weights(tmp_path / "seed1")["w1"], ref["w1"], atol=1e-3)


def test_initial_weights_identical_everywhere(small_mnist):
    from nn.data import load_dataset
    from nn.model import init_params
    from nn.torch_reference import TorchEngine

    data = load_dataset("mnist", small_mnist, allow_download=False)
    sizes = [784, 128, 64, 10]
    want = init_params(sizes, "he", np.random.default_rng(7))
    for name in kernels.names():
        if kernels.available()[name] is None:
            engine = KernelEngine(kernels.get(name, threads=1), sizes, init_params(sizes, "he", np.random.default_rng(7)))
            got = engine.state()[0]
            assert all(np.array_equal(got[f"w{i + 1}"], want[2 * i]) for i in range(3)), name
    ref = TorchEngine(data, sizes, init_params(sizes, "he", np.random.default_rng(7)), train_idx=np.arange(10))
    got = ref.state()[0]
    ref.close()
    assert all(np.array_equal(got[f"w{i + 1}"], want[2 * i]) for i in range(3))
    assert want[0].dtype == np.float32 and np.allclose(want[0].std(), np.sqrt(2 / 784), rtol=0.05)


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_same_seed_same_metrics(name, small_mnist, tmp_path):
    require(name)
    a = train(config(small_mnist, tmp_path / "a", kernels=name))
    b = train(config(small_mnist, tmp_path / "b", kernels=name))
    assert without_timing(a["epochs"]) == without_timing(b["epochs"])
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------------------- resume


@pytest.mark.parametrize("name, optimizer", [("numpy", "adam"), (REFERENCE, "adam"), ("numpy", "momentum"),
                                             (REFERENCE, "momentum")])
@pytest.mark.parametrize("stop", ["epoch", "mid-epoch"])
def test_resume_reaches_the_same_weights(name, optimizer, stop, small_mnist, tmp_path):
    require(name)
    full = train(config(small_mnist, tmp_path / "full", kernels=name, optimizer=optimizer))
    part = tmp_path / "part"
    if stop == "epoch":
        first = train(config(small_mnist, part, kernels=name, optimizer=optimizer, epochs=1, checkpoint=True))
        assert first["status"] == "finished"
    else:
        # what Ctrl-C does: finish the step, write a checkpoint, stop (here 5 steps into epoch 2)
        first = train(config(small_mnist, part, kernels=name, optimizer=optimizer, interrupt_after_steps=21))
        assert first["status"] == "interrupted"
        assert ckpt.load(part / "checkpoint.npz")["meta"]["batch"] == 5
    resumed = train(Config(kernels=name, epochs=2, threads=1, quiet=True, resume=str(part / "checkpoint.npz"),
                           data_dir=str(small_mnist), download=False))
    assert resumed["status"] == "finished"
    wf, wr = weights(tmp_path / "full"), weights(part)
    for k in wf:
        assert np.array_equal(wf[k], wr[k]), f"{k} differs after resuming"
    assert [e["test_accuracy"] for e in resumed["epochs"]] == [e["test_accuracy"] for e in full["epochs"]]
    assert resumed["epochs"][-1]["train_loss"] == pytest.approx(full["epochs"][-1]["train_loss"], rel=1e-6)


def test_tanh_and_dropout_same_masks_on_every_set_and_resume(small_mnist, tmp_path):
    """--activation tanh --dropout: every set and the torch-autograd reference train on the same
    masks (different masks would leave them far apart), the options are in metrics.json and the
    checkpoint, and a run stopped mid-epoch resumes to the uninterrupted run's weights."""
    names = [n for n in SETS if n == REFERENCE or kernels.available()[n] is None]
    opts = dict(limit=256, epochs=1, batch_size=32, eval_train=False, optimizer="sgd", lr=0.05,
                activation="tanh", dropout=0.3)
    for name in names:
        m = train(config(small_mnist, tmp_path / name, kernels=name, **opts))
        assert m["config"]["activation"] == "tanh" and m["config"]["dropout"] == 0.3
    ref = weights(tmp_path / "numpy")
    for name in names:
        got = weights(tmp_path / name)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], atol=2e-4, err_msg=f"{name} {k}")
    other = train(config(small_mnist, tmp_path / "other-masks", seed=0, **dict(opts, dropout=0.31)))
    assert other["status"] == "finished"
    assert not np.allclose(weights(tmp_path / "other-masks")["w2"], ref["w2"], atol=1e-3)
    # resume, mid-epoch, on the per-op set and on the reference
    for name in ("numpy", REFERENCE):
        opts2 = dict(activation="tanh", dropout=0.2, optimizer="adam")
        train(config(small_mnist, tmp_path / f"full-{name}", kernels=name, **opts2))
        part = tmp_path / f"part-{name}"
        first = train(config(small_mnist, part, kernels=name, interrupt_after_steps=21, **opts2))
        assert first["status"] == "interrupted"
        meta = ckpt.load(part / "checkpoint.npz")["meta"]["config"]
        assert meta["activation"] == "tanh" and meta["dropout"] == 0.2
        train(Config(kernels=name, epochs=2, threads=1, quiet=True, resume=str(part / "checkpoint.npz"),
                     data_dir=str(small_mnist), download=False))
        wf, wr = weights(tmp_path / f"full-{name}"), weights(part)
        for k in wf:
            assert np.array_equal(wf[k], wr[k]), f"{name}: {k} differs after resuming"


def test_per_op_step_and_train_steps_use_the_same_masks():
    """KernelEngine.step (nn.model.MLP's op-by-op step) and ks.train_steps number the dropout
    masks alike: two steps either way give the same weights."""
    ks = kernels.get("numpy", threads=1)
    sizes = [20, 16, 8, 4]
    rng = np.random.default_rng(3)
    x, y = rng.random((64, 20)).astype(np.float32), rng.integers(0, 4, 64)
    results = []
    for fused in (False, True):
        from nn.model import init_params
        engine = KernelEngine(ks, sizes, init_params(sizes, "xavier", np.random.default_rng(0)), batch_size=32,
                              activation="tanh", dropout=0.5, seed=9, train=(x, y))
        order = np.arange(64)
        if fused:
            list(engine.epoch(order))
        else:
            for s in (0, 32):
                engine.step(engine.batches.order(order[s:s + 32]))
        results.append(engine.state()[0])
    for k in results[0]:
        np.testing.assert_allclose(results[0][k], results[1][k], rtol=1e-6, atol=1e-7, err_msg=k)


# ---------------------------------------------------------------------------- divergence


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(small_mnist, tmp_path, monkeypatch):
    real_epoch = KernelEngine.epoch
    calls = {"epochs": 0}

    def epoch_with_nan(self, order, start_batch=0, max_steps=None):
        calls["epochs"] += 1
        steps = 0
        for losses in real_epoch(self, order, start_batch, max_steps):
            if calls["epochs"] == 2 and steps <= 3 < steps + len(losses):
                losses = losses.copy()
                losses[3 - steps] = float("nan")
            steps += len(losses)
            yield losses

    monkeypatch.setattr(KernelEngine, "epoch", epoch_with_nan)
    with pytest.raises(TrainingDiverged) as info:
        train(config(small_mnist, tmp_path, epochs=3, checkpoint=True))
    msg = str(info.value)
    assert "nan at epoch 2, batch 4" in msg and "last good checkpoint" in msg and "checkpoint.npz" in msg
    kept = ckpt.load(tmp_path / "checkpoint.npz")
    assert kept["meta"]["epoch"] == 1 and all(np.isfinite(v).all() for v in kept["params"].values())
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


# ---------------------------------------------------------------------------- the step itself


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_steady_state_steps_reuse_their_buffers(name):
    require(name)
    from nn.model import init_params

    rng = np.random.default_rng(0)
    sizes = [20, 16, 8, 4]
    x = rng.random((100, 20), dtype=np.float32)
    y = rng.integers(0, 4, 100)
    engine = KernelEngine(kernels.get(name, threads=1), sizes, init_params(sizes, "he", rng), train=(x, y),
                          batch_size=32)
    params = [id(p) for p in engine.model.params]

    def per_op_epoch():  # the op-by-op step (nn.model.MLP), batch by batch: 32, 32, 32, 4
        idx = engine.batches.order(rng.permutation(100))
        return [engine.step(idx[start:start + 32]) for start in range(0, 100, 32)]

    per_op_epoch()                                              # two buffer sets: 32 and 4 rows
    buffers = {b: [id(a) for a in (buf.x, buf.y, *buf.acts, *buf.grad_acts)] for b, buf in engine.model._buffers.items()}
    losses = per_op_epoch()
    assert sorted(engine.model._buffers) == [4, 32]
    for b, buf in engine.model._buffers.items():
        assert [id(a) for a in (buf.x, buf.y, *buf.acts, *buf.grad_acts)] == buffers[b]
    assert [id(p) for p in engine.model.params] == params, "parameters are updated in place"
    assert len(losses) == 4 and all(np.isfinite(losses))


@pytest.mark.parametrize("name", ["numpy", REFERENCE])
def test_csv_dataset_end_to_end(name, tmp_path):
    images = gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())[16:]
    labels = gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:]
    pixels = np.frombuffer(images, np.uint8).reshape(-1, 784)
    rows = [",".join(map(str, [labels[i], *pixels[i]])) for i in range(350)]
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    (tmp_path / "digits_train.csv").write_text("\n".join([header, *rows[:300]]) + "\n")
    (tmp_path / "digits_test.csv").write_text("\n".join([header, *rows[300:]]) + "\n")
    m = train(config(tmp_path, tmp_path / "out", kernels=name, dataset=f"csv:{tmp_path / 'digits_train.csv'}",
                     limit=None, epochs=2))
    assert m["status"] == "finished" and m["data"]["train"] == 300 and m["data"]["test"] == 50
    assert m["test_accuracy"] > 0.5


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_checkpoints_move_between_the_reference_and_a_kernel_set(optimizer, small_mnist, tmp_path):
    """A torch-autograd checkpoint (weights transposed into (in, out), Adam's moments or SGD's
    velocity likewise) resumed on the numpy set continues as the numpy set would have."""
    opts = dict(optimizer=optimizer, eval_train=False)
    train(config(small_mnist, tmp_path / "full", **opts))
    part = tmp_path / "part"
    train(config(small_mnist, part, kernels=REFERENCE, epochs=1, **opts))
    train(Config(kernels="numpy", epochs=2, threads=1, quiet=True, resume=str(part / "checkpoint.npz"),
                 data_dir=str(small_mnist), download=False))
    want, got = weights(tmp_path / "full"), weights(part)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=2e-4, err_msg=k)
