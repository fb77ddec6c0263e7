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

from ..data.images import ImageInput, describe, open_image, to_mode
from ..decode.ctc import greedy_decode
from ..errors import CaptchaError
from ..model.ddddocr_package import package_file
from .recognizer import Prediction

NAME = "ddddocr"  # the model name that means this reader (label --model ddddocr)
ONNX_FILE = "common_old.onnx"
CHARSET_FILE = "charsets.py"
HEIGHT = 64
DEFAULT_CHARSET = string.digits + string.ascii_letters  # what a captcha most often holds


def _charset() -> list[str]:
    """ddddocr's class list (CHARSET_OLD in its charsets.py), read as a literal: no code is run."""
    import ast

    path = package_file(CHARSET_FILE)
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CHARSET_OLD" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise CaptchaError(f"{path}: no CHARSET_OLD; not the ddddocr version this reader knows")


class DdddocrReader:
    """Reads captchas with ddddocr's model, restricted to `charset` (default: digits and ASCII letters).

    Offers the part of Recognizer's interface the labelling page uses: ``predict(images, errors=...)``.
    """

    def __init__(self, charset: str | None = None, threads: int = 1):
        import onnxruntime as ort

        classes = _charset()
        index = {c: i for i, c in enumerate(classes) if c}
        allowed = charset or DEFAULT_CHARSET
        missing = sorted({c for c in allowed if c not in index})
        self.chars = [c for c in dict.fromkeys(allowed) if c in index]
        if not self.chars:
            raise CaptchaError(f"ddddocr's model reads none of the characters {allowed!r}")
        self.columns = np.array([0] + [index[c] for c in self.chars])  # blank, then the allowed characters
        self.missing = "".join(missing)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # the graph declares a (1, T) output it does not give: a warning per run
        path = package_file(ONNX_FILE)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def _read_one(self, src: ImageInput) -> Prediction:
        im = to_mode(open_image(src), 1, describe(src))  # grey, transparency on white
        w = max(8, round(im.width * HEIGHT / im.height))
        x = np.asarray(im.resize((w, HEIGHT), resample=3), dtype=np.float32)[None, None] / 255.0  # (1, 1, 64, W)
        logits = self.session.run(None, {self.input: x})[0][:, 0, self.columns]  # (T, 1 + len(chars))
        logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)  # log-softmax over the kept classes
        d = greedy_decode(logp)
        return Prediction("".join(self.chars[i - 1] for i in d.indices), d.confidence, d.char_confidences,
                          describe(src))

    def predict(self, images: ImageInput | Sequence[ImageInput], errors: str = "raise") -> Any:
        """Read one image or a list (errors "return": an unreadable image's CaptchaError in its place)."""
        single = not isinstance(images, (list, tuple))
        out: list[Prediction | CaptchaError] = []
        for src in [images] if single else images:
            try:
                out.append(self._read_one(src))
            except CaptchaError as e:
                if errors != "return":
                    raise
                out.append(e)
        return out[0] if single else out
