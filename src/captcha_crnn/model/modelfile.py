"""The model file: safetensors weights plus JSON metadata (alphabet, preprocessing, architecture,
metrics, training data). Loading never unpickles code."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.alphabet import Alphabet
from ..data.images import Preprocess
from ..errors import CaptchaError
from .crnn import CRNN, CRNNConfig

FORMAT = "captcha-crnn"
VERSION = 1
META_KEY = "captcha_crnn"


@dataclass
class ModelBundle:
    """Everything needed to read: the network, its alphabet and its preprocessing."""

    model: CRNN
    alphabet: Alphabet
    preprocess: Preprocess
    info: dict[str, Any] = field(default_factory=dict)  # metrics, training data, split seed

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "alphabet": self.alphabet.to_json(),
            "preprocess": self.preprocess.to_dict(),
            "model": self.model.cfg.to_dict(),
            **self.info,
        }


def atomic_write(path: str | Path, write: Any) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_bundle(bundle: ModelBundle, path: str | Path) -> None:
    """Save weights and metadata to a .safetensors file, atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    data = save(state, metadata={META_KEY: json.dumps(bundle.metadata())})
    atomic_write(path, lambda f: f.write(data))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a model file, without loading its weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CaptchaError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CaptchaError(f"{path}: not a captcha-crnn model file ({e})") from None
    if META_KEY not in meta:
        raise CaptchaError(f"{path}: not a captcha-crnn model file (no {META_KEY} metadata)")
    try:
        info = json.loads(meta[META_KEY])
    except json.JSONDecodeError:
        raise CaptchaError(f"{path}: model metadata is not valid JSON") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CaptchaError(f"{path}: not a captcha-crnn model file")
    if not isinstance(info.get("version"), int):
        raise CaptchaError(f"{path}: model metadata has no valid format version")
    if info["version"] > VERSION:
        raise CaptchaError(f"{path}: model format version {info['version']} is newer than this library")
    return info


def load_bundle(path: str | Path, device: str = "cpu") -> ModelBundle:
    """Load a model file saved by save_bundle (no pickle)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        cfg = CRNNConfig.from_dict(meta["model"])
        model = CRNN(cfg)
        state = load_file(str(path), device="cpu")
        model.load_state_dict(state, strict=True)
        alphabet = Alphabet(meta["alphabet"])
        pre = Preprocess.from_dict(meta["preprocess"])
    except CaptchaError:
        raise
    except Exception as e:
        raise CaptchaError(f"{path}: model file is damaged or inconsistent ({e})") from None
    if alphabet.num_classes != cfg.num_classes:
        raise CaptchaError(f"{path}: alphabet size does not match the model's classes")
    info = {k: v for k, v in meta.items() if k not in ("format", "version", "alphabet", "preprocess", "model")}
    model.eval().to(device)
    return ModelBundle(model, alphabet, pre, info)
