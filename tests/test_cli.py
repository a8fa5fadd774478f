"""Every bad command-line input to ``python -m nn.train`` gets one clear line on stderr and a
non-zero exit status, never a traceback. Each case runs the real command in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_mnist
from test_train import small_mnist  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]

pytestmark = requires_mnist()


def run(args, cwd, module="nn.train"):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NN_DATA_MIRRORS="http://127.0.0.1:9/")          # never the real network
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def assert_one_line_error(result, *words, status=None):
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode != 0 if status is None else result.returncode == status, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def small(data_dir):
    return ["--dataset", "mnist", "--data-dir", str(data_dir), "--limit", "64", "--epochs", "1", "--quiet",
            "--threads", "1"]


@pytest.mark.parametrize("args, words", [
    (["--kernels", "nope"], ["unknown kernel set 'nope'", "numpy", "torch-autograd"]),
    (["--batch-size", "0"], ["--batch-size 0", "at least 1"]),
    (["--lr", "-0.1"], ["--lr -0.1", "positive"]),
    (["--lr", "fast"], ["--lr", "'fast' is not a number"]),
    (["--hidden", "128,x"], ["--hidden", "comma-separated"]),
    (["--hidden", "128,,64"], ["--hidden", "comma-separated"]),
    (["--hidden", "128,0"], ["--hidden", "at least 1 unit"]),
    (["--epochs", "0"], ["--epochs 0"]),
    (["--epochs", "two"], ["--epochs", "whole number"]),
    (["--val-split", "1.5"], ["--val-split 1.5"]),
    (["--optimizer", "rmsprop"], ["--optimizer", "rmsprop"]),
    (["--weight-decay", "-1"], ["--weight-decay"]),
    (["--threads", "0"], ["--threads 0"]),
    (["--dataset", "cifar"], ["--dataset 'cifar'", "fashion-mnist"]),
    (["--resume", "missing.npz"], ["checkpoint missing.npz does not exist"]),
    (["--kernels", "numpy", "--device", "cuda"], ["CPU only"]),
    (["--kernels", "torch", "--device", "cuda:99"], ["cuda"]),
    (["--kernels", "torch-autograd", "--device", "cuda:99"], ["cuda"]),
    (["--bogus"], ["unrecognized arguments: --bogus"]),
    (["--dropout", "-0.1"], ["--dropout -0.1", "[0, 1)"]),
    (["--dropout", "1"], ["--dropout 1", "[0, 1)"]),
    (["--dropout", "1.5"], ["--dropout 1.5", "[0, 1)"]),
    (["--dropout", "nan"], ["--dropout nan", "[0, 1)"]),
    (["--dropout", "half"], ["--dropout", "'half' is not a number"]),
    (["--activation", "sigmoid"], ["--activation", "sigmoid", "relu", "tanh"]),
])
def test_bad_option(args, words, small_mnist, tmp_path):
    assert_one_line_error(run([*small(small_mnist), *args], tmp_path), *words, status=2)


def test_missing_data_offline(tmp_path):
    # nothing in --data-dir or ./data, and every mirror unreachable
    result = run(["--dataset", "mnist", "--data-dir", str(tmp_path / "empty"), "--quiet"], tmp_path)
    assert_one_line_error(result, "MNIST is not installed and could not be downloaded", "--data-dir", status=2)
    assert not list((tmp_path / "empty").iterdir())


def test_corrupt_data_file(small_mnist, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in small_mnist.iterdir():
        content = f.read_bytes()
        (broken / f.name).write_bytes(content[: len(content) // 2] if "train-images" in f.name else content)
    assert_one_line_error(run(small(broken), tmp_path), "train-images-idx3-ubyte.gz", "truncated or corrupt", status=2)


def test_swapped_data_files(small_mnist, tmp_path):
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for f in small_mnist.iterdir():
        other = f.name.replace("images-idx3", "X").replace("labels-idx1", "images-idx3").replace("X", "labels-idx1")
        (swapped / other).write_bytes(f.read_bytes())
    assert_one_line_error(run(small(swapped), tmp_path), "magic number", status=2)


def test_csv_with_non_numeric_cells(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("label," + ",".join(f"p{i}" for i in range(784)) + "\n"
                    + "3," + ",".join(["0"] * 783 + ["n/a"]) + "\n")
    assert_one_line_error(run(["--dataset", f"csv:{path}", "--quiet"], tmp_path), "train.csv", "n/a", status=2)


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "checkpoint.npz"
    bad.write_text("not a checkpoint")
    assert_one_line_error(run(["--resume", str(bad)], tmp_path), "cannot be read", status=2)


def test_resume_refuses_to_change_the_training(small_mnist, tmp_path):
    out = tmp_path / "run"
    ok = run([*small(small_mnist), "--out", str(out)], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "test accuracy" in ok.stdout
    result = run(["--resume", str(out / "checkpoint.npz"), "--lr", "0.5"], tmp_path)
    assert_one_line_error(result, "--resume", "--lr", status=2)


def test_diverging_run_stops_with_a_message(small_mnist, tmp_path):
    result = run([*small(small_mnist), "--epochs", "3", "--batch-size", "8", "--optimizer", "sgd", "--lr", "1e8",
                  "--out", str(tmp_path / "run")], tmp_path)
    assert_one_line_error(result, "loss became", "--lr", status=1)


def test_compare_rejects_an_unknown_set(tmp_path):
    assert_one_line_error(run(["--sets", "numpy,nope"], tmp_path, module="nn.compare"), "nope", status=2)


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(small_mnist, tmp_path):
    """A real SIGINT: the run finishes its step, writes a checkpoint, says how to resume, exits 130."""
    import signal
    import time

    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ["--dataset", "mnist", "--data-dir", str(small_mnist), "--epochs", "500", "--batch-size", "8",
            "--no-eval-train", "--quiet", "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "nn.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.json").exists():                # written after the first epoch
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: checkpoint saved to" in stderr
    from nn import checkpoint as ckpt

    at = ckpt.load(out / "checkpoint.npz")["meta"]["epoch"]
    assert at >= 1
    resumed = run(["--resume", str(out / "checkpoint.npz"), "--epochs", str(at + 1), "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "test accuracy" in resumed.stdout
    # asking for no more epochs than the checkpoint has done is a usage error, not a crash
    done = run(["--resume", str(out / "checkpoint.npz"), "--epochs", "1"], tmp_path)
    assert_one_line_error(done, "already at epoch", status=2)


def test_compare_writes_table_json_and_plot(small_mnist, tmp_path):
    import json

    result = run(["--sets", "numpy,torch-autograd", *small(small_mnist), "--limit", "128",
                  "--results", str(tmp_path / "results")], tmp_path, module="nn.compare")
    assert result.returncode == 0, result.stderr
    md = (tmp_path / "results" / "compare.md").read_text()
    assert "| numpy |" in md and "| torch-autograd |" in md and "1.00x" in md
    rows = json.loads((tmp_path / "results" / "compare.json").read_text())["rows"]
    assert [r["kernels"] for r in rows] == ["numpy", "torch-autograd"]
    assert all(0 <= r["test_accuracy"] <= 1 and r["samples_per_second"] > 0 for r in rows)
    # what a run pays once (a compile, torch's set-up) is a column of its own, in no other
    assert "compile, once (s)" in md and all(r["compile_seconds"] >= 0 for r in rows)
    assert (tmp_path / "results" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((tmp_path / "results" / "runs").glob("compare-*/numpy/metrics.json"))) == 1
