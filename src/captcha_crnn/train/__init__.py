"""Training: configuration, the loop, schedule and checkpoints."""

from .config import TrainConfig
from .loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
