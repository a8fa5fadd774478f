"""The instruction-set paths (kernels/_isa.py): which a CPU runs, how KERNELS_ISA forces one,
and that the cython set runs the path it says, on every path this machine has. The C kernels
themselves are checked per path and compiler, aarch64 included, by tests/c/check.sh."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kernels
from kernels import _isa

ROOT = Path(__file__).resolve().parents[1]
AVX512 = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "avx"})


@pytest.mark.parametrize("features, arch, want", [
    (AVX512, "x86_64", ["avx512", "avx2", "generic"]),
    (frozenset({"avx2", "fma", "avx"}), "x86_64", ["avx2", "generic"]),       # Zen 3, Haswell
    (frozenset({"avx2", "avx"}), "x86_64", ["generic"]),                      # no FMA: no avx2 path
    (AVX512 - {"avx512vl"}, "x86_64", ["avx2", "generic"]),                   # Xeon Phi's AVX-512
    (frozenset({"neon"}), "aarch64", ["neon", "generic"]),
    (AVX512, "aarch64", ["generic"]),                                         # x86 names on ARM
    (frozenset(), "riscv64", ["generic"]),
])
def test_supported_paths_follow_the_features(features, arch, want):
    assert _isa.supported(features, arch) == want


def test_this_machine_runs_generic_and_selects_its_best(monkeypatch):
    monkeypatch.delenv(_isa.ENV, raising=False)
    assert _isa.supported()[-1] == "generic"
    assert _isa.selected() == _isa.supported()[0]


@pytest.mark.parametrize("value", ["sse9", "AVX-512", "1"])
def test_an_unknown_path_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(_isa.ENV, value)
    with pytest.raises(ValueError, match="is not a kernel path; expected one of avx512, avx2, neon, generic"):
        _isa.selected()


def test_a_path_this_cpu_lacks_is_a_clear_error(monkeypatch):
    lacking = next(p for p in _isa.ORDER if p not in _isa.supported())   # neon on x86, avx* on ARM
    monkeypatch.setenv(_isa.ENV, lacking)
    with pytest.raises(ValueError, match=f"{lacking} .* which this CPU .* cannot run"):
        _isa.selected()


@pytest.mark.parametrize("value", ["", "auto", "native"])
def test_auto_is_the_best_path(monkeypatch, value):
    monkeypatch.setenv(_isa.ENV, value)
    assert _isa.selected() == _isa.supported()[0]


def _in_fresh_python(code: str, isa: str) -> subprocess.CompletedProcess:
    env = {**os.environ, _isa.ENV: isa}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("isa", _isa.supported())
def test_the_cython_set_runs_the_path_it_is_asked_for(isa):
    """Each path's module is built and loads, says its path, and multiplies right (the
    conformance suite runs once per path in CI: KERNELS_ISA=<path> python -m pytest)."""
    code = ("import numpy as np, kernels\n"
            "ks = kernels.get('cython')\n"
            "a = np.arange(12 * 70, dtype=np.float32).reshape(12, 70) / 100\n"
            "b = np.ones((70, 40), np.float32)\n"
            "assert np.allclose(ks.matmul(a, b), a @ b, rtol=1e-5), 'wrong product'\n"
            "print(ks.isa, kernels.backend_module('cython')._ext.__name__)\n")
    done = _in_fresh_python(code, isa)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [isa, f"kernels._cython.fast_{isa}"]


@pytest.mark.parametrize("isa", ["sse9", next((p for p in _isa.ORDER if p not in _isa.supported()), "neon")])
def test_a_bad_path_makes_the_cython_set_unavailable_not_a_crash(isa):
    code = ("import kernels\n"
            "print(kernels.available()['cython'])\n"
            "try:\n    kernels.get('cython')\nexcept kernels.UnavailableError as e:\n    print('raised', e)\n")
    done = _in_fresh_python(code, isa)
    assert done.returncode == 0, done.stderr                       # no SIGILL, no traceback
    assert "KERNELS_ISA=" in done.stdout and isa in done.stdout and "raised" in done.stdout


def test_numpy_names_its_blas_kernel():
    assert kernels.get("numpy").isa.startswith(("openblas:", "mkl:", "blis:", "flexiblas:", "accelerate:"))


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_c_kernels_on_every_path_and_compiler_here():
    """tests/c/check.sh: the micro-kernels, skip lists, transpose, exp and sweep of every path
    this machine can run, with gcc and clang, and aarch64's under qemu-user where installed."""
    done = subprocess.run(["bash", "tests/c/check.sh"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 failed" in done.stdout.splitlines()[-1]
