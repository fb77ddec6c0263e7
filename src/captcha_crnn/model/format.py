"""The model file format, without torch: constants, the architecture schema (CRNNConfig), and reading
and checking the JSON metadata that .safetensors and .onnx model files carry.

A model file is safetensors weights plus JSON under META_KEY: format, version, alphabet,
preprocess (data/images.py: Preprocess), model (CRNNConfig), and free-form info (training,
metrics). An exported .onnx file carries the same JSON in its metadata_props, plus ONNX_KEY (how the
graph was made). Loading never unpickles code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data.alphabet import Alphabet
from ..data.images import Preprocess
from ..errors import CaptchaError
from .archs import BACKBONES, DEFAULT

FORMAT = "captcha-crnn"
VERSION = 1
META_KEY = "captcha_crnn"
ONNX_KEY = "captcha_crnn.onnx"  # ONNX metadata_props key: how the graph was made (names, quantisation)
INPUT, OUTPUT = "image", "log_probs"  # the ONNX graph's input (float ink) and output names
CORE_KEYS = ("format", "version", "alphabet", "preprocess", "model")
# What a backbone is fed: ink (0 paper, 1 ink: the project's own), grey / 255 ("pixel"), or
# (grey / 255 - 0.5) / 0.5 ("centered"), as the ddddocr model was trained on.
INPUT_NORMS = ("ink", "pixel", "centered")
# Bounds on what a model file may ask for, far above any real captcha model, so a tampered file
# cannot make loading build millions of layers.
ARCH_LIMITS = {"depth": 16, "rnn_layers": 8, "hidden": 8192, "num_classes": 100_000}


@dataclass
class CRNNConfig:
    """Architecture of a CRNN; stored in every model file. A field the file does not give takes the
    default card's value (archs.DEFAULT)."""

    num_classes: int = 37  # alphabet + CTC blank
    in_channels: int = 1
    height: int = 32
    backbone: str = DEFAULT.backbone  # archs.BACKBONES
    input_norm: str = DEFAULT.input_norm  # what the backbone is fed (INPUT_NORMS)
    widths: tuple[int, ...] = DEFAULT.widths
    depth: int = DEFAULT.depth
    rnn: str = "gru"  # gru | lstm
    hidden: int = DEFAULT.hidden
    proj: bool = DEFAULT.proj  # a linear+ReLU from the features to `hidden` before the RNN (else the RNN reads them)
    rnn_layers: int = 2
    dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CRNNConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "widths" in known:
            known["widths"] = tuple(known["widths"])
        return cls(**known)


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
    for name, choices in (("rnn", ("gru", "lstm")), ("backbone", BACKBONES), ("input_norm", INPUT_NORMS)):
        if getattr(cfg, name) not in choices:
            raise ValueError(f"model {name} must be {' or '.join(choices)}, not {getattr(cfg, name)!r}")
    if cfg.height % 16 or cfg.height < 16:
        raise ValueError(f"model height must be a multiple of 16, not {cfg.height!r}")
    if not isinstance(cfg.proj, bool):
        raise ValueError(f"model proj must be true or false, not {cfg.proj!r}")
    if not isinstance(cfg.dropout, (int, float)) or not 0 <= cfg.dropout < 1:
        raise ValueError(f"model dropout must be a number in [0, 1), not {cfg.dropout!r}")


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut to `limit` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_header(meta: Any, source: str) -> dict[str, Any]:
    """The metadata dict when it is ours and not newer than this library; CaptchaError otherwise."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CaptchaError(f"{source}: not a captcha-crnn model file")
    if not isinstance(meta.get("version"), int):
        raise CaptchaError(f"{source}: model metadata has no valid format version")
    if meta["version"] > VERSION:
        raise CaptchaError(f"{source}: model format version {meta['version']} is newer than this library")
    return meta


def parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise CaptchaError(f"{source}: model metadata is not valid JSON") from None


@dataclass
class ModelSpec:
    """What a model file's metadata says: the network, its alphabet, its preprocessing, and the rest."""

    arch: CRNNConfig
    alphabet: Alphabet
    preprocess: Preprocess
    info: dict[str, Any]


def parse_metadata(meta: dict[str, Any], source: str) -> ModelSpec:
    """Architecture, alphabet and preprocessing, checked against each other; CaptchaError naming the
    first inconsistency."""
    try:
        for k in ("model", "alphabet", "preprocess"):
            if k not in meta:
                raise ValueError(f"metadata lacks {k!r}")
        if not isinstance(meta["model"], dict):
            raise ValueError("metadata 'model' must be a JSON object")
        if not isinstance(meta["alphabet"], str):
            raise ValueError("metadata 'alphabet' must be a string")
        arch = CRNNConfig.from_dict(meta["model"])
        check_architecture(arch)
        alphabet = Alphabet(meta["alphabet"])
        pre = Preprocess.from_dict(meta["preprocess"])
        if alphabet.num_classes != arch.num_classes:
            raise ValueError(f"alphabet of {len(alphabet)} characters needs {alphabet.num_classes} classes, "
                             f"the network has {arch.num_classes}")
        if (pre.channels, pre.height) != (arch.in_channels, arch.height):
            raise ValueError(f"preprocessing gives {pre.channels} channel(s) of height {pre.height}, the network "
                             f"takes {arch.in_channels} of height {arch.height}")
    except CaptchaError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed field is the file's problem, named in one line
        raise CaptchaError(f"{source}: model metadata is damaged or inconsistent ({one_line(e)})") from None
    return ModelSpec(arch, alphabet, pre, {k: v for k, v in meta.items() if k not in CORE_KEYS})


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CaptchaError(f"{path}: no such model file")
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a .safetensors model file, without loading its weights."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise CaptchaError(f"{path}: not a captcha-crnn model file ({one_line(e)})") from None
    if META_KEY not in raw:
        raise CaptchaError(f"{path}: not a captcha-crnn model file (no {META_KEY} metadata)")
    return check_header(parse_json(raw[META_KEY], str(path)), str(path))


def check_onnx_metadata(raw: dict[str, str], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model-file JSON, graph description) from ONNX metadata_props, checked like a model file's."""
    if META_KEY not in raw:
        raise CaptchaError(f"{source}: not a captcha-crnn ONNX model (no {META_KEY} metadata)")
    meta = check_header(parse_json(raw[META_KEY], source), source)
    graph = parse_json(raw.get(ONNX_KEY, "{}"), source)
    if not isinstance(graph, dict):
        raise CaptchaError(f"{source}: not a captcha-crnn ONNX model")
    for k in ("alphabet", "preprocess", "model"):
        if k not in meta:
            raise CaptchaError(f"{source}: model metadata lacks {k!r}")
    return meta, graph


def onnx_metadata(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metadata of an .onnx model file without running it (needs the onnx package)."""
    import onnx

    path = _existing(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises several types for a damaged file
        raise CaptchaError(f"{path}: not a readable ONNX model ({one_line(e)})") from None
    return check_onnx_metadata({p.key: p.value for p in proto.metadata_props}, str(path))
