"""The numba set's internals: every rung of MATMUL_LADDER, the packed path's edges, the fused
epilogue. The conformance suite tests the set through the interface; these reach past it to
the steps the benchmarks time, so that a rung that is fast because it is wrong cannot hide.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_close

numba_set = pytest.importorskip("kernels.numba_set")
import numba  # noqa: E402  (after the skip: Numba is there when the set is)

from kernels._layers import ACT_NONE  # noqa: E402

DTYPES = [np.float32, np.float64]
# Sizes around the blocking: 1 and 3 (smaller than a tile), 17 (NR/2 < 17 < NR for float32),
# 129 and 257. The micro-tile is the path's (numba_set.TILES: 12 x 32 float32 on avx512).
ODD = [(1, 1, 1), (3, 17, 5), (17, 129, 3), (13, 3, 33), (129, 257, 17), (257, 129, 129), (25, 40, 784 // 8)]


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", list(numba_set.MATMUL_LADDER))
def test_every_ladder_step_matches_reference(step, dtype):
    matmul = numba_set.MATMUL_LADDER[step]
    rng = np.random.default_rng(0)
    for m, k, n in ODD:
        if step == "naive" and m * k * n > 2e6:
            continue
        for trans_a in (False, True):
            for trans_b in (False, True):
                a = _rand(rng, (k, m) if trans_a else (m, k), dtype)
                b = _rand(rng, (n, k) if trans_b else (k, n), dtype)
                want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
                out = np.full((m, n), np.nan, dtype)
                matmul(a, b, out, trans_a, trans_b)
                assert_close(out, want, dtype, scale=4 * np.sqrt(k),
                             what=f"{step} {m}x{k}x{n} trans_a={trans_a} trans_b={trans_b}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_both_paths_and_thread_splits(dtype, threads):
    """The small path (operands read in place) and the packed path, on one thread and split
    by rows or by columns, all give the same product."""
    rng = np.random.default_rng(1)
    no_bias = np.empty(0, dtype)
    for m, k, n in [(700, 33, 40), (40, 33, 700), (100, 300, 70)]:
        a, b = _rand(rng, (m, k), dtype), _rand(rng, (k, n), dtype)
        want = a.astype(np.float64) @ b
        # scratch of exactly the size asked for (and NaN filled), so that a task reading or
        # writing past its share would show
        work = np.full(numba_set._gemm_work_size(np.dtype(dtype), m, n, k, threads), np.nan, dtype)
        for pack in (False, True):
            out = np.full((m, n), np.nan, dtype)
            numba_set._gemm_range(a, b, out, False, False, no_bias, ACT_NONE, 0, m, 0, n, pack, work)
            assert_close(out, want, dtype, scale=4 * np.sqrt(k), what=f"range pack={pack}")
            out = np.full((m, n), np.nan, dtype)
            numba_set._gemm_threads(a, b, out, False, False, no_bias, ACT_NONE, threads, pack, work,
                                    numba_set._gemm_range_address(np.dtype(dtype)))
            assert_close(out, want, dtype, scale=4 * np.sqrt(k), what=f"threads={threads} pack={pack}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_called_by_address_raises_through_the_call(dtype):
    """_gemm calls _gemm_range through its address (one compiled copy of the matmul): an error
    raised inside still reaches the caller, and a caller compiled with the wrong argument types
    is a typing error, not a call with the wrong layout."""
    m, k, n = 64, 48, 96         # past _gemm_rows' sizes: one thread runs _gemm_range itself
    a, b = np.ones((m, k), dtype), np.ones((k, n), dtype)
    out, no_bias = np.zeros((m, n), dtype), np.empty(0, dtype)
    far = numba_set._gemm_range_address(np.dtype(dtype))
    too_small = np.empty(1, dtype)
    with pytest.raises(ValueError, match="work is too small"):
        numba_set._gemm(a, b, out, False, False, no_bias, ACT_NONE, 1, too_small, far)
    # (Raised inside a prange task, Numba reports it as a SystemError, called directly or by
    # address alike: the wrappers size work with _gemm_work_size, so that it never happens.)
    with pytest.raises(numba.core.errors.TypingError, match="_call_gemm_range"):
        numba.njit(lambda a, b, c, w, far: numba_set._call_gemm_range(
            far, a, b, c, False, False, w, ACT_NONE, 0, 1, 0, 1, True, w))(
            a.astype(np.float32 if dtype == np.float64 else np.float64), b, out, no_bias, far)


@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogue_bias_and_relu_span_k_blocks(dtype):
    """Bias is added once (first k block) and ReLU applied once (last), however many k blocks."""
    rng = np.random.default_rng(2)
    m, k, n = 37, 3 * 128 + 5, 45  # several KC blocks
    x, w, b = _rand(rng, (m, k), dtype), _rand(rng, (k, n), dtype), _rand(rng, (n,), dtype)
    for relu in (False, True):
        out = np.full((m, n), np.nan, dtype)
        numba_set.linear(x, w, b, out, relu)
        want = x.astype(np.float64) @ w + b
        if relu:
            want = np.maximum(want, 0)
        assert_close(out, want, dtype, scale=4 * np.sqrt(k), what=f"linear relu={relu}")


# ---------------------------------------------------------------- train_steps, fused

from kernels._arrays import NumpyArrays  # noqa: E402
from kernels import _layers  # noqa: E402
from kernels._steps import Hidden, Optimizer, n_steps, per_op  # noqa: E402

OPTIMIZERS = {
    "sgd": dict(kind="sgd", lr=0.05),
    "momentum+wd": dict(kind="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": dict(kind="adam", lr=1e-2, weight_decay=1e-3, step=3),  # t starts at 4
}


def _optimizer(spec, params):
    state = None
    if spec["kind"] == "adam":
        state = ([np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params])
    elif spec.get("momentum", 0.0):
        state = [np.zeros_like(p) for p in params]
    return Optimizer(**spec, state=state)


def _hidden(activation="relu", p=0.0):
    return Hidden(act=_layers.ACTIVATIONS[activation], p=p, seed=2**63 + 5, threshold=_layers.threshold(p),
                  scale=_layers.scale(p))


def _train(fused, sizes, batch, spec, dtype, hidden=None):
    """(losses, params, optimizer state) after one train_steps call, fused or op by op."""
    hidden = hidden or _hidden()
    rng = np.random.default_rng(3)
    samples = 23
    x = _rand(rng, (samples, sizes[0]), dtype)
    labels = rng.integers(0, sizes[-1], samples)
    order = rng.integers(0, samples, 2 * samples + 1)   # repeats, and a partial last batch
    params = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        params.append((_rand(rng, (n_in, n_out), dtype) / np.sqrt(n_in)).astype(dtype))
        params.append(_rand(rng, (n_out,), dtype) / 10)
    opt = _optimizer(spec, params)
    losses = np.full(n_steps(len(order), batch), np.nan, dtype)
    if fused:
        numba_set.train_steps(params, x, labels, order, batch, losses, opt, hidden)
    else:
        per_op(numba_set, NumpyArrays("cpu"), params, x, labels, order, batch, losses, opt, hidden)
    if opt.state is None:
        return losses, params, []
    return losses, params, opt.state[0] + opt.state[1] if spec["kind"] == "adam" else opt.state


@pytest.fixture
def two_threads():
    threads = numba_set._threads[0]
    numba_set.set_threads(2)
    yield
    numba_set.set_threads(threads)


# 1 to 3 layers; the widest, at a batch of all 47 rows, is past PARALLEL_MIN_FMAS (threads)
SIZES = [[9, 4], [9, 17, 4], [120, 97, 33, 5]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: f"{len(s) - 1}layers")
@pytest.mark.parametrize("hidden", [("relu", 0.0), ("tanh", 0.0), ("tanh", 0.3)], ids=str)
def test_fused_train_steps_match_per_op(sizes, opt, dtype, hidden, two_threads):
    """The fused loop is per_op on the same kernels: the same losses, parameters and state,
    at batches of 1 (_outer_update), 5 (a partial last batch of 2: _gemm_rows) and all rows."""
    # Rounding apart: the fused loop may contract a product into the next addition where the
    # ops store it first, and over 47 steps such differences grow to a few ulps of the largest
    # value, so the tolerance scales with each array's largest magnitude.
    # tanh (whose derivative keeps every unit in play) and dropout's 1 / (1 - p) let them grow
    # further: at a batch of 1 with momentum over 47 steps, 3e-4 of the largest velocity in
    # float32 and 3e-12 in float64 (both about 3e4 of the dtype's epsilon, so rounding, not a
    # wrong mask or derivative, which is off by orders of magnitude more): 50x more room.
    tol = (1e-5 if dtype == np.float32 else 1e-12) * (1 if hidden == ("relu", 0.0) else 50)
    for batch in (1, 5, 64):
        want = _train(False, sizes, batch, OPTIMIZERS[opt], dtype, _hidden(*hidden))
        got = _train(True, sizes, batch, OPTIMIZERS[opt], dtype, _hidden(*hidden))
        for name, g, w in zip(("losses", "params", "state"), got, want):
            assert len(g) == len(w)
            for j, (a, b) in enumerate(zip(g, w) if name != "losses" else [(g, w)]):
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()),
                                           err_msg=f"{name}[{j}], batch {batch}")


def test_fused_train_steps_compile_once_per_layer_count():
    """Optimizer and batch size do not change the jitted loop's types: no compile per call."""
    before = len(numba_set._train_steps.signatures)
    for opt in OPTIMIZERS:
        for batch in (1, 5):
            for hidden in (_hidden(), _hidden("tanh", 0.5)):
                _train(True, [9, 17, 4], batch, OPTIMIZERS[opt], np.float32, hidden)
    assert len(numba_set._train_steps.signatures) <= before + 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_max_vector_intrinsic_and_its_tails(dtype):
    # _vector_max runs whole zmm vectors (16 or 8 lanes); _row_max adds the head and the tail
    rng = np.random.default_rng(7)
    z = _rand(rng, 3000, dtype)
    for start, n in [(0, 1), (3, 10), (1, 16), (5, 17), (0, 1000), (7, 33), (11, 2989)]:
        assert numba_set._row_max(z, start, n) == z[start:start + n].max(), (start, n)
    z[:40] = -np.inf
    assert numba_set._row_max(z, 0, 40) == -np.inf
    z[50] = np.nan                     # passed over, as the scalar compare does
    assert numba_set._row_max(z, 0, 100) == np.nanmax(z[:100])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, classes", [(2500, 1), (2500, 2), (700, 10), (300, 1000)])
