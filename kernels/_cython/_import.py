"""Import a compiled kernel module, or fail with the one-line fix kernels.available() shows."""

import importlib

HINT = "the Cython extensions are not built; run `pip install -e .` in the project root"


def load(name, hint=HINT):
    """kernels._cython.<name>, or an ImportError carrying ``kernels_hint``."""
    try:
        return importlib.import_module("kernels._cython." + name)
    except ImportError as exc:
        err = ImportError(f"kernels._cython.{name} is not built ({exc})")
        err.kernels_hint = hint
        raise err from exc
