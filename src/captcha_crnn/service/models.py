"""Which models a server holds, and the name each is chosen by."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CaptchaError


@dataclass
class ModelEntry:
    """A loaded model and the name requests choose it by (``?model=NAME``)."""

    name: str
    recognizer: Any  # a Recognizer (anything with read_arrays, alphabet, preprocess, info)
    source: str = ""
    file: Path | None = None  # the model file it was loaded from (watched for changes), None: built in Python
    sha256: str = ""
    loaded_at: float = field(default_factory=time.time)
    threshold: float = 0.0  # readings under it are unsure (metrics, --keep-unsure)
    threshold_source: str = ""

    def describe(self) -> dict[str, Any]:
        """The public description served by ``GET /v1/models``."""
        pre = self.recognizer.preprocess
        return {
            "name": self.name,
            "alphabet": self.recognizer.alphabet.chars,
            "input": {"height": pre.height, "width": pre.width, "channels": pre.channels},
            "source": self.source,
            "sha256": self.sha256,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "unsure_below": round(self.threshold, 6),
        }

    @classmethod
    def load(cls, name: str, spec: str, below: float | None = None, **load_kwargs: Any) -> ModelEntry:
        """Load `spec` (path, run folder or shipped name) as `name`, with its file's hash and unsure threshold
        (`below`, else the model's own: evaluate.model_threshold)."""
        from ..evaluate import model_threshold
        from ..infer import Recognizer
        from ..model.zoo import resolve_model

        file = resolve_model(spec)
        digest = file_hash(file)
        rec = Recognizer.load(file, **load_kwargs)
        threshold, why = (below, "--below") if below is not None else model_threshold(rec.info)
        return cls(name, rec, str(spec), file, digest, time.time(), threshold, why)


def file_hash(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_name(spec: str) -> str:
    """The name a model spec is served under: ``NAME=PATH`` -> NAME; shipped name; file stem; folder name."""
    name, sep, path = spec.partition("=")
    if sep and name and not Path(spec).exists():
        return name
    p = Path(spec)
    if p.is_dir():
        return p.resolve().name
    if p.is_file():
        return p.stem
    return spec


def split_spec(spec: str) -> tuple[str, str]:
    """(name, model path or shipped name) of one ``serve`` argument."""
    name, sep, path = spec.partition("=")
    if sep and name and path and not Path(spec).exists():
        return name, path
    return model_name(spec), spec


def default_specs() -> list[str]:
    """The shipped models, or a clear error when none are installed."""
    from ..model.zoo import zoo_names

    names = zoo_names()
    if not names:
        raise CaptchaError(
            "no model given and no shipped models are installed: pass model files, run folders or shipped "
            "model names, e.g. `captcha-crnn serve runs/v2` or `captcha-crnn serve v2=runs/v2/model.safetensors`"
        )
    return names


def load_models(specs: Sequence[str], below: float | None = None, **load_kwargs: Any) -> list[ModelEntry]:
    """Load each spec (path, run folder, shipped name, or ``NAME=any of those``); no specs: the zoo.

    The first model is the default for requests that name none (with no specs: ``captcha_v2``
    when shipped, else the first shipped model).
    """
    given = list(specs)
    specs = given or default_specs()
    if not given and "captcha_v2" in specs:
        specs.remove("captcha_v2")
        specs.insert(0, "captcha_v2")
    entries: list[ModelEntry] = []
    seen: dict[str, str] = {}
    for spec in specs:
        name, path = split_spec(spec)
        if not name or any(c in name for c in "/\\?#&") or len(name) > 100:
            raise CaptchaError(f"{spec}: bad model name {name!r}; name it with NAME=PATH")
        if name in seen:
            raise CaptchaError(f"two models named {name!r} ({seen[name]} and {spec}); name them with NAME=PATH")
        seen[name] = spec
        entries.append(ModelEntry.load(name, path, below, **load_kwargs))
    return entries
