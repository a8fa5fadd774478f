"""pytest-benchmark suite of every op and kernel set against PyTorch, and its report.

    python -m bench          # run the whole suite, then write results/REPORT.md
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path, data, indent: int = 1) -> Path:
    """Write ``data`` as JSON to ``path`` atomically: a temporary file beside it, then a rename,
    so that a reader (or an interrupted run) never leaves half a file where a result was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent) + "\n")
    os.replace(tmp, path)
    return path
