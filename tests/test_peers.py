"""The peers (bench/peers.py) do the same work as the sets' train_steps, and the tooling that
times them (bench/peers_run.py) and reports them (bench/peers_report.py) works: structure and
fake clocks only, no timing asserted."""

import numpy as np
import pytest
from conftest import assert_cli_refuses

from bench import peers as P
from bench import peers_report
from bench import peers_run as R

SIZES = [784, 24, 16, 10]
BATCH, STEPS = 16, 12


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    x = rng.random((400, 784), dtype=np.float32)
    x[x < 0.5] = 0.0  # half background, as Fashion-MNIST
    return x, rng.integers(0, 10, 400).astype(np.int64)


def _trained(name, data, optimizer, lr):
    from nn.model import init_params

    reason = P.unavailable(name)
    if reason is not None:
        pytest.skip(reason)
    x, y = data
    order = np.random.default_rng(2).permutation(len(y))[:BATCH * STEPS]
    trainer = P.make(name, SIZES, init_params(SIZES, "he", np.random.default_rng(0)), x, y, batch=BATCH,
                     optimizer=optimizer, lr=lr, threads=1, samples_per_call=BATCH * 5)  # 3 calls: 5, 5, 2 steps
    trainer.train(order[:BATCH * 7])
    trainer.train(order[BATCH * 7:])  # resumes: Adam's step count carries over
    return trainer.params()


# SGD at the benchmarks' rate; Adam amplifies float32 rounding where a gradient is near zero
# (m / sqrt(v)), hence its looser bound, still far below how far the parameters move.
@pytest.mark.slow
@pytest.mark.parametrize("optimizer,lr,atol", [("sgd", 0.05, 2e-6), ("adam", 1e-3, 5e-5)])
@pytest.mark.parametrize("name", P.TRAINERS[1:])
def test_every_trainer_ends_where_the_numpy_set_does(name, optimizer, lr, atol, data):
    from nn.model import init_params

    want = _trained("numpy", data, optimizer, lr)
    got = _trained(name, data, optimizer, lr)
    start = init_params(SIZES, "he", np.random.default_rng(0))
    assert max(float(np.abs(w - s).max()) for w, s in zip(want, start)) > 50 * atol, "training did not move"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == np.float32, f"param {i}: {g.shape} {g.dtype}"
        np.testing.assert_allclose(g, w, rtol=0, atol=atol, err_msg=f"{name} {optimizer}: param {i}")


def test_a_partial_batch_is_refused_with_a_message(data):
    x, y = data
    trainer = P.make("numpy", SIZES, [np.zeros((i, o), np.float32) if k == 0 else np.zeros(o, np.float32)
                                      for i, o in zip(SIZES[:-1], SIZES[1:]) for k in (0, 1)], x, y, batch=BATCH)
    with pytest.raises(ValueError, match="whole batches"):
        trainer.train(np.arange(BATCH + 1))


def test_unknown_trainers_and_variants_say_what_exists(data):
    assert "expected one of" in P.unavailable("tensorflow")
    with pytest.raises(RuntimeError, match="cannot run here"):
        P.make("tensorflow", SIZES, [], *data, batch=1)
    assert "expected one of" in P.adam_unavailable("torch-magic")


def test_adam_variants_step_the_parameters():
    for variant in ("numpy", "torch-fused"):
        if P.adam_unavailable(variant):
            continue
        step, _ = P.make_adam(variant, SIZES, threads=1)
        step()
        step()


# ---------------------------------------------------------------- the driver, on fake workers


class FakeWorker:
    def __init__(self, name, seconds, log):
        self.name, self.seconds, self.log = name, seconds, log

    def time(self, units):
        self.log.append(self.name)
        return units * self.seconds.pop(0)


def test_turns_alternate_with_a_pause_before_each():
    log, pauses = [], []
    workers = {n: FakeWorker(n, [1.0, 2.0, 4.0], log) for n in ("a", "b", "c")}
    rates = R.alternate(workers, {"a": 10, "b": 20, "c": 30}, rounds=3, settle=0.5, sleep=pauses.append)
    assert log == list("abccbaabc")
    assert pauses == [0.5] * 9
    assert rates == {n: [1.0, 0.5, 0.25] for n in "abc"}  # units / (units * seconds a unit)


