"""PNG plots of a run (loss and accuracy curves, confusion matrix) and of a comparison.

matplotlib runs on the Agg backend, so plots are drawn without a display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402


def curves(history: list[dict], path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train / validation / test, side by side."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "-s"), ("test", "-^")):
        if history and f"{split}_loss" in history[0]:
            ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], style, label=split)
        if history and f"{split}_accuracy" in history[0]:
            ax_acc.plot(epochs, [100 * h[f"{split}_accuracy"] for h in history], style, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def confusion(matrix, classes, path, title: str = "") -> Path:
    """The confusion matrix: rows are true classes, columns predicted ones, counts in cells."""
    matrix = np.asarray(matrix)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.6 + 0.6 * n))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


def comparison(rows: list[dict], path, title: str = "") -> Path:
    """Samples per second and test accuracy of each set, as bars, and test accuracy per epoch."""
    names = [r["kernels"] for r in rows]
    fig, (ax_speed, ax_curve) = plt.subplots(1, 2, figsize=(11, 4))
    ax_speed.barh(names, [r["samples_per_second"] for r in rows], color="tab:blue")
    ax_speed.set(xlabel="training samples / s (higher is better)", title="speed")
    ax_speed.invert_yaxis()
    for r in rows:
        epochs = [h["epoch"] for h in r["epochs"]]
        ax_curve.plot(epochs, [100 * h["test_accuracy"] for h in r["epochs"]], "-o", label=r["kernels"])
    ax_curve.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    ax_curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_curve.grid(alpha=0.3)
    ax_curve.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
