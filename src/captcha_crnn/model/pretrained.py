"""The captcha-pretrained backbone: the convolutions of the model inside the `ddddocr` package, or
the project's own weights for the same layout (`captcha-crnn pretrain`), shipped or from a file.

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

from ..data.alphabet import Alphabet
from ..errors import CaptchaError
from ..files import atomic_write, cache_dir
from .archs import DDDDOCR, DDDDOCR_LAYOUT, PRETRAINED, READER
from .backbones import DdddocrBackbone
from .crnn import CRNN
from .ddddocr_package import INSTALL_HINT, class_list, installed, package_file
from .format import one_line

ONNX_FILE = "common.onnx"
TOLERANCE = 1e-4  # largest difference allowed between the rebuilt backbone and onnxruntime


def available(source: str = "ddddocr") -> bool:
    """Whether the weights of `source` are at hand: the ddddocr package installed (nothing is
    imported), or a backbone file there."""
    return installed(ONNX_FILE) if source == "ddddocr" else Path(source).is_file()


def pick_source(requested: str) -> str | None:
    """The weights `requested` ("auto": ddddocr where installed) or None."""
    source = PRETRAINED.weights if requested == "auto" else requested
    return source if available(source) else None


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
    if not isinstance(height, int) or height < 16 or height % 16:
        raise CaptchaError(f"{path}: its metadata gives the input height {raw!r}, not a multiple of 16")
    return height


def backbone_weights(source: str = "ddddocr") -> tuple[dict[str, torch.Tensor], str]:
    """The backbone weights of `source` ("ddddocr" or a file) and a note saying where they came from."""
    return _ddddocr_weights() if source == "ddddocr" else _file_weights(source)


def load_pretrained(model: CRNN, source: str = "ddddocr") -> str:
    """Copy the pretrained backbone of `source` into `model` (whose backbone must be `ddddocr`); describe it."""
    if model.cfg.backbone not in DDDDOCR_LAYOUT:
        raise CaptchaError(f"the pretrained weights are for --backbone {PRETRAINED.backbone}, not {model.cfg.backbone}")
    state, note = backbone_weights(source)
    model.backbone.load_state_dict(state)
    return note


# ddddocr's own LSTM and classifier as the start of a new model's RNN and head (--pretrained-head ddddocr):
#
# The pretrained start otherwise keeps only ddddocr's convolutions and learns a new RNN and head, which throws
# its zero-shot reading away: from a few labels a new head learns little, while ddddocr's whole reader, limited
# to the labels' characters, already reads many styles. Here the bidirectional LSTM (512 per direction) and the
# classifier of ``common.onnx`` are read with `onnx` (no code is run), checked with the backbone against
# onnxruntime on a probe image, cached as safetensors, and the classifier's rows are cut to the blank and the
# alphabet's characters (CHARSET_BETA); a character ddddocr has no class for keeps its random row.
HIDDEN = 512  # ddddocr's LSTM, per direction


def _gates(a: np.ndarray) -> torch.Tensor:
    """ONNX's LSTM gate order (input, output, forget, cell) -> torch's (input, forget, cell, output)."""
    i, o, f, c = np.split(a, 4, axis=0)
    return torch.from_numpy(np.concatenate([i, f, c, o], 0).copy())


def convert_head(proto: Any, path: Path) -> dict[str, torch.Tensor]:
    """`rnn.*` (a one-layer bidirectional torch LSTM) and `head.*` (all of ddddocr's classes) from the graph."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    lstm = next((n for n in proto.graph.node if n.op_type == "LSTM"), None)
    gemm = next((n for n in proto.graph.node if n.op_type == "Gemm"), None)
    if lstm is None or gemm is None or lstm.input[1] not in inits or gemm.input[1] not in inits:
        raise CaptchaError(f"{path}: no LSTM and classifier found; not the ddddocr model this start expects")
    w, r, b = (inits[lstm.input[k]] for k in (1, 2, 3))  # (2, 4H, In), (2, 4H, H), (2, 8H)
    if w.shape != (2, 4 * HIDDEN, HIDDEN) or r.shape != (2, 4 * HIDDEN, HIDDEN):
        raise CaptchaError(f"{path}: its LSTM is {w.shape}, this start expects (2, {4 * HIDDEN}, {HIDDEN})")
    state = {}
    for d, suffix in ((0, ""), (1, "_reverse")):
        state[f"rnn.weight_ih_l0{suffix}"] = _gates(w[d])
        state[f"rnn.weight_hh_l0{suffix}"] = _gates(r[d])
        state[f"rnn.bias_ih_l0{suffix}"] = _gates(b[d][: 4 * HIDDEN])
        state[f"rnn.bias_hh_l0{suffix}"] = _gates(b[d][4 * HIDDEN:])
    state["head.weight"] = torch.from_numpy(inits[gemm.input[1]].copy())  # (classes, 2H)
    state["head.bias"] = torch.from_numpy(inits[gemm.input[2]].copy())
    return state


def check_head(state: dict[str, torch.Tensor], proto: Any, path: Path) -> float:
    """Largest difference between the rebuilt reader (backbone, LSTM, classifier) and onnxruntime's logits on a
    probe image; CaptchaError above TOLERANCE."""
    import onnxruntime as ort

    quiet = ort.SessionOptions()
    quiet.log_severity_level = 3  # the graph declares its output's shape wrongly; onnxruntime warns of it
    sess = ort.InferenceSession(proto.SerializeToString(), quiet, providers=["CPUExecutionProvider"])
    probe = np.random.default_rng(0).random((1, 1, DDDDOCR.height, 160), dtype=np.float32)  # (1, 1, 64, W)
    want = sess.run(None, {sess.get_inputs()[0].name: probe})[0]  # (W/8, 1, classes)
    backbone = DdddocrBackbone(seq=True)
    backbone.load_state_dict(backbone_weights("ddddocr")[0])
    rnn = torch.nn.LSTM(HIDDEN, HIDDEN, bidirectional=True)
    rnn.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("rnn.")})
    with torch.inference_mode():
        f = backbone(torch.from_numpy(probe)).permute(3, 0, 1, 2).flatten(2)  # (W/8, 1, 64*8)
        got = (rnn(f)[0] @ state["head.weight"].T + state["head.bias"]).numpy()  # (W/8, 1, classes)
    err = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if err > TOLERANCE:
        raise CaptchaError(f"{path}: the rebuilt reader differs from onnxruntime by {err:.2g}; not the ddddocr "
                           "model this start expects")
    return err


