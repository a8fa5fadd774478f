"""matmul on every set: square sizes 64..2048, the MLP's own products, and the ladder.

* ``test_matmul``: every set through the interface (``ks.matmul(..., out=)``), at the square
  sizes and at each product of a training step of the 784-128-64-10 MLP at batch 1, 32, 128
  and 512: forward x @ w, and backward x^T g (trans_a) and g w^T (trans_b). Groups are named
  "matmul <shape> <dtype>", so the sets line up side by side.
* ``test_matmul_ladder``: each compiled set's matmul at every step of its optimisation ladder
  (``kernels.backend_module(name).MATMUL_LADDER``, naive -> ... -> threaded), called directly
  on C-contiguous inputs, at the square sizes (the slow early steps only at the small ones).
"""

import numpy as np
import pytest

import kernels
from bench import cases as C
from bench.conftest import get_set
from bench.inputs import matmul_operands, native


@pytest.mark.cases(C.square_matmul_cases() + C.mlp_matmul_cases())
def test_matmul(ks, case, dtype, measure):
    a, b, out = matmul_operands(ks, case, dtype)
    ta, tb = case.params["trans_a"], case.params["trans_b"]
    measure(lambda: ks.matmul(a, b, trans_a=ta, trans_b=tb, out=out))


def _ladder_params():
    params = []
    for name in C.COMPILED_SETS:
        try:
            ladder = kernels.backend_module(name).MATMUL_LADDER
        except kernels.UnavailableError as exc:
            params.append(pytest.param(None, name, id=f"{name}-unavailable", marks=pytest.mark.skip(reason=str(exc))))
            continue
        except AttributeError:
            reason = f"kernel set {name!r} has no MATMUL_LADDER"
            params.append(pytest.param(None, name, id=f"{name}-no-ladder", marks=pytest.mark.skip(reason=reason)))
            continue
        steps = list(ladder)
        for index, step in enumerate(steps):
            for n in C.ladder_sizes(index, len(steps)):
                case = C.ladder_case(n, index, step)
                params.append(pytest.param(case, f"{name}:{step}", id=f"{n}-{name}:{step}"))
    return params


@pytest.mark.parametrize(("case", "set_name"), _ladder_params())
def test_matmul_ladder(case, set_name, dtype, threads, measure):
    name, step = set_name.split(":")
    ks = get_set(name, threads)
    kernel = kernels.backend_module(name).MATMUL_LADDER[step]
    n = case.params["n"]
    a, b, out = (native(ks, (n, n), dtype, seed=s) for s in (1, 2, 3))
    # Apply the suite's thread count to the set's runtime: the ladder bypasses the front,
    # which does so before every op.
    tiny = np.ones((2, 2), dtype)
    ks.matmul(tiny, tiny)
    measure(lambda: kernel(a, b, out, False, False))
