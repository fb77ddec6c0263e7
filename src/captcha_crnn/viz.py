"""Pictures of results: training curves and galleries of images with truth and prediction.

matplotlib is imported lazily with the Agg backend, so nothing here needs a screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return Path(path)


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss (train, val) and validation accuracy per epoch, side by side; with unlabelled images, the share
    of them used and how often the same rule reads the held-out images right."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [h["train_loss"] for h in history], label="train loss")
    a.plot(ep, [h["val_loss"] for h in history], label="val loss")
    a.set_yscale("log")
    a.set_xlabel("epoch")
    a.set_title("CTC loss")
    a.legend()
    b.plot(ep, [100 * h["val_sequence_accuracy"] for h in history], label="val sequence accuracy")
    b.plot(ep, [100 * h["val_char_accuracy"] for h in history], label="val char accuracy")
    b.set_xlabel("epoch")
    b.set_ylabel("%")
    b.set_ylim(0, 101)
    b.set_title("validation accuracy")
    semi = [h for h in history if "unlabelled_used" in h]
    if semi:  # semi-supervised runs: how much of the unlabelled pool taught, and how right that rule is
        b.plot([h["epoch"] for h in semi], [100 * h["unlabelled_used"] for h in semi], "--",
               label="unlabelled images used")
        right = [h for h in semi if h.get("unlabelled_val_right") is not None]
        b.plot([h["epoch"] for h in right], [100 * h["unlabelled_val_right"] for h in right], ":",
               label="those readings right (held out)")
        b.set_title("validation accuracy; unlabelled readings")
    b.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def gallery(
    images: Sequence[np.ndarray],
    truths: Sequence[str],
    preds: Sequence[str],
    path: str | Path,
    title: str = "",
    cols: int = 4,
) -> Path:
    """A grid of uint8 (C, H, W) images captioned 'truth -> prediction' (red where wrong)."""
    plt = _plt()
    n = max(1, len(images))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 1.25 * rows + (0.4 if title else 0)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t, p in zip(axes.flat, images, truths, preds):
        show = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        ax.imshow(show, cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=255)
        ok = t == p
        ax.set_title(f"{t} -> {p}" if t else p, color="green" if ok or not t else "red", fontsize=9)
    if not images:
        axes.flat[0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def errors_gallery(
    images: Sequence[np.ndarray], truths: Sequence[str], preds: Sequence[str], path: str | Path, limit: int = 48
) -> tuple[Path, int]:
    """A gallery of the misread images only (at most `limit`); returns the path and how many are drawn."""
    wrong = [i for i, (t, p) in enumerate(zip(truths, preds)) if t != p][:limit]
    out = gallery([images[i] for i in wrong], [truths[i] for i in wrong], [preds[i] for i in wrong], path,
                  title=f"{len(wrong)} misread of {len(truths)}")
    return out, len(wrong)
