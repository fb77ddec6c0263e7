"""The captcha-pretrained backbone: the convolutions of the model inside the `ddddocr` package, or
the project's own weights for the same layout (training/synthetic_pretrain.py), shipped or from a file.

The package (an optional extra: ``pip install "captcha-crnn[pretrained]"``, MIT licence) ships
``common.onnx``, a captcha reader trained on a very large set of captchas. Its initialisers are read
with `onnx` (no code is unpickled or run), copied into model/backbones.py: DdddocrBackbone in the
graph's order of Conv nodes, checked against onnxruntime on a probe image, and cached once as
safetensors. A trained model file holds every weight, so reading never needs `ddddocr`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CaptchaError
from ..files import atomic_write, cache_dir
from ..model.archs import DDDDOCR, DDDDOCR_LAYOUT, PRETRAINED
from ..model.backbones import DdddocrBackbone
from ..model.crnn import CRNN
from ..model.ddddocr_package import INSTALL_HINT, installed, package_file
from ..model.format import one_line
from .config import height_problem

ONNX_FILE = "common.onnx"
SOURCES = ("ddddocr",)  # or the path of a backbone file written by `captcha-crnn pretrain`
TOLERANCE = 1e-4  # largest difference allowed between the rebuilt backbone and onnxruntime


def available(source: str = "ddddocr") -> bool:
    """Whether the weights of `source` are at hand: the ddddocr package installed (nothing is
    imported), or a backbone file there."""
    return installed(ONNX_FILE) if source == "ddddocr" else Path(source).is_file()


def pick_source(requested: str) -> str | None:
    """The weights `requested` ("auto": ddddocr where installed) or None."""
    if requested != "auto":
        return requested if available(requested) else None
    return next((s for s in SOURCES if available(s)), None)


def missing_hint(source: str) -> str:
    """Which weights are missing and how to get them."""
    if source in ("ddddocr", "auto"):
        return f"the pretrained ddddocr backbone is not installed: {INSTALL_HINT}"
    return f"--backbone-weights {source}: no such file (make one with `captcha-crnn pretrain`)"


def _onnx_path() -> Path:
    return package_file(ONNX_FILE)


def _load(path: Path) -> Any:
    """The ONNX model proto of `path` (read once per conversion: the file is about 54 MB)."""
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - onnx raises several types for a damaged file
        raise CaptchaError(f"{path}: not a readable ONNX model ({one_line(e)})") from None


def _graph(proto: Any, path: Path) -> tuple[list, dict[str, np.ndarray], str]:
    """(the Conv nodes before the sequence part, initialisers by name, the backbone's output tensor)."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    convs = []
    for node in proto.graph.node:
        if node.op_type == "Transpose":  # (N, C, H, W) -> sequence: the backbone ends here
            return convs, inits, node.input[0]
        if node.op_type == "Conv":
            convs.append(node)
    raise CaptchaError(f"{path}: no sequence step found; not the ddddocr model this backbone expects")


def convert(proto: Any, path: Path) -> dict[str, torch.Tensor]:
    """The DdddocrBackbone state dict from the ONNX model's initialisers, shape by shape."""
    convs, inits, _ = _graph(proto, path)
    backbone = DdddocrBackbone()
    mine = [(name, m) for name, m in backbone.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if len(convs) != len(mine):
        raise CaptchaError(f"{path}: {len(convs)} convolutions, the backbone has {len(mine)}")
    state = {}
    for (name, conv), node in zip(mine, convs):
        w, b = inits[node.input[1]], inits[node.input[2]]
        if tuple(w.shape) != tuple(conv.weight.shape) or tuple(b.shape) != tuple(conv.bias.shape):
            raise CaptchaError(f"{path}: convolution {name} is {tuple(w.shape)}, the backbone expects "
                               f"{tuple(conv.weight.shape)}")
        state[f"{name}.weight"] = torch.from_numpy(w.copy())
        state[f"{name}.bias"] = torch.from_numpy(b.copy())
    return state


def check(state: dict[str, torch.Tensor], proto: Any, path: Path) -> float:
    """Largest difference between the rebuilt backbone and onnxruntime on a probe image; CaptchaError
    above TOLERANCE. Adds the backbone's output to `proto`'s graph outputs."""
    import onnx
    import onnxruntime as ort

    _, _, out_name = _graph(proto, path)
    proto.graph.output.insert(0, onnx.helper.make_empty_tensor_value_info(out_name))  # the backbone's output
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    probe = np.random.default_rng(0).random((1, 1, DDDDOCR.height, 160), dtype=np.float32)  # (1, 1, 64, W)
    want = sess.run([out_name], {sess.get_inputs()[0].name: probe})[0]  # (1, 64, 8, W/8)
    backbone = DdddocrBackbone()
    backbone.load_state_dict(state)
    with torch.inference_mode():
        got = backbone.body(torch.from_numpy(probe)).numpy()
    err = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if err > TOLERANCE:
        raise CaptchaError(f"{path}: the rebuilt backbone differs from onnxruntime by {err:.2g} (shapes "
                           f"{got.shape} and {want.shape}); not the ddddocr model this backbone expects")
    return err


def cached_conversion(kind: str, build: Any) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors converted from the package's common.onnx by `build(proto, path) -> (tensors, max error)`,
    cached as safetensors by the file's hash under `kind`; and a note saying where they came from."""
    from safetensors.torch import load_file, save

    path = _onnx_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    folder = cache_dir("pretrained")  # None: caching off, convert every time
    cached = folder / f"ddddocr-{kind}-{digest}.safetensors" if folder else None
    if cached is not None and cached.is_file():
        try:
            return load_file(str(cached)), f"ddddocr {kind} ({cached})"
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt
            cached.unlink(missing_ok=True)
    state, err = build(_load(path), path)
    if cached is not None:
        data = save(state, metadata={"source": str(path), "sha256_16": digest, "max_error": f"{err:.3g}"})
        try:
            atomic_write(cached, lambda f: f.write(data))
        except OSError:
            pass  # a read-only cache only costs a conversion per run
    return state, f"ddddocr {kind} (converted from {path}, max difference from onnxruntime {err:.1e})"


def _ddddocr_weights() -> tuple[dict[str, torch.Tensor], str]:
    """The checked ddddocr backbone weights (converted on first use, then read from the cache)."""

    def build(proto: Any, path: Path) -> tuple[dict[str, torch.Tensor], float]:
        state = convert(proto, path)
        return state, check(state, proto, path)

    return cached_conversion("backbone", build)


def _read_file(source: str) -> tuple[dict[str, torch.Tensor], dict[str, str], Path]:
    """(tensors, metadata, path) of a backbone file `captcha-crnn pretrain` wrote; CaptchaError naming the
    file when it is missing or not a safetensors file."""
    from safetensors import safe_open

    path = Path(source)
    if not path.is_file():
        raise CaptchaError(missing_hint(source))
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}, path
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise CaptchaError(f"{path}: not a safetensors backbone file ({one_line(e)})") from None


def _file_weights(source: str) -> tuple[dict[str, torch.Tensor], str]:
    """Backbone weights from a file, checked tensor by tensor against the layout."""
    state, _, path = _read_file(source)
    want = DdddocrBackbone().state_dict()
    bad = sorted(set(want) ^ set(state)) or [k for k in want if state[k].shape != want[k].shape]
    if bad:
        raise CaptchaError(f"{path}: not a ddddocr-layout backbone (tensor {bad[0]} missing, extra or misshapen)")
    return {k: v.float() for k, v in state.items()}, f"{source} backbone ({path})"


def native_height(source: str) -> int:
    """The input height the backbone of `source` was trained at: ddddocr's 64, or what the file's
    metadata says (`captcha-crnn pretrain` writes it; 64 when it says nothing)."""
    if source == "ddddocr":
        return DDDDOCR.height
    _, meta, path = _read_file(source)
    raw = meta.get("height", str(DDDDOCR.height))
    height = int(raw) if raw.isdigit() else raw
    if height_problem(height) or height == "auto":
        raise CaptchaError(f"{path}: its metadata gives the input height {raw!r}, not a multiple of 16")
    return height


def backbone_weights(source: str = "ddddocr") -> tuple[dict[str, torch.Tensor], str]:
    """The backbone weights of `source` (SOURCES or a file) and a note saying where they came from."""
    return _ddddocr_weights() if source == "ddddocr" else _file_weights(source)


def load_pretrained(model: CRNN, source: str = "ddddocr") -> str:
    """Copy the pretrained backbone of `source` into `model` (whose backbone must be `ddddocr`); describe it."""
    if model.cfg.backbone not in DDDDOCR_LAYOUT:
        raise CaptchaError(f"the pretrained weights are for --backbone {PRETRAINED.backbone}, not {model.cfg.backbone}")
    state, note = backbone_weights(source)
    model.backbone.load_state_dict(state)
    return note
