"""``Reader``: what every reader offers, a trained model (``Recognizer``) or ddddocr's own model
zero-shot (``DdddocrReader``). Code that takes either (the labelling page's pre-fill) takes a Reader."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..data.alphabet import Alphabet
from ..data.images import ImageInput
from ..errors import CaptchaError
from .recognizer import Prediction

__all__ = ["Reader"]


@runtime_checkable
class Reader(Protocol):
    """Reads captchas: images of any kind (``predict``) or the arrays its own preprocessing made
    (``prepare`` then ``read_arrays``), over the characters of its ``alphabet``."""

    @property
    def alphabet(self) -> Alphabet:
        """The characters it reads."""
        ...

    def prepare(self, images: Sequence[ImageInput], errors: str = "raise") -> list[np.ndarray | CaptchaError]:
        """Decode and preprocess images to the uint8 (C, H, W) arrays ``read_arrays`` takes;
        errors="return" puts an unreadable image's CaptchaError in its place."""
        ...

    def read_arrays(self, arrays: Sequence[np.ndarray]) -> list[Prediction]:
        """Read arrays made by ``prepare``, one Prediction each, in order."""
        ...

    def predict(self, images: ImageInput | Sequence[ImageInput], *, errors: str = "raise") -> Any:
        """One image -> a Prediction; a list -> a list in order (errors="return": an unreadable
        image's CaptchaError in its place, else the first one raises)."""
        ...

