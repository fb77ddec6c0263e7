"""Saving and loading a model file with its torch weights (the format itself: format.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.alphabet import Alphabet
from ..data.images import Preprocess
from ..errors import CaptchaError
from ..files import atomic_write
from .crnn import CRNN
from .format import FORMAT, META_KEY, VERSION, CRNNConfig, one_line, parse_metadata, read_metadata

__all__ = ["META_KEY", "ModelBundle", "atomic_write", "load_bundle", "read_metadata", "save_bundle"]


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


def save_bundle(bundle: ModelBundle, path: str | Path) -> None:
    """Save weights and metadata to a .safetensors file, atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    data = save(state, metadata={META_KEY: json.dumps(bundle.metadata())})
    atomic_write(path, lambda f: f.write(data))


def load_bundle(path: str | Path, device: str = "cpu") -> ModelBundle:
    """Load a model file saved by save_bundle (no pickle).

    Every problem (a damaged or foreign file, metadata that does not describe the stored tensors,
    preprocessing that does not fit the network) is a one-line CaptchaError naming the file.
    """
    from safetensors.torch import load_file

    spec = parse_metadata(read_metadata(path), str(path))
    cfg = spec.arch
    try:
        check_shapes(path, cfg)  # before any weight is allocated: tampered sizes cost nothing
        model = CRNN(cfg)
        state = load_file(str(path), device="cpu")
        model.load_state_dict(state, strict=True)
        check_finite(state)
    except CaptchaError:
        raise
    except Exception as e:
        raise CaptchaError(f"{path}: model file is damaged or inconsistent ({one_line(e)})") from None
    model.eval().to(device)
    return ModelBundle(model, spec.alphabet, spec.preprocess, spec.info)


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