def test_the_ratio_is_the_median_of_each_rounds_best_set_over_strongest_peer():
    rates = {"numpy": [500, 500, 500], "numba": [100, 300, 150], "cython": [200, 150, 250],
             "jax": [100, 200, 50], "torch-eager": [50, 300, 100]}
    cell = R.judge(rates)
    assert cell["values"] == [2.0, 1.0, 2.5]  # numpy is left out while a compiled set is there
    assert cell["value"] == 2.0
    assert cell["best_set"] == "cython" and cell["best_peer"] == "jax"  # by median samples/s
    assert "value" not in R.judge({"numpy": [1.0], "numba": [2.0]})  # no peer: no ratio


class FakeProcess:
    """A worker's face for measure_cell: set up (or fail to), then time at a fixed rate."""

    def __init__(self, rate, fails=False):
        self.rate, self.fails = rate, fails

    def ask(self, **msg):
        if self.fails:
            raise R.PeerError("worker 'jax': RuntimeError: no")
        return {"isa": "avx512", "chunk": 64, "setup_s": 0.0}

    def time(self, units):
        return units / self.rate


def test_a_cell_goes_on_without_a_trainer_that_fails():
    workers = {"numba": FakeProcess(1000.0), "jax": FakeProcess(1.0, fails=True), "torch-eager": FakeProcess(500.0)}
    cell = R.measure_cell(workers, (784, 16, 10), 8, rounds=3, turn_s=0.1, settle=0.0, samples_per_call=64,
                          sleep=lambda s: None, log=lambda *a, **k: None)
    assert cell["trainers"]["jax"] == {"error": "worker 'jax': RuntimeError: no"}
    assert set(cell["rates"]) == {"numba", "torch-eager"}
    assert cell["trainers"]["numba"]["units"] == 128  # 100 samples a turn: the nearest whole chunks, two
    assert cell["trainers"]["torch-eager"]["units"] == 48  # 50 samples: less than a chunk, whole steps of 8
    assert cell["value"] == 2.0 and cell["best_peer"] == "torch-eager"


def test_a_turn_is_whole_chunks_or_whole_steps():
    assert R.turn_units(128, 4096, 40960, 0.5) == 5 * 4096     # 0.1 s a chunk: five of them
    assert R.turn_units(128, 4096, 2048, 0.5) == 1024          # 2 s a chunk: whole steps of half a second
    assert R.turn_units(512, 4096, 10, 0.5) == 512             # one step at least
    assert R.probe_units(1, 4096) == 256 and R.probe_units(512, 4096) == 512 and R.probe_units(8, 64) == 64
    assert R.flops_per_sample([784, 128, 64, 10]) == 2.0 * (2 * (784 * 128 + 128 * 64 + 64 * 10) + 128 * 64 + 64 * 10)


def test_sizes_are_parsed_or_refused():
    assert R.parse_sizes("784-128-64-10") == (784, 128, 64, 10)
    for bad in ("784", "784-x-10", "784--10", "784-0-10"):
        with pytest.raises(ValueError, match="784-128-64-10"):
            R.parse_sizes(bad)


@pytest.mark.parametrize("args,message", [(["--sizes", "784-abc"], "layer widths"),
                                          (["--trainers", "tensorflow"], "expected a comma-separated"),
                                          (["--batches", "0"], "positive"), (["--threads", "0"], "1 or more")])
def test_the_command_line_refuses_bad_options(args, message, tmp_path):
    assert_cli_refuses("bench.peers_run", args, message, tmp_path / "peers.json")


