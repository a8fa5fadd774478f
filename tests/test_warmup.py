"""The first run: the warm-up compiles what a run calls, before its first timed step; the
trainer reports it apart from its figures; ``python -m kernels warmup`` fills the cache that a
later process loads; bad arguments get one line.

Whether anything compiled is read from Numba's own compile events (kernels.warmup's
compile_progress: they fire only for a real compile, not for a load from the cache), never
from a timing. The tests in a fresh NUMBA_CACHE_DIR pay a cold compile in a subprocess.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import kernel_set, requires_mnist
from test_train import config, small_mnist  # noqa: F401  (the fixture)

from kernels.warmup import compile_progress, warm_up
from nn.train import setup, train

REPO = Path(__file__).resolve().parents[1]
NUMBA_SETS = ["numba", "numba-naive"]


def run(module, args, cwd, cache=None):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NN_DATA_MIRRORS="http://127.0.0.1:9/")
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = str(cache)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@requires_mnist()
@pytest.mark.parametrize("name, hidden, optimizer", [
    ("numba", (128, 64), "adam"), ("numba", (16,), "momentum"),
    ("numba-naive", (128, 64), "sgd"), ("numba-naive", (16,), "momentum")])
def test_warm_up_compiles_everything_the_run_calls(name, hidden, optimizer, small_mnist, tmp_path):
    # after the engine's warm-up, a whole epoch and its evaluation compile nothing: the tiny
    # arrays of the warm-up have the run's types (dtype, layer count, optimizer state)
    kernel_set(name)
    run_ = setup(config(small_mnist, tmp_path, kernels=name, hidden=hidden, optimizer=optimizer, limit=64))
    run_.engine.warm_up()
    with compile_progress("test") as seen:
        for _ in run_.engine.epoch(run_.rng.permutation(len(run_.train_idx))):
            pass
        run_.engine.evaluate("test")
    assert seen.compiled == []


def test_warm_up_rejects_bad_arguments():
    ks = kernel_set("numpy")
    for kw, words in [(dict(dtype="float16"), "float32 or float64"), (dict(layers=0), "layers"),
                      (dict(optimizer="rmsprop"), "optimizer"), (dict(ops=("conv",)), "unknown op")]:
        with pytest.raises(ValueError, match=words):
            warm_up(ks, **kw)


@requires_mnist()
@pytest.mark.parametrize("name", ["numpy", "torch-autograd"])
def test_metrics_report_the_warm_up_apart(name, small_mnist, tmp_path):
    m = train(config(small_mnist, tmp_path, kernels=name, epochs=1))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["compile_seconds"] == m["compile_seconds"] >= 0
    assert saved["compiled_functions"] == 0          # nothing of numpy or torch is Numba-compiled
    assert "compile_seconds" not in saved["epochs"][0]


def test_compare_reads_metrics_without_compile_seconds(monkeypatch, tmp_path):
    # metrics from before the warm-up was timed apart still make a row, marked n/a
    import nn.compare as compare
    from nn.train import Config

    old = {"test_accuracy": 0.8, "seconds_per_epoch": 2.0, "samples_per_second": 500.0, "epochs": [],
           "environment": {"threads": 1, "cpu": "x", "cores": 1, "versions": {}}}
    monkeypatch.setattr(compare, "_train", lambda cfg: old)
    base = Config(lr=1e-3)
    rows, skipped = compare.run_all(base, ["numpy"], tmp_path, log=lambda m: None)
    assert rows[0]["compile_seconds"] is None
    assert "| numpy | 80.00% | 2.000 | 500 | n/a | n/a |" in compare.table(rows, base, skipped)


# ---------------------------------------------------------------- in a fresh cache


@requires_mnist()
@pytest.mark.slow
def test_warmup_command_fills_the_cache_the_trainer_loads(small_mnist, tmp_path):
    # numba-naive: the same mechanism as numba's for a few seconds of compile, not tens
    kernel_set("numba-naive")
    cache = tmp_path / "numba-cache"
    warm = run("kernels", ["warmup", "--sets", "numba-naive", "--threads", "1"], tmp_path, cache)
    assert warm.returncode == 0, warm.stderr
    assert "compiling the numba-naive kernels (float32, 3 layers): first run only" in warm.stderr
    assert "numba-naive float32, 3 layers: compiled" in warm.stdout
    trained = run("nn.train", ["--kernels", "numba-naive", "--dataset", "mnist", "--data-dir", str(small_mnist),
                               "--limit", "64", "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "run")],
                  tmp_path, cache)
    assert trained.returncode == 0, trained.stderr
    assert "compiling" not in trained.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["compiled_functions"] == 0


@requires_mnist()
@pytest.mark.slow
def test_cold_cache_run_trains_and_says_so(small_mnist, tmp_path):
    # a first run in an empty cache: announced, compiled before the first step, counted apart,
    # and it trains as well as a warm one; then the warm-up command finds it all compiled
    kernel_set("numba")
    cache = tmp_path / "numba-cache"
    args = ["--kernels", "numba", "--dataset", "mnist", "--data-dir", str(small_mnist), "--limit", "512",
            "--epochs", "2", "--batch-size", "32", "--threads", "1"]
    cold = run("nn.train", [*args, "--out", str(tmp_path / "cold")], tmp_path, cache)
    assert cold.returncode == 0, cold.stderr
    assert "compiling the numba kernels (float32, 3 layers): first run only, cached afterwards" in cold.stderr
    metrics = json.loads((tmp_path / "cold" / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["test_accuracy"] > 0.7
    assert metrics["compiled_functions"] > 0 and metrics["compile_seconds"] > 0
    assert f"compiling {metrics['compiled_functions']} functions took" in cold.stdout
    # the same run in a warm cache (the project's): the same losses, step for step
    warm = train(config(small_mnist, tmp_path / "warm", kernels="numba"))
    np.testing.assert_array_equal([e["train_loss"] for e in metrics["epochs"]],
                                  [e["train_loss"] for e in warm["epochs"]])
    again = run("kernels", ["warmup", "--sets", "numba", "--threads", "1"], tmp_path, cache)
    assert again.returncode == 0, again.stderr
    assert "numba float32, 3 layers: already compiled" in again.stdout and "compiling" not in again.stderr


@pytest.mark.parametrize("args, words", [
    ([], ["required", "COMMAND"]),
    (["warmup", "--sets", "nope"], ["unknown kernel set(s) 'nope'", "numba"]),
    (["warmup", "--dtype", "float16"], ["--dtype", "float32"]),
    (["warmup", "--layers", "0"], ["--layers", "at least 1"]),
    (["warmup", "--layers", "3,x"], ["--layers", "whole numbers"]),
    (["warmup", "--threads", "0"], ["--threads"]),
    (["warmup", "--optimizer", "rmsprop"], ["--optimizer", "rmsprop"]),
    (["compile"], ["invalid choice", "warmup"]),
])
def test_warmup_command_bad_arguments(args, words, tmp_path):
    result = run("kernels", args, tmp_path)
    assert "Traceback" not in result.stderr and result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