def test_softmax_loss_sums_its_logs_as_products(batch, classes, dtype):
    """The loss takes one log per run of rows (a product of the rows' sums): at 1 and 2
    classes a block of rows is past one run. The same loss as a log per row."""
    from conftest import ref_softmax_cross_entropy

    rng = np.random.default_rng(classes)
    logits = (10 * rng.standard_normal((batch, classes))).astype(dtype)
    labels = rng.integers(0, classes, batch)
    grad = np.empty_like(logits)
    loss = numba_set.softmax_cross_entropy(logits, labels, grad)
    want_loss, want_grad = ref_softmax_cross_entropy(logits, labels)
    assert_close(np.asarray(loss), want_loss, np.float64 if dtype == np.float64 else dtype, what="loss")
    assert_close(grad, want_grad, dtype, scale=1.0, what="grad")


def test_float32_exp_matches_numpy_to_two_ulp():
    # softmax's exp, as arithmetic that vectorises: about 1 ulp over the range it is used on
    from numba import njit

    @njit
    def exp_all(x, out):
        for i in range(x.size):
            out[i] = numba_set._exp_shifted(x[i])

    x = np.concatenate([-np.geomspace(1e-8, 87.0, 20000), [0.0, -87.3]]).astype(np.float32)
    got = np.empty_like(x)
    exp_all(x, got)
    want = np.exp(x.astype(np.float64))
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - want) / ulp) <= 2.0
    under = np.array([-100.0, -np.inf], np.float32)   # below exp's normal range: about FLT_MIN,
    out = np.empty_like(under)                           # as cython's (never a subnormal)
    exp_all(under, out)
    np.testing.assert_allclose(out, np.finfo(np.float32).tiny, rtol=1e-5)
    nan = np.array([np.nan], np.float32)
    exp_all(nan, out[:1])
    assert np.isnan(out[0])



