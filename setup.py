"""Builds the Cython kernel sets (kernels/_cython/*.pyx) with OpenMP and native SIMD flags.

    pip install -e .                      # optimised for this CPU (-march=native)
    KERNELS_PORTABLE=1 pip install -e .   # a build that runs on any x86-64 CPU

Everything else about the package lives in pyproject.toml.
"""

import os
import sys
from glob import glob

from setuptools import Extension, setup

PORTABLE = os.environ.get("KERNELS_PORTABLE", "") not in ("", "0")


def compile_flags():
    if sys.platform == "win32":
        return ["/O2", "/openmp"], []
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=fast"]
    if not PORTABLE:
        # Lets GCC use the widest vectors this CPU has (AVX-512 on the machine the results
        # were measured on) and FMA; without it the micro-kernels fall back to SSE2.
        flags.append("-march=native")
    return flags, ["-fopenmp"]


def extensions():
    cflags, lflags = compile_flags()
    sources = sorted(glob(os.path.join("kernels", "_cython", "*.pyx")))
    # The C headers the .pyx files include (micro-kernels, vector math): a change to one
    # rebuilds the extensions, and sdists ship them.
    headers = sorted(glob(os.path.join("kernels", "_cython", "*.h")))
    exts = [
        Extension(
            "kernels._cython." + os.path.splitext(os.path.basename(src))[0],
            [src],
            depends=headers,
            extra_compile_args=cflags,
            extra_link_args=lflags,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for src in sources
    ]
    if not exts:
        return []
    from Cython.Build import cythonize

    return cythonize(
        exts,
        language_level=3,
        compiler_directives={
            # The dispatch layer (kernels/_front.py) checks every input before a kernel
            # runs, so the kernels themselves run with these checks off.
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
            "nonecheck": False,
        },
    )


setup(ext_modules=extensions())
