"""The thread pools' wait-policy defaults (issue 15, kernels/_runtimes.py): with
KERNELS_QUIET_POOLS=1, set by ``import kernels`` when it comes first, never over the user's own
values, and reported truthfully when it came too late; without it, nothing is set. Each case runs in a fresh Python: the policies are read at library load, so
only a new process shows what a program would get. No timing is asserted here (bench/mixing.py
measures what the defaults buy)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_cli_refuses

from kernels._runtimes import DEFAULTS, ENV

ROOT = Path(__file__).resolve().parent.parent


def _fresh(code: str, **env_over) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in DEFAULTS and k != ENV}
    env.update(env_over)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


REPORT = "import json, os, kernels; print(json.dumps([kernels.runtime_report(), {k: os.environ.get(k) for k in %r}]))" % (
    list(DEFAULTS),)


def _report(code_before: str = "", **env_over):
    proc = _fresh(code_before + REPORT, **env_over)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_first_sets_every_default():
    report, env = _report(**{ENV: "1"})
    assert report["defaults_enabled"] is True
    for var, (value, *_rest) in DEFAULTS.items():
        assert env[var] == value
        assert report["variables"][var]["source"] == "kernels"
        assert report["variables"][var]["too_late"] == []


def test_the_users_values_are_kept():
    report, env = _report(OMP_WAIT_POLICY="active", OPENBLAS_THREAD_TIMEOUT="20", **{ENV: "1"})
    assert env == {"OMP_WAIT_POLICY": "active", "OPENBLAS_THREAD_TIMEOUT": "20"}
    assert {v["source"] for v in report["variables"].values()} == {"user"}


@pytest.mark.parametrize("setting", [None, "0"])
def test_by_default_nothing_is_set(setting):
    report, env = _report(**({} if setting is None else {ENV: setting}))
    assert report["defaults_enabled"] is False
    assert all(value is None for value in env.values())
    assert {v["source"] for v in report["variables"].values()} == {"library default"}


def test_numpy_imported_first_is_reported_too_late():
    report, _ = _report("import numpy\n", **{ENV: "1"})
    assert report["variables"]["OPENBLAS_THREAD_TIMEOUT"]["too_late"] == ["numpy"]
    assert report["variables"]["OMP_WAIT_POLICY"]["too_late"] == []  # numpy loads no libgomp


def test_libgomp_reads_the_default():
    """The OpenMP runtime the cython set runs on really got the policy (libgomp prints what it
    read at load under OMP_DISPLAY_ENV)."""
    import kernels

    if kernels.available()["cython"] is not None:
        pytest.skip(kernels.available()["cython"])
    code = ("import numpy as np, kernels\nks = kernels.get('cython', threads=2)\n"
            "a = np.ones((64, 64), np.float32)\nks.matmul(a, a)\n")
    for env, policy in (({ENV: "1"}, "PASSIVE"), ({ENV: "1", "OMP_WAIT_POLICY": "active"}, "ACTIVE")):
        proc = _fresh(code, OMP_DISPLAY_ENV="TRUE", **env)
        assert proc.returncode == 0, proc.stderr
        assert f"OMP_WAIT_POLICY = '{policy}'" in proc.stderr + proc.stdout


def test_bench_mixing_runs_each_configuration_in_its_own_process(tmp_path):
    """A smoke run of bench.mixing: every pair timed under each configuration, and each child's
    runtime report shows the configuration it was given (a child that inherited the parent's
    policy would measure the wrong thing)."""
    import kernels

    if kernels.available()["cython"] is not None:
        pytest.skip(kernels.available()["cython"])
    out = tmp_path / "mixing.json"
    proc = subprocess.run([sys.executable, "-m", "bench.mixing", "--quick", "--repeats", "1", "--rounds", "1",
                           "--ops", "linear", "--sets", "numpy,cython", "--configs", "none,quiet",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_WAIT_POLICY": "active"})  # the parent's must not leak
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    pairs = {(r["config"], r["a"], r["b"]) for r in data["summary"]}
    assert pairs == {(c, a, b) for c in ("none", "quiet") for a, b in (("numpy", "cython"), ("cython", "numpy"))}
    assert all(r["alone_s"] > 0 and r["after_s"] > 0 for r in data["summary"])
    policy = {c: data["runtime"][c]["variables"]["OMP_WAIT_POLICY"]["value"] for c in ("none", "quiet")}
    assert policy == {"none": None, "quiet": "passive"}


@pytest.mark.parametrize(("args", "says"), [
    (["--sets", "numpy"], "--sets: expected two or more"),
    (["--sets", "numpy,nope"], "--sets: expected two or more"),
    (["--ops", "conv"], "--ops: expected some of linear, matmul"),
    (["--configs", "fast"], "unknown configuration(s) fast"),
    (["--rounds", "0"], "must be at least 1"),
])
def test_bench_mixing_refuses_bad_arguments_with_a_message(args, says, tmp_path):
    assert_cli_refuses("bench.mixing", args, says, tmp_path / "mixing.json")