# ---------------------------------------------------------------- per-ISA paths (in subprocesses)
#
# Numba's target is fixed per process once it compiles, so each forced path runs in a fresh
# interpreter. Each script prints one JSON line; they compile only the micro-kernel, to be fast.

from kernels import _isa  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The x86 register each path's micro-kernel must use, and the wider ones it must not.
REGISTERS = {"avx512": ("zmm", ()), "avx2": ("ymm", ("zmm",)), "generic": ("xmm", ("ymm", "zmm"))}

MICRO_KERNEL_ASM = r"""
import json, re
import numpy as np
from numba import njit
import kernels
from kernels import numba_set as ns

out = {"isa": kernels.get("numba").isa}
for itemsize, dtype in ((4, np.float32), (8, np.float64)):
    MR, NR = ns.BLOCKING[itemsize][0], ns.BLOCKING[itemsize][1]

    @njit
    def ukr(kc, a, b, tile):
        ns._micro_kernel(kc, a, 0, MR, 1, b, 0, NR, tile)

    a = np.ones(2048, dtype)
    ukr(3, a, a, a.copy())
    lines = ukr.inspect_asm(ukr.signatures[0]).splitlines()
    # the loops: a label and the backward branch to it; the k loop is the one with the arithmetic
    labels = {l.strip()[:-1]: i for i, l in enumerate(lines) if re.match(r"\.?L\w+:$", l.strip())}
    loops = []
    for i, l in enumerate(lines):
        m = re.match(r"\s*j\w+\s+(\.?L\w+)$", l)
        if m and labels.get(m.group(1), i) < i:
            loops.append("\n".join(lines[labels[m.group(1)]:i + 1]))
    k_loop = max(loops, key=lambda t: len(re.findall(r"fmadd|mulp[sd]", t)))
    out[dtype.__name__] = {
        "fma": len(re.findall(r"vfmadd\w+", k_loop)), "mul": len(re.findall(r"\bmulp[sd]", k_loop)),
        "stack": len(re.findall(r"\(%rsp\)|\(%rbp\)", k_loop)),
        "regs": {r: len(re.findall("%" + r + r"\d", k_loop)) for r in ("xmm", "ymm", "zmm")},
        "tile": [MR, NR], "lanes": ns.VECTOR_BYTES // itemsize}
print(json.dumps(out))
"""


