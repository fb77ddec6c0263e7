"""Resumable training checkpoints, written atomically (temporary file, fsync, rename, fsync of the folder).

A checkpoint is a dict of tensors and plain values: weights, optimizer, random states, the position
in the run (epoch, batch within it, the epoch's permutation, step, training seconds), history and the
data encoding. A process killed at any moment leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CaptchaError
from ..model.modelfile import atomic_write

CHECKPOINT = "checkpoint.pt"


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save a dict of tensors and plain values (loadable with weights_only=True), atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))
    fsync_dir(Path(path).parent)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CaptchaError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CaptchaError(f"{path}: checkpoint is damaged ({e})") from None


def remove_stale_temporaries(out: str | Path) -> list[Path]:
    """Delete temporary files a killed run left behind in `out` (atomic writes in progress); return them."""
    stale = [p for name in (CHECKPOINT, "model.safetensors") for p in Path(out).glob(f".{name}.*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
