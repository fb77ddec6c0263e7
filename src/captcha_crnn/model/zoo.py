"""Shipped models, usable by name wherever a model path is accepted, and their model cards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CaptchaError
from .format import read_metadata

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


def zoo_names() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.stem for p in ZOO_DIR.glob("*.safetensors"))


def zoo_path(name: str) -> Path | None:
    """The file of a shipped model, or None."""
    p = ZOO_DIR / f"{name}.safetensors"
    return p if p.is_file() else None


def resolve_model(name_or_path: str | Path) -> Path:
    """A model file path from a path, a run folder holding model.safetensors, or a shipped model's name."""
    p = Path(name_or_path)
    if p.is_dir() and (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    if p.is_file():
        return p
    z = zoo_path(str(name_or_path))
    if z is not None:
        return z
    raise CaptchaError(f"{name_or_path}: no such model file or shipped model")


def model_card(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """What a user needs to choose a model: alphabet, input size, training data, held-out accuracy, size."""
    path = Path(path)
    meta = read_metadata(path)
    pre = meta.get("preprocess", {})
    tr = meta.get("training", {})  # training info and metrics are top-level keys of the metadata
    test = meta.get("metrics", {}).get("test") or {}
    width = pre.get("width")
    return {
        "name": name or path.stem,
        "alphabet": meta.get("alphabet", ""),
        "input": f"{width or 'variable'}x{pre.get('height')} {'grey' if pre.get('channels', 1) == 1 else 'RGB'}",
        "training_data": tr.get("source") or tr.get("data", ""),
        "train_images": tr.get("train_images"),
        "held_out": tr.get("recipe") or tr.get("split", ""),
        "test_n": test.get("n"),
        "test_sequence_accuracy": test.get("sequence_accuracy"),
        "test_cer": test.get("cer"),
        "size_mb": round(path.stat().st_size / 1e6, 2),
        "path": str(path),
    }


def zoo_cards() -> list[dict[str, Any]]:
    """Model cards of every shipped model."""
    return [model_card(zoo_path(n), n) for n in zoo_names()]  # type: ignore[arg-type]


def format_cards(cards: list[dict[str, Any]]) -> str:
    """A markdown table of model cards (used by `captcha-crnn models` and the README)."""
    rows = ["| name | alphabet | input | training data | held-out accuracy | size |", "|---|---|---|---|---|---|"]
    for c in cards:
        acc = c["test_sequence_accuracy"]
        acc_s = f"{acc:.2%} of {c['test_n']} (CER {c['test_cer']:.4f})" if acc is not None else "-"
        rows.append(f"| `{c['name']}` | `{c['alphabet']}` ({len(c['alphabet'])}) | {c['input']} | "
                    f"{c['training_data']} ({c['train_images']} train images) | {acc_s} | {c['size_mb']:.1f} MB |")
    return "\n".join(rows)
