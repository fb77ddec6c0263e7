"""Training: `train(data, TrainConfig(...))` runs the plan (training/plan.py) stage by stage (training/run.py)."""

from __future__ import annotations

from typing import Any

from .config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:  # the run imports torch; the config does not
    if name in ("train", "TrainResult"):
        from . import run

        return getattr(run, name)
    raise AttributeError(name)
