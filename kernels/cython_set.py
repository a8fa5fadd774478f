"""The cython set: optimised OpenMP kernels without BLAS (kernels/_cython/fast.pxi).

setup.py builds the kernels once per instruction-set path (kernels._cython.fast_avx512,
fast_avx2, fast_neon, fast_generic); this module imports the one kernels._isa selects: the
best this CPU runs, or the one KERNELS_ISA forces. ``isa()`` names it, and ``OPENMP`` says
whether the build has threads.

The backend functions are the extension's own def functions, bound here by name, so a call
pays no Python glue beyond kernels/_front.py's checks. Kernels receive checked, C-contiguous
arrays and preallocated outputs (see kernels/_front.py).

MATMUL_LADDER holds the matmul at each optimisation step, each a correct
``callable(a, b, out, trans_a, trans_b)``, for the benchmarks to measure step by step:

    naive     the textbook triple loop (kernels/_cython/naive.pyx)
    blocked   loops reordered (i, p, j) and cache-blocked: the inner loop vectorises
    packed    BLIS: packed A and B panels + the MR x NR register-blocked micro-kernel, 1 thread
    threaded  the same with OpenMP threads over row blocks (LOOP 3)
    dispatch  what the set's matmul runs: the small-size path (no packing) for small
              products, threaded BLIS otherwise
"""

from . import _isa
from ._cython._import import load

try:
    ISA = _isa.selected()
except ValueError as exc:      # KERNELS_ISA names no path, or one this CPU lacks
    err = ImportError(str(exc))
    err.kernels_hint = str(exc)
    raise err from exc
_ext = load(f"fast_{ISA}", f"the Cython kernels for the {ISA} path are not built; run "
            f"`pip install -e .` in the project root (with KERNELS_BUILD_ISAS unset or naming {ISA})")
_naive = load("naive")
OPENMP = _ext.OPENMP           # False: the compiler had no OpenMP, every kernel is serial
# Said by kernels.get when more than one thread is asked of a serial build.
SERIAL_REASON = None if OPENMP else (
    "the cython set was built without OpenMP (the compiler had none: for clang install "
    "libomp, e.g. Debian's libomp-dev, and rebuild), so it runs on one thread")

THREADS_KEY = "openmp"
CHECKS_LABELS = True   # softmax_cross_entropy checks the label range itself (-1 if one is out)

set_threads = _ext.set_threads
matmul = _ext.matmul
relu = _ext.relu
relu_backward = _ext.relu_backward
tanh = _ext.tanh
tanh_backward = _ext.tanh_backward
dropout = _ext.dropout
softmax_cross_entropy = _ext.softmax_cross_entropy
linear = _ext.linear
linear_backward = _ext.linear_backward
sgd_step = _ext.sgd_step
adam_step = _ext.adam_step
train_steps = _ext.train_steps     # the whole training loop in C (train_steps.pxi)



def isa():
    return ISA


def unavailable_reason(device):
    if device != "cpu":
        return "kernel set 'cython' runs on the CPU only"
    return None


MATMUL_LADDER = {
    "naive": _naive.matmul,
    "blocked": _ext.matmul_blocked,
    "packed": _ext.matmul_packed,
    "threaded": _ext.matmul_threaded,
    "dispatch": _ext.matmul,
}