@pytest.mark.slow
def test_a_worker_answers_in_its_own_process():
    w = R.Worker("numpy", threads=1)
    try:
        setup = w.ask(cmd="train", trainer="numpy", sizes=[784, 16, 10], batch=8, samples_per_call=64)
        assert setup["chunk"] == 64 and setup["isa"]
        assert w.time(64) > 0
        with pytest.raises(R.PeerError, match="unknown command"):
            w.ask(cmd="dance")
        with pytest.raises(R.PeerError, match="do not fit the data"):
            w.ask(cmd="train", trainer="numpy", sizes=[100, 16, 10], batch=8)
        assert w.ask(cmd="adam", variant="numpy", sizes=[784, 16, 10])["chunk"] == 1
        assert w.time(3) > 0
    finally:
        w.close()
    assert w.proc.returncode == 0


# ---------------------------------------------------------------- the report


def _fake_peers(quick=False):
    cells = []
    for sizes in ([784, 64, 10], [784, 128, 64, 10]):
        for b, r in ((1, 3.0), (128, 0.8)):
            rates = {"numpy": [1000.0] * 3, "cython": [3000.0 * r] * 3, "numba": [2000.0] * 3,
                     "jax": [3000.0] * 3, "torch-compile": [900.0] * 3, "torch-reference": [100.0] * 3}
            cells.append({"sizes": sizes, "batch": b, "flops_per_sample": R.flops_per_sample(sizes), "rounds": 3,
                          "rates": rates, "trainers": {"cython": {"isa": "avx512"}, "numpy": {"isa": "openblas:X"}},
                          **R.judge(rates)})
    adam = {"sizes": [784, 128, 64, 10], "rounds": 3, "rows": {
        v: {"us": us, "us_rounds": [us] * 3, "isa": None, "what": P.ADAM_WHAT[v]}
        for v, us in (("numba", 150.0), ("torch", 700.0), ("torch-fused", 250.0))}}
    return {"threads": 2, "quick": quick, "machine": {"cpu": "Test CPU", "cores": 2}, "lr": 0.05, "cells": cells,
            "what": {t: P.WHAT[t] for t in ("numpy", "numba", "cython", "jax", "torch-compile")},
            "skipped": {"torch-eager": "not here"}, "adam": adam}


def test_the_report_section_leads_with_the_strongest_peer(tmp_path):
    peers = _fake_peers()
    made = peers_report.charts(peers, {"sgemm_gflops": 100.0}, tmp_path)
    assert {p.name for p in made.values()} == {"peers_heatmap.png", "peers_time_vs_flops.png"}
    assert all(p.stat().st_size > 0 for p in made.values()) and not list(tmp_path.glob(".*tmp"))
    text = peers_report.section(peers, {1: 1900.0, 128: 16000.0}, {"sgemm_gflops": 100.0}, made)
    assert "Test CPU, 2 threads; numpy: openblas:X; numba: path not reported; cython: avx512" in text
    assert "| 1 | `jax` 3,000 | `cython` 9,000 | **3.00×** |" in text
    assert "≥ 2.5: met" in text and "≥ 1.2: not met" in text
    assert "| 100 (sets 90×) |" in text  # the DataLoader trainer, as context, never the strongest peer
    del peers["cells"][3]["rates"]["torch-reference"], peers["cells"][3]["median"]["torch-reference"]  # b128
    assert "| 16,000 (suite) |" in peers_report.section(peers, {1: 1900.0, 128: 16000.0})
    assert "lead in 2 of 4 cells" in text
    assert "`numba`'s `adam_step` against `torch.optim.Adam(fused=True)`: **1.67×**" in text
    assert "Provisional" not in text and "Provisional" in peers_report.section(_fake_peers(quick=True))
    assert "Not measured in this run" in peers_report.section(None)
    assert "busy" not in text
    peers["cells"][0]["load"] = [1.2, 4.5]
    assert "load average reached 4.5 on 2 cores (1 of 5 measurements" in peers_report.section(peers)


def test_without_jax_its_trainer_is_skipped_with_how_to_install(monkeypatch):
    real = P.importlib.util.find_spec
    monkeypatch.setattr(P.importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))
    assert "pip install -e .[peers]" in P.unavailable("jax")
    assert P.unavailable("torch-compile") is None
    with pytest.raises(RuntimeError, match=r"pip install -e \.\[peers\]"):
        P.make("jax", SIZES, [], np.zeros((1, 784), np.float32), np.zeros(1, np.int64), batch=1)