def _run(code, **env):
    """Run code in a fresh interpreter with env added to (or, for None values, removed from) the
    environment; its last output line as JSON, or its exit status and stderr."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU") and k != _isa.ENV}
    environ.update({k: v for k, v in env.items() if v is not None})
    environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", code], env=environ, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode} (a negative one is a signal):\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


X86_PATHS = [p for p in REGISTERS if p in _isa.supported()] if _isa.machine() == "x86_64" else []


@pytest.mark.skipif(not X86_PATHS, reason="the register checks read x86 assembly")
@pytest.mark.parametrize("path", X86_PATHS)
def test_micro_kernel_uses_the_paths_registers_without_spills(path):
    """Forced with KERNELS_ISA, Numba compiles for the path (not the host), and the k loop holds
    its tile in the path's registers: MR * NR / lanes multiply-adds a step, no stack access,
    and no wider register than the path has."""
    got = _run(MICRO_KERNEL_ASM, KERNELS_ISA=path)
    assert got["isa"] == path
    reg, wider = REGISTERS[path]
    for dtype in ("float32", "float64"):
        k = got[dtype]
        per_step = k["tile"][0] * k["tile"][1] // k["lanes"]
        assert k["stack"] == 0, f"{path} {dtype}: the k loop touches the stack (spills): {k}"
        assert k["regs"][reg] > 0 and all(k["regs"][w] == 0 for w in wider), f"{path} {dtype}: {k}"
        if path == "generic":   # SSE2 has no FMA: a multiply and an add per accumulator
            assert k["fma"] == 0 and k["mul"] == per_step, f"{path} {dtype}: {k}"
        else:
            assert k["fma"] == per_step, f"{path} {dtype}: {k}"


UNAVAILABLE = r"""
import json
import kernels
reason = kernels.available()["numba"]
try:
    kernels.get("numba")
    raised = None
except kernels.UnavailableError as exc:
    raised = str(exc)
