"""Resumable training checkpoints, written atomically (temporary file, fsync, rename)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ..errors import CaptchaError
from ..model.modelfile import atomic_write

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save a dict of tensors and plain values (loadable with weights_only=True)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CaptchaError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CaptchaError(f"{path}: checkpoint is damaged ({e})") from None