def head_weights() -> tuple[dict[str, torch.Tensor], str]:
    """The checked LSTM and classifier (converted on first use, then read from the cache) and a note."""

    def build(proto: Any, path: Path) -> tuple[dict[str, torch.Tensor], float]:
        state = convert_head(proto, path)
        return state, check_head(state, proto, path)

    return cached_conversion("reader", build)


def load_reader_head(model: CRNN, alphabet: Alphabet) -> str:
    """Copy ddddocr's LSTM and its classifier's rows for the blank and `alphabet` into `model` (the reader
    preset); describe how many characters it knew."""
    cfg = model.cfg
    if (cfg.backbone, cfg.rnn, cfg.hidden, cfg.rnn_layers, cfg.height) != (
            READER.backbone, READER.rnn, HIDDEN, READER.rnn_layers, DDDDOCR.height):
        raise CaptchaError(f"ddddocr's RNN and head need the {READER.name} architecture at height {DDDDOCR.height}")
    state, _ = head_weights()
    model.rnn.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("rnn.")})
    classes = {c: i for i, c in enumerate(class_list("CHARSET_BETA"))}  # "" (index 0) is the blank
    rows = [0] + [classes.get(c, -1) for c in alphabet.chars]
    known = [k for k, i in enumerate(rows) if i >= 0]
    with torch.no_grad():
        for name in ("weight", "bias"):
            getattr(model.head, name)[known] = state[f"head.{name}"][[rows[k] for k in known]]
    return f"ddddocr's LSTM and classifier ({len(known) - 1}/{len(alphabet.chars)} characters)"