print(json.dumps({"reason": reason, "raised": raised}))
"""


def test_a_path_the_cpu_lacks_is_a_clear_error():
    """KERNELS_ISA naming a path this CPU cannot run: available() says why and get() raises
    UnavailableError; nothing is compiled for it (no SIGILL)."""
    missing = next(p for p in ("neon", "avx512", "avx2") if p not in _isa.supported())
    got = _run(UNAVAILABLE, KERNELS_ISA=missing)
    assert got["reason"] and "cannot run" in got["reason"] and missing in got["reason"], got
    assert got["raised"] and "cannot run" in got["raised"], got


NUMBA_SETTINGS = r"""
import json
import kernels
ks = kernels.get("numba")
print(json.dumps({"isa": ks.isa}))
"""


@pytest.mark.skipif("avx2" not in _isa.supported() or _isa.supported()[0] == "avx2",
                    reason="needs an x86 CPU with a path above avx2")
def test_the_path_follows_the_features_numba_compiles_with():
    """The user's own NUMBA_CPU_NAME / NUMBA_CPU_FEATURES decide the path, not the CPU name:
    NUMBA_CPU_NAME=haswell alone still compiles with the host's features (numba 0.68); with
    an AVX2 feature list it is avx2. KERNELS_ISA that disagrees with them is an error."""
    host = _isa.supported()[0]
    assert _run(NUMBA_SETTINGS, NUMBA_CPU_NAME="haswell")["isa"] == host
    avx2 = dict(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=_isa.NUMBA_TARGETS["avx2"]["x86_64"][1])
    assert _run(NUMBA_SETTINGS, **avx2)["isa"] == "avx2"
    got = _run(UNAVAILABLE, KERNELS_ISA="generic", **avx2)
    assert got["reason"] and "KERNELS_ISA=generic but Numba compiles for avx2" in got["reason"], got


def test_a_path_forced_after_numba_compiled_is_an_error():
    """Numba's target machine is built at its first compilation and never changes: forcing
    another path after that is reported, not silently ignored."""
    if len(_isa.supported()) < 2:
        pytest.skip("this CPU runs one path only")
    code = ("import os, json\nfrom numba import njit\nnjit(lambda: 1)()\n"
            f"os.environ['KERNELS_ISA'] = {_isa.supported()[1]!r}\n" + UNAVAILABLE)
    got = _run(code)
    assert got["reason"] and "before Numba first compiles" in got["reason"], got


NEON_ASM = r"""
import json, re
import numpy as np
import llvmlite.binding as llvm
from numba import njit
from kernels import numba_set as ns

ns.VECTOR_BYTES, ns.BLOCKING = ns.TILES["neon"]     # this process compiles nothing else
MR, NR = ns.BLOCKING[4][0], ns.BLOCKING[4][1]

@njit
def ukr(kc, a, b, tile):
    ns._micro_kernel(kc, a, 0, MR, 1, b, 0, NR, tile)

a = np.ones(1000, np.float32)
ukr(3, a, a, a.copy())
ir = ukr.inspect_llvm(ukr.signatures[0])
# the one function with the arithmetic, without Numba's (x86) runtime calls and attributes
body = next(f for f in re.findall(r"(define [^\n]*\{\n.*?\n\})", ir, re.S) if "fmuladd" in f)
body = re.sub(r"call void @NRT_\w+\([^)]*\)", "", re.sub(r"#\d+", "", body))
decls = {re.sub(r"#\d+", "", d) for d in re.findall(r"declare [^\n]*fmuladd[^\n]*", ir)}
llvm.initialize_all_targets(); llvm.initialize_all_asmprinters()
target = llvm.Target.from_triple("aarch64-unknown-linux-gnu")
tm = target.create_target_machine(cpu="generic", features="+neon", opt=3)
mod = llvm.parse_assembly("\n".join(decls) + "\n" + body)
mod.triple, mod.data_layout = tm.triple, str(tm.target_data)
lines = tm.emit_assembly(mod).splitlines()
labels = {l.strip()[:-1]: i for i, l in enumerate(lines) if re.match(r"\.?L\w+:$", l.strip())}
loops = []
for i, l in enumerate(lines):
    m = re.match(r"\s*b\.\w+\s+(\.?L\w+)$", l)
    if m and labels.get(m.group(1), i) < i:
        loops.append("\n".join(lines[labels[m.group(1)]:i + 1]))
k_loop = max(loops, key=lambda t: t.count("fmla"))
print(json.dumps({"fmla": len(re.findall(r"\bfmla\b", k_loop)), "stack": len(re.findall(r"\bsp\b", k_loop)),
                  "per_step": MR * NR // 4}))
"""


def test_neon_tile_fits_aarch64_registers_when_cross_compiled():
    """No ARM machine here: the neon tile's micro-kernel, cross-compiled for aarch64 by
    llvmlite, is one fmla per accumulator a step (8 x 3 q = 24) with no spills."""
    from llvmlite import binding as llvm

    llvm.initialize_all_targets()
    try:
        llvm.Target.from_triple("aarch64-unknown-linux-gnu")
    except RuntimeError:
        pytest.skip("this llvmlite has no AArch64 target")
    got = _run(NEON_ASM)
    assert got["fmla"] == got["per_step"] and got["stack"] == 0, got
