"""The public reading API: ``Recognizer.load(path_or_name).predict(images)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import ImageInput, describe, load_image
from ..decode.ctc import decode_batch
from ..errors import CaptchaError
from ..model.modelfile import ModelBundle, load_bundle
from ..model.run import log_probs


@dataclass
class Prediction:
    """The text read from one image, its probability and each character's."""

    text: str
    confidence: float
    char_confidences: list[float] = field(default_factory=list)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_model(name_or_path: str | Path) -> Path:
    """A model file path from a path (or a run folder holding model.safetensors)."""
    p = Path(name_or_path)
    if p.is_dir() and (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    if p.is_file():
        return p
    from .zoo import zoo_path

    z = zoo_path(str(name_or_path))
    if z is not None:
        return z
    raise CaptchaError(f"{name_or_path}: no such model file or shipped model")


class Recognizer:
    """Reads captchas with a trained CRNN. Load with ``Recognizer.load(path)``."""

    def __init__(self, bundle: ModelBundle, device: str = "cpu"):
        self.bundle = bundle
        self.device = device
        self.alphabet = bundle.alphabet
        self.preprocess = bundle.preprocess

    @classmethod
    def load(cls, model: str | Path, device: str = "cpu") -> Recognizer:
        """Load a model file, a run folder, or a shipped model by name."""
        return cls(load_bundle(resolve_model(model), device=device), device=device)

    @property
    def info(self) -> dict[str, Any]:
        return self.bundle.info

    def _allowed(self, charset: str | None) -> list[int] | None:
        if charset is None:
            return None
        unknown = self.alphabet.unknown(charset)
        if unknown:
            raise CaptchaError(f"charset has characters the model does not know: {''.join(sorted(unknown))}")
        return [self.alphabet.index[c] for c in set(charset)]

    def predict_arrays(
        self,
        arrays: Sequence[np.ndarray],
        beam: int = 1,
        length: int | None = None,
        charset: str | None = None,
        batch_size: int = 128,
    ) -> list[Prediction]:
        """Read already-preprocessed uint8 (C, H, W) arrays."""
        if not arrays:
            return []
        allowed = self._allowed(charset)
        lps = log_probs(self.bundle.model, arrays, batch_size, self.device)
        preds = []
        for lp in lps:
            d = decode_batch(lp[None], beam=beam, length=length, allowed=allowed)[0]
            preds.append(Prediction(self.alphabet.decode(d.indices), d.confidence, d.char_confidences))
        return preds

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        beam: int = 1,
        length: int | None = None,
        charset: str | None = None,
        batch_size: int = 128,
    ) -> Prediction | list[Prediction]:
        """Read one image or a list of them (paths, bytes, PIL images, numpy arrays).

        A list gives a list of Predictions in the same order; a single image gives one.
        beam: beam width (1 = greedy); length: exactly this many characters; charset: only these.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        arrays = [load_image(im, self.preprocess) for im in items]
        preds = self.predict_arrays(arrays, beam, length, charset, batch_size)
        for p, src in zip(preds, items):
            p.source = describe(src)
        return preds[0] if single else preds
