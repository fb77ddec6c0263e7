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
    """Load a model file saved by save_bundle (no pickle).

    Every problem (a damaged or foreign file, metadata that does not describe the stored tensors,
    preprocessing that does not fit the network) is a one-line CaptchaError naming the file.
    """
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        cfg, alphabet, pre = parse_metadata(meta)
        check_shapes(path, cfg)  # before any weight is allocated: tampered sizes cost nothing
        model = CRNN(cfg)
        state = load_file(str(path), device="cpu")
        model.load_state_dict(state, strict=True)
        check_finite(state)
    except CaptchaError:
        raise
    except Exception as e:
        raise CaptchaError(f"{path}: model file is damaged or inconsistent ({one_line(e)})") from None
    info = {k: v for k, v in meta.items() if k not in ("format", "version", "alphabet", "preprocess", "model")}
    model.eval().to(device)
    return ModelBundle(model, alphabet, pre, info)


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut to `limit` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_metadata(meta: dict[str, Any]) -> tuple[CRNNConfig, Alphabet, Preprocess]:
    """Architecture, alphabet and preprocessing from model-file metadata, checked against each other.

    Raises ValueError (or KeyError, TypeError) describing the first inconsistency.
    """
    if not isinstance(meta.get("model"), dict):
        raise ValueError("metadata 'model' must be a JSON object")
    if not isinstance(meta.get("alphabet"), str):
        raise ValueError("metadata 'alphabet' must be a string")
    cfg = CRNNConfig.from_dict(meta["model"])
    check_architecture(cfg)
    alphabet = Alphabet(meta["alphabet"])
    pre = Preprocess.from_dict(meta["preprocess"])
    if alphabet.num_classes != cfg.num_classes:
        raise ValueError(f"alphabet of {len(alphabet)} characters needs {alphabet.num_classes} classes, "
                         f"the network has {cfg.num_classes}")
    if (pre.channels, pre.height) != (cfg.in_channels, cfg.height):
        raise ValueError(f"preprocessing gives {pre.channels} channel(s) of height {pre.height}, the network "
                         f"takes {cfg.in_channels} of height {cfg.height}")
    return cfg, alphabet, pre


# Bounds on what a model file may ask for, far above any real captcha model, so a tampered file
# cannot make loading build millions of layers.
ARCH_LIMITS = {"depth": 16, "rnn_layers": 8, "hidden": 8192, "num_classes": 100_000}


def check_architecture(cfg: CRNNConfig) -> None:
    """ValueError when the architecture is mistyped or out of any sensible range."""
    widths = cfg.widths
    if len(widths) != 4 or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 2 for w in widths):
        raise ValueError(f"model widths must be 4 integers >= 2, not {list(widths)}")
    for name, hi in ARCH_LIMITS.items():
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ValueError(f"model {name} must be an integer from 1 to {hi}, not {v!r}")
    if cfg.in_channels not in (1, 3) or isinstance(cfg.in_channels, bool):
        raise ValueError(f"model in_channels must be 1 or 3, not {cfg.in_channels!r}")
    if cfg.rnn not in ("gru", "lstm"):
        raise ValueError(f"model rnn must be gru or lstm, not {cfg.rnn!r}")
    if not isinstance(cfg.dropout, (int, float)) or not 0 <= cfg.dropout < 1:
        raise ValueError(f"model dropout must be a number in [0, 1), not {cfg.dropout!r}")


def check_finite(state: dict[str, Any]) -> None:
    """ValueError naming the first floating-point tensor with a NaN or infinite value (flipped bits)."""
    import numpy as np

    for k, v in state.items():
        if v.is_floating_point() and not np.isfinite(v.detach().float().numpy()).all():
            raise ValueError(f"tensor {k} holds NaN or infinite values")


def check_shapes(path: str | Path, cfg: CRNNConfig) -> None:
    """Compare the tensors stored in the file with the architecture's, without allocating either."""
    import torch
    from safetensors import safe_open

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in CRNN(cfg).state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    if missing or extra:
        what = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {extra[0]}"
        raise ValueError(f"{what} ({len(missing)} missing, {len(extra)} unexpected)")
    for k, shape in expected.items():
        if stored[k] != shape:
            raise ValueError(f"tensor {k} has shape {list(stored[k])}, the architecture needs {list(shape)}")
