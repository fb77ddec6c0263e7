"""captcha-crnn: learn to read text captchas with a CRNN + CTC, and read them fast.

    from captcha_crnn import Recognizer
    r = Recognizer.load("runs/v2/model.safetensors")
    r.predict(["a.png", open("b.png", "rb").read()])
"""

from __future__ import annotations

from typing import Any

from .errors import CaptchaError
from .version import __version__

__all__ = ["CaptchaError", "Prediction", "Recognizer", "TrainConfig", "train", "__version__"]


def __getattr__(name: str) -> Any:  # heavy imports (torch) only when used
    if name in ("Recognizer", "Prediction"):
        from .infer import recognizer

        return getattr(recognizer, name)
    if name in ("TrainConfig", "train"):
        from . import training

        return getattr(training, name)
    raise AttributeError(name)
