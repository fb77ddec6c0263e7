"""Shipped models, usable by name wherever a model path is accepted."""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


def zoo_names() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.stem for p in ZOO_DIR.glob("*.safetensors"))


def zoo_path(name: str) -> Path | None:
    """The file of a shipped model, or None."""
    p = ZOO_DIR / f"{name}.safetensors"
    return p if p.is_file() else None
