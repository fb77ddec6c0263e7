"""The one rule for where captcha-crnn caches derived files (exported ONNX graphs, converted weights)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path | None:
    """$CAPTCHA_CRNN_CACHE when set (every kind in that one folder; "" turns caching off), else
    $XDG_CACHE_HOME/captcha-crnn/KIND (~/.cache when XDG_CACHE_HOME is unset)."""
    env = os.environ.get("CAPTCHA_CRNN_CACHE")
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "captcha-crnn" / kind
