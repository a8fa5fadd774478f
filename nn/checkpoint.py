"""Checkpoints: weights, optimizer state and the position in training, as one .npz, written
atomically (a temporary file in the same folder, then os.replace), so a crash or Ctrl-C during
the write leaves the previous checkpoint intact, never half a file.

Layout: ``param/<name>`` (w1, b1, ...), ``optim/<name>`` (step_count, m0.., v0.., velocity0..),
``order`` (the current epoch's sample order, when saved mid-epoch) and ``meta``, a JSON string
holding the config, the epoch and batch to continue from, the running sums of the epoch, the
history of finished epochs and the random generator's state.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import UsageError

FORMAT = "nn-mlp-checkpoint/1"


def save(path, params: dict, optim: dict, meta: dict, order: np.ndarray | None = None) -> Path:
    """Write the checkpoint to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"param/{k}": v for k, v in params.items()}
    arrays.update({f"optim/{k}": v for k, v in optim.items()})
    if order is not None:
        arrays["order"] = np.asarray(order, np.int64)
    arrays["meta"] = np.asarray(json.dumps({"format": FORMAT, **meta}))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(path) -> dict:
    """{'params': {...}, 'optim': {...}, 'order': array or None, 'meta': {...}}; UsageError when
    the file is missing or is not a checkpoint this trainer wrote."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data.pop("meta")))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise UsageError(f"checkpoint {path} cannot be read ({exc.__class__.__name__}); it is not a checkpoint written by nn.train") from None
    if meta.get("format") != FORMAT:
        raise UsageError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return {
        "params": {k[6:]: v for k, v in data.items() if k.startswith("param/")},
        "optim": {k[6:]: v for k, v in data.items() if k.startswith("optim/")},
        "order": data.get("order"),
        "meta": meta,
    }
