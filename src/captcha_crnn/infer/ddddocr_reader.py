"""ddddocr's own captcha model as a zero-shot reader: the pretrained start for labelling.

Before a user has trained anything, the labelling page pre-fills with the model that `ddddocr`
reads with by default (``common_old.onnx``, run here with onnxruntime, no ddddocr code). Its
classifier covers about 8000 characters; only the blank and the characters the user allows are
kept before the softmax, so the reading and its confidence are over those alone, decoded by the
project's CTC decoder like any model's.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.alphabet import Alphabet
from ..data.images import ImageInput, Preprocess, describe
from ..decode.ctc import greedy_decode
from ..errors import CaptchaError
from ..model.archs import DDDDOCR
from ..model.ddddocr_package import CHARSET_FILE, class_list, installed, package_file
from .batching import fill_in, load_many
from .recognizer import Prediction

NAME = "ddddocr"  # the model name that means this reader (label --model ddddocr)
ONNX_FILE = "common_old.onnx"
PRE = Preprocess(height=DDDDOCR.height, width=None, channels=1, min_width=8)  # the one preprocessing, at its height
DEFAULT_CHARSET = string.digits + string.ascii_letters  # what a captcha most often holds


def available() -> bool:
    """Whether the installed ddddocr has the model and class list this reader uses (1.6 and later)."""
    return installed(ONNX_FILE) and installed(CHARSET_FILE)


class DdddocrReader:
    """Reads captchas with ddddocr's model, restricted to `charset` (default: digits and ASCII letters).

    A ``Reader`` (reader.py), as a Recognizer is: ``predict``, ``prepare`` + ``read_arrays``, ``alphabet``.
    """

    def __init__(self, charset: str | None = None, threads: int | None = None):
        import os

        import onnxruntime as ort

        classes = class_list("CHARSET_OLD")
        index = {c: i for i, c in enumerate(classes) if c}
        allowed = list(dict.fromkeys(charset or DEFAULT_CHARSET))
        self.chars = [c for c in allowed if c in index or c.swapcase() in index]
        self.missing = "".join(c for c in allowed if c not in self.chars)  # characters it never reads
        if not self.chars:
            raise CaptchaError(f"ddddocr's model reads none of the characters {''.join(allowed)!r}")
        # each allowed character collects its own class and, when that case is not allowed, the other
        # case's: ddddocr mostly reads lower case, so an upper-case-only charset keeps those readings
        self.columns = [[0]] + [[index[v] for v in dict.fromkeys((c, c.swapcase()))
                                 if v in index and (v == c or v not in allowed)] for c in self.chars]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.log_severity_level = 3  # the graph declares a (1, T) output it does not give: a warning per run
        self.session = ort.InferenceSession(str(package_file(ONNX_FILE)), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    @property
    def alphabet(self) -> Alphabet:
        """The characters it reads: the allowed ones its model has a class for."""
        return Alphabet("".join(self.chars))

    def prepare(self, images: Sequence[ImageInput], errors: str = "raise") -> list[np.ndarray | CaptchaError]:
        """Images to the grey uint8 (1, 64, W) arrays ``read_arrays`` takes (errors: as ``predict``)."""
        return load_many(images, PRE, errors=errors)

    def read_arrays(self, arrays: Sequence[np.ndarray]) -> list[Prediction]:
        """Read arrays made by ``prepare``, one at a time (each keeps its own width)."""
        out = []
        for a in arrays:
            x = a[None].astype(np.float32) / 255.0  # (1, 1, 64, W) grey / 255, as ddddocr feeds it
            logits = self.session.run(None, {self.input: x})[0][:, 0]  # (T, classes)
            kept = np.stack([np.logaddexp.reduce(logits[:, cols], axis=1) for cols in self.columns], 1)  # (T, 1 + n)
            logp = kept - np.logaddexp.reduce(kept, axis=1, keepdims=True)  # log-softmax over the kept classes
            d = greedy_decode(logp)
            out.append(Prediction("".join(self.chars[i - 1] for i in d.indices), d.confidence, d.char_confidences))
        return out

    def predict(self, images: ImageInput | Sequence[ImageInput], errors: str = "raise") -> Any:
        """Read one image or a list (errors "return": an unreadable image's CaptchaError in its place)."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        out = fill_in(self.prepare(items, errors), self.read_arrays)
        for p, src in zip(out, items):
            if isinstance(p, Prediction):
                p.source = describe(src)
        return out[0] if single else out
