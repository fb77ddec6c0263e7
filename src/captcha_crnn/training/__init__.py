"""Training: configuration, data, the loop, state and checkpoints, the pretrained start."""

from __future__ import annotations

from typing import Any

from .config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train", "train_model"]


def __getattr__(name: str) -> Any:  # the loop imports torch; the config does not
    if name == "train":
        from .recipe import train

        return train
    if name == "train_model":
        from .stage import train_model

        return train_model
    if name == "TrainResult":
        from .loop import TrainResult

        return TrainResult
    raise AttributeError(name)
