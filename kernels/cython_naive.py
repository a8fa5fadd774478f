"""The cython-naive set: plain typed loops, one thread, no BLAS (kernels/_cython/naive.pyx).

The backend functions are the extension's own; this module only imports them, so the set adds
no Python glue to a call. Kernels receive checked, C-contiguous arrays and preallocated outputs
(see kernels/_front.py).
"""

from ._cython._import import load

_ext = load("naive")

THREADS_KEY = "cython-naive"

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
