"""The benchmark tooling around pytest-benchmark: the JSON trimming, the step profile and the
report, run end to end on a small real benchmark run so that they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import trim_benchmark_json
from bench.profile_step import profile
from bench.report import write_report

ROOT = Path(__file__).resolve().parent.parent


def test_trim_keeps_the_statistics_and_drops_the_raw_rounds(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": [{"name": "x", "stats": {"median": 1.5, "data": [1.0, 1.5, 2.0]}}]}))
    trim_benchmark_json(path)
    stats = json.loads(path.read_text())["benchmarks"][0]["stats"]
    assert stats == {"median": 1.5}
    assert not list(tmp_path.glob("*.tmp"))


def test_profile_splits_a_step_into_its_layers():
    row = profile("numpy", batch=4, threads=1, n_steps=5, repeats=1)
    assert row["ops_per_step"] == 13  # 3 linear, the loss, 3 linear_backward, 6 sgd_step
    assert row["kernels_us"] > 0 and row["front_us"] > 0 and row["rest_us"] >= 0
    assert row["total_us"] > 0 and row["samples_per_s"] > 0


@pytest.mark.slow
def test_report_from_a_real_benchmark_run(tmp_path):
    """A short timed run of a few benchmarks, then the report built from its JSON."""
    out = tmp_path / "bench-cpu.json"
    cmd = [sys.executable, "-m", "pytest", "bench/bench_ops.py", "-q", "-p", "no:cacheprovider",
           "--benchmark-enable", "--benchmark-max-time=0.001", "--benchmark-min-rounds=1",
           "--bench-threads=1", "-k", "relu and not backward and (numpy or torch) and not cuda",
           "--benchmark-json", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    trim_benchmark_json(out)
    report = write_report(tmp_path)
    text = report.read_text()
    assert "## Targets" in text and "relu" in text
    assert "no `bench-gpu.json`" in text
