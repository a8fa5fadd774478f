"""The benchmark tooling around pytest-benchmark: the JSON trimming, the step profile and the
report, run end to end on a small real benchmark run so that they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_cli_refuses

import kernels
from bench.__main__ import other_paths, trim_benchmark_json
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


class _FakeClock:
    """A clock that only moves when a fake side runs or the code sleeps; sides in the slow
    window (a disturbance) take ten times as long."""

    def __init__(self, slow_from=None, slow_to=None):
        self.now, self.slow = 0.0, (slow_from, slow_to)
        self.log = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.log.append("sleep")
        self.now += seconds

    def side(self, label, seconds):
        def fn():
            lo, hi = self.slow
            factor = 10.0 if lo is not None and lo <= self.now < hi else 1.0
            self.log.append(label)
            self.now += seconds * factor
        return fn


def test_alternate_takes_turns_and_quotes_the_median_round():
    from bench.paired import Side, alternate

    clock = _FakeClock()
    a, b = Side("a", clock.side("a", 3e-3), "pool-a"), Side("b", clock.side("b", 1e-3), "pool-b")
    row = alternate(a, b, rounds=4, scale=0.5, min_turn=6e-3, settle=1.0, clock=clock, sleep=clock.sleep)
    assert row["calls"] == [2, 6]  # calls to fill 6 ms: 2 of a, 6 of b
    assert row["a_s"] == pytest.approx(3e-3) and row["b_s"] == pytest.approx(1e-3)
    assert row["value"] == pytest.approx(1.5) and row["values"] == pytest.approx([1.5] * 4)
    # calibration: a pause, a warm call and three timed ones for each side; then turns
    # A B | B A | A B | B A, each turn an untimed call then the timed ones, with a pause
    # wherever the pool changes
    log = "".join("|" if e == "sleep" else e for e in clock.log)
    assert log[:10] == "|aaaa|bbbb"
    assert log[10:] == "|aaa|bbbbbbbbbbbbbb|aaaaaa|bbbbbbbbbbbbbb|aaa"


def test_alternate_sizes_turns_from_an_undisturbed_call():
    """A side whose first timed call is slowed (another pool still spinning) still gets turns
    of many calls: the fastest calibration call sizes them."""
    from bench.paired import Side, alternate

    clock = _FakeClock(slow_from=1e-3, slow_to=4e-3)   # a's first timed call is 10x slower
    a, b = Side("a", clock.side("a", 1e-3), "pool-a"), Side("b", clock.side("b", 2e-4), "pool-b")
    row = alternate(a, b, rounds=2, min_turn=2e-3, settle=0.0, clock=clock, sleep=clock.sleep)
    assert row["calls"] == [2, 10]


def test_alternate_keeps_the_ratio_through_a_disturbance():
    from bench.paired import Side, alternate

    clock = _FakeClock(slow_from=0.05, slow_to=0.2)  # both sides 10x slower for a while
    a, b = Side("a", clock.side("a", 4e-3), "p"), Side("b", clock.side("b", 2e-3), "p")
    row = alternate(a, b, rounds=15, min_turn=4e-3, settle=0.0, clock=clock, sleep=clock.sleep)
    assert "sleep" not in clock.log  # one pool: no pauses
    assert max(row["values"]) > 2.0 or min(row["values"]) < 2.0  # some rounds straddle the window
    assert row["value"] == pytest.approx(2.0)


@pytest.mark.slow
def test_paired_measures_every_target_and_the_report_judges_it(tmp_path):
    import json as _json

    from bench.paired import measure, summary

    result = measure(sets=["cython"], threads=1, quick=True, log=lambda *a, **k: None, settle=0.0)
    keys = {row["key"] for row in result["rows"]}
    assert keys == {"matmul-2048", "shapes", "relu", "relu_backward", "epilogue", "epilogue-tanh", "tanh",
                    "softmax_cross_entropy-128x10", "softmax_cross_entropy-512x100", "epoch-b128", "epoch-b1",
                    "perop-b128"}
    assert result["isa"]["cython"] == kernels.get("cython").isa   # the path it ran, on record
    for row in result["rows"]:
        assert row["set"] == "cython" and len(row["values"]) == row["rounds"] == 3
        assert row["a_s"] > 0 and row["b_s"] > 0 and 0 < row["value"] < float("inf")
    folded = summary(result)
    for key in ("epilogue", "epilogue-tanh", "shapes"):   # several shapes, one geometric mean
        assert (key, "cython") in folded and len([k for k in folded if k[0] == key]) == 1

    # the report judges a target on the alternating-turn figure and quotes the suite's beside it
    (tmp_path / "bench-cpu.json").write_text(_json.dumps({"benchmarks": []}))
    paired = {"rows": [{"key": "epoch-b1", "set": s, "what": f"epoch b1 numpy / {s}", "value": v,
                        "values": [v], "rounds": 1, "a": "numpy", "b": s, "a_s": 1.0, "b_s": 1.0 / v}
                       for s, v in (("numba", 12.5), ("cython", 31.25))]}
    (tmp_path / "paired.json").write_text(_json.dumps(paired))
    text = write_report(tmp_path).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| SGD epoch b1: best compiled vs numpy"))
    assert "| 31.25 | ≥ 20 | **met** |" in row and "alternating turns" in row and "best: cython" in row
    assert "## Side by side in alternating turns" in text


@pytest.mark.parametrize(("args", "says"), [
    (["--sets", "numba,nope"], "unknown set(s) nope; expected a comma-separated list of numba, cython, torch"),
    (["--sets", ""], "unknown set(s) (none given)"),
    (["--threads", "0"], "--threads must be 1 or more, got 0"),
    (["--keys", "shapez"], "--keys: unknown pair(s) shapez; expected keys or families of matmul"),
    (["--keys", ""], "--keys: unknown pair(s) (none given)"),
])
def test_paired_refuses_bad_arguments_with_a_message(args, says, tmp_path):
    assert_cli_refuses("bench.paired", args, says, tmp_path / "paired.json")


def _pair(key, s, value, a_s):
    return {"key": key, "set": s, "what": f"{key} numpy / {s}", "value": value, "values": [value], "rounds": 1,
            "a": "numpy", "b": s, "a_s": a_s, "b_s": a_s / value}


def test_the_report_sets_the_paths_side_by_side_and_says_what_2x_would_take(tmp_path):
    """paired.json (the CPU's best path) and paired-avx2.json (forced): one column each, a target
    judged per path, and the batch-128 step set against its dense arithmetic at OpenBLAS's rate."""
    (tmp_path / "bench-cpu.json").write_text(json.dumps({"benchmarks": []}))
    runs = {"paired.json": ("avx512", "openblas:SkylakeX", 2.2, 0.10),
            "paired-avx2.json": ("avx2", "openblas:Haswell", 1.4, 0.20)}
    for name, (path, blas, epoch, t2048) in runs.items():
        rows = [_pair("matmul-2048", s, 0.95, t2048) for s in ("numba", "cython")]
        rows += [_pair("epoch-b128", "cython", epoch, 0.3), _pair("epoch-b128", "numba", 1.1, 0.3)]
        (tmp_path / name).write_text(json.dumps({"threads": 2, "rows": rows,
                                                 "isa": {"numpy": blas, "numba": path, "cython": path}}))
    text = write_report(tmp_path).read_text()
    assert "## Per instruction-set path" in text
    head = next(line for line in text.splitlines() if line.startswith("| target | threshold"))
    assert "avx512 path (numpy: openblas:SkylakeX)" in head and "avx2 path (numpy: openblas:Haswell)" in head
    row = next(line for line in text.splitlines() if "train_steps epoch at batch 128" in line)
    assert "2.20 (cython) met" in row and "1.40 (cython) **not met**" in row
    # 2 * 2048^3 flops in 0.2 s: 86 GFLOP/s, at which a step's 58 MFLOP take 677 us; numpy's step
    # 0.3 s / 469 steps = 640 us (91 GFLOP/s), cython's 457 us (127); 2x numpy asks 182, 212% of 86
    budget = next(line for line in text.splitlines() if line.startswith("*avx2 path"))
    for said in ("at 86 GFLOP/s", "take 677 µs", "took 640 µs (91 GFLOP/s)", "cython's 457 µs (127 GFLOP/s",
                 "148% of OpenBLAS", "asks 182 GFLOP/s dense-equivalent, 212% of it"):
        assert said in budget, (said, budget)


def test_python_m_bench_measures_the_other_tuned_paths_against_their_openblas_kernel(monkeypatch):
    from kernels import _isa

    monkeypatch.delenv(_isa.ENV, raising=False)
    paths = dict(other_paths())
    assert set(paths) == {p for p in _isa.supported()[1:] if p != "generic"}
    if "avx2" in paths:
        assert paths["avx2"][_isa.ENV] == "avx2" and paths["avx2"]["OPENBLAS_CORETYPE"] == "Haswell"
    monkeypatch.setenv(_isa.ENV, "generic")
    assert other_paths() == []   # a forced run measures its own path only
