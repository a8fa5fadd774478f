"""Builds the Cython kernel sets (kernels/_cython/*.pyx): the optimised kernels once per
instruction-set path, with OpenMP where the compiler has it.

    pip install -e .                                    # every path of this architecture
    CC=clang pip install -e .                           # the same with clang (+ libomp for threads)
    KERNELS_BUILD_ISAS=avx2,generic pip install -e .    # only these paths: a quicker build
    KERNELS_OPENMP=0 pip install -e .                   # serial kernels, as without OpenMP

kernels/_cython/fast.pxi (with the op families it includes: matmul.pxi, elementwise.pxi,
softmax.pxi, linear.pxi, optim.pxi, train_steps.pxi) is compiled as kernels._cython.fast_<path>
for each path of ISA_FLAGS,
each with that path's flags (its table, kernels/_cython/isa/<path>.h, is picked by the
-DKERNELS_ISA_<PATH> define); kernels/cython_set.py imports the one that kernels._isa selects
for the CPU at run time. There is no -march=native: one build runs on every CPU of its
architecture, each at its own path's speed. A compiler without OpenMP builds serial kernels
(kernels.cython_set.OPENMP is then False, and the set says so) instead of failing; a path
the compiler cannot build is left out with a warning.

Everything else about the package lives in pyproject.toml.
"""

import os
import platform
import sys
import tempfile
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# path -> compiler flags, per architecture (kernels/_isa.py names the same paths).
ISA_FLAGS = {
    "x86_64": {
        "avx512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma"],
        "avx2": ["-mavx2", "-mfma"],
        "generic": [],                    # x86-64's baseline: SSE2
    },
    "aarch64": {
        "neon": [],                       # Advanced SIMD is aarch64's baseline
        "generic": [],
    },
}
COMMON_FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=fast"]
OPENMP_FLAG = "-fopenmp"


def machine():
    m = os.environ.get("KERNELS_BUILD_ARCH") or platform.machine()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m.lower(), m.lower())


def isa_flags():
    """{path: flags} to build here: the architecture's paths, or KERNELS_BUILD_ISAS's."""
    paths = dict(ISA_FLAGS.get(machine(), {"generic": []}))
    wanted = [p.strip() for p in os.environ.get("KERNELS_BUILD_ISAS", "").split(",") if p.strip()]
    unknown = [p for p in wanted if p not in paths]
    if unknown:
        sys.exit(f"KERNELS_BUILD_ISAS names {', '.join(unknown)}, which {machine()} has no "
                 f"build of; expected some of: {', '.join(paths)}")
    return {p: paths[p] for p in wanted} if wanted else paths


def extensions():
    if sys.platform == "win32":
        sys.exit("the Cython kernels use GCC/clang vector extensions; build them with GCC or "
                 "clang (MSVC cannot), or use the numpy, numba and torch sets")
    cdir = os.path.join("kernels", "_cython")
    # The files the .pyx files include (fast.pxi and its op families' .pxi; the micro-kernels,
    # vector math and the paths' tables in C headers): a change to one rebuilds the extensions,
    # and sdists ship them.
    headers = sorted(glob(os.path.join(cdir, "*.h")) + glob(os.path.join(cdir, "isa", "*.h")))
    depends = headers + sorted(glob(os.path.join(cdir, "*.pxi")))
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    exts = [
        Extension(
            f"kernels._cython.fast_{path}",
            [os.path.join(cdir, f"fast_{path}.pyx")],
            depends=depends,
            extra_compile_args=COMMON_FLAGS + flags + [OPENMP_FLAG],
            extra_link_args=[OPENMP_FLAG],
            define_macros=macros + [(f"KERNELS_ISA_{path.upper()}", "1")],
        )
        for path, flags in isa_flags().items()
    ]
    # The ladder's first rung, the textbook triple loop: the baseline flags, like a first try.
    exts.append(Extension("kernels._cython.naive", [os.path.join(cdir, "naive.pyx")],
                          extra_compile_args=COMMON_FLAGS, define_macros=macros))
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


class BuildExt(build_ext):
    """build_ext that asks the compiler first: without OpenMP the kernels build serial, and a
    path whose flags the compiler rejects is left out (the set reports it unavailable)."""

    def build_extensions(self):
        probe = "#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n"
        if os.environ.get("KERNELS_OPENMP", "") == "0":
            self.warn("KERNELS_OPENMP=0: the cython kernels are built serial, one thread")
            openmp = False
        elif not self._accepts([OPENMP_FLAG], probe, link=True):
            self.warn(f"{self.compiler.compiler_so[0]} cannot build with OpenMP ({OPENMP_FLAG}, "
                      "omp.h and its runtime, e.g. Debian's libomp-dev for clang): the cython "
                      "kernels are built serial, one thread")
            openmp = False
        else:
            openmp = True
        if not openmp:
            for ext in self.extensions:
                ext.extra_compile_args = [f for f in ext.extra_compile_args if f != OPENMP_FLAG]
                ext.extra_link_args = [f for f in ext.extra_link_args if f != OPENMP_FLAG]
        keep = []
        for ext in self.extensions:
            flags = [f for f in ext.extra_compile_args if f.startswith("-m")]
            if flags and not self._accepts(flags, "int main(void) { return 0; }\n"):
                self.warn(f"{self.compiler.compiler_so[0]} rejects {' '.join(flags)}: "
                          f"{ext.name} is not built")
                continue
            keep.append(ext)
        self.extensions = keep
        super().build_extensions()

    def _accepts(self, flags, source, link=False):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(source)
            try:
                objects = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
                if link:
                    self.compiler.link_executable(objects, os.path.join(tmp, "probe"),
                                                  extra_postargs=flags)
            except Exception:
                return False
        return True


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
