"""The captcha-pretrained backbone: the convolutions of the model inside the `ddddocr` package.

The package (an optional extra: ``pip install "captcha-crnn[pretrained]"``, MIT licence) ships
``common.onnx``, a captcha reader trained on a very large set of captchas. Its initialisers are read
with `onnx` (no code is unpickled or run), copied into model/backbones.py: DdddocrBackbone in the
graph's order of Conv nodes, checked against onnxruntime on a probe image, and cached once as
safetensors. A trained model file holds every weight, so reading never needs `ddddocr`.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CaptchaError
from ..files import atomic_write, cache_dir
from ..model.backbones import DdddocrBackbone
from ..model.crnn import CRNN
from ..model.format import one_line

INSTALL_HINT = 'pip install "captcha-crnn[pretrained]"'
ONNX_FILE = "common.onnx"
TOLERANCE = 1e-4  # largest difference allowed between the rebuilt backbone and onnxruntime


def available() -> bool:
    """Whether the ddddocr package (and so its ONNX model) is installed; imports nothing."""
    try:
        _onnx_path()
    except CaptchaError:
        return False
    return True


def _onnx_path() -> Path:
    spec = importlib.util.find_spec("ddddocr")
    if spec is None or not spec.submodule_search_locations:
        raise CaptchaError(f"the pretrained backbone needs the ddddocr package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / ONNX_FILE
    if not path.is_file():
        raise CaptchaError(f"{path}: not found in the installed ddddocr package; reinstall it ({INSTALL_HINT})")
    return path


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
    probe = np.random.default_rng(0).random((1, 1, 64, 160), dtype=np.float32)  # (1, 1, 64, W) grey / 255
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


def backbone_weights() -> tuple[dict[str, torch.Tensor], str]:
    """The checked backbone weights (converted on first use, then read from the safetensors cache)
    and a note saying where they came from."""
    from safetensors.torch import load_file, save

    path = _onnx_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    folder = cache_dir("pretrained")  # None: caching off, convert every time
    cached = folder / f"ddddocr-backbone-{digest}.safetensors" if folder else None
    if cached is not None and cached.is_file():
        try:
            return load_file(str(cached)), f"ddddocr backbone ({cached})"
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt
            cached.unlink(missing_ok=True)
    proto = _load(path)
    state = convert(proto, path)
    err = check(state, proto, path)
    if cached is not None:
        data = save(state, metadata={"source": str(path), "sha256_16": digest, "max_error": f"{err:.3g}"})
        try:
            atomic_write(cached, lambda f: f.write(data))
        except OSError:
            pass  # a read-only cache only costs a conversion per run
    return state, f"ddddocr backbone (converted from {path}, max difference from onnxruntime {err:.1e})"


def load_pretrained(model: CRNN) -> str:
    """Copy the pretrained backbone into `model` (whose backbone must be `ddddocr`); describe it."""
    if model.cfg.backbone != "ddddocr":
        raise CaptchaError(f"the pretrained weights are for --backbone ddddocr, not {model.cfg.backbone}")
    state, note = backbone_weights()
    model.backbone.load_state_dict(state)
    return note
