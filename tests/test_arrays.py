"""The array adapters behind the front's checks (kernels/_arrays.py)."""

import numpy as np

from kernels._arrays import NumpyArrays


def test_overlaps_is_exact_for_owners_and_conservative_for_views():
    A = NumpyArrays()
    a, b = np.zeros((4, 5)), np.zeros((4, 5))
    assert not A.overlaps(a, b)              # two owners never share memory
    assert A.overlaps(a, a)
    assert A.overlaps(a, a[1:3])             # a view and its base
    assert A.overlaps(a[:3], a[2:])          # two views that overlap
    assert not A.overlaps(a[:2], a[2:])      # two views that do not
    assert A.overlaps(a.T, a)


def test_fast_paths_accept_only_what_the_full_checks_accept():
    A = NumpyArrays()
    f32 = np.dtype(np.float32)
    x = np.zeros((3, 4), f32)
    assert A.float_dtype(x) == f32
    assert A.float_dtype(x.astype(np.float16)) is None
    assert A.float_dtype(x.tolist()) is None
    assert A.ready_out(x, (3, 4), f32)
    assert not A.ready_out(x, (4, 3), f32)
    assert not A.ready_out(x, (3, 4), np.dtype(np.float64))
    assert not A.ready_out(np.zeros((3, 8), f32)[:, ::2], (3, 4), f32)   # strided
    ro = x.copy()
    ro.flags.writeable = False
    assert not A.ready_out(ro, (3, 4), f32)
    labels = np.array([0, 2, 1], np.int32)
    got = A.int_vector(labels, 3)
    assert got.dtype == np.int64 and got.tolist() == [0, 2, 1]
    assert A.int_vector(labels, 4) is None
    assert A.int_vector(labels.astype(np.float32), 3) is None
    assert A.int_vector(labels.reshape(3, 1), 3) is None


def test_optimizer_fast_path_accepts_only_what_the_full_checks_accept():
    A = NumpyArrays()
    p, g, m, v = (np.zeros((3, 4), np.float32) for _ in range(4))

    def ready(*arrays, updated=(True, False, True, True)):
        return A.ready_together([(f"a{i}", x, u) for i, (x, u) in enumerate(zip(arrays, updated))])

    assert ready(p, g, m, v)
    assert ready(p, p, m, v)                                     # grad is only read: it may be param
    assert not ready(p, g, m, m)                                 # two updated arrays, one memory
    assert not ready(p, g, m, np.zeros((4, 3), np.float32))      # shapes differ
    assert not ready(p, g, m, np.zeros((3, 4), np.float64))      # dtypes differ
    assert not ready(p, g, m, np.zeros((3, 8), np.float32)[:, ::2])   # strided
    assert not ready(p, g, m, np.zeros((6, 4), np.float32)[:3])  # a view: may share memory
    ro = v.copy()
    ro.flags.writeable = False
    assert not ready(p, g, m, ro)
    assert ready(p, ro, m, v)                                    # read-only is fine for grad
    assert not ready(p, g.tolist(), m, v)
    assert not ready(*(np.zeros((0, 4), np.float32) for _ in range(4)))   # empty
    assert not ready(*(np.zeros((3, 4), np.float16) for _ in range(4)))
