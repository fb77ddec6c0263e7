"""Training: configuration, the loop, schedule and checkpoints."""

from __future__ import annotations

import sys
import types
from typing import Any

from .config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:  # the loop imports torch; the config does not
    if name in ("train", "TrainResult"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(name)


class _CallableModule(types.ModuleType):
    """Lets `from captcha_crnn import train; train(data, cfg)` call the training function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .loop import train as _train

        return _train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
