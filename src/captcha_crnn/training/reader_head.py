"""ddddocr's own LSTM and classifier as the start of a new model's RNN and head (`--pretrained-head ddddocr`).

The pretrained start otherwise keeps only ddddocr's convolutions and learns a new RNN and head, which throws
its zero-shot reading away: from a few labels a new head learns little, while ddddocr's whole reader, limited
to the labels' characters, already reads many styles. Here the bidirectional LSTM (512 per direction) and the
classifier of ``common.onnx`` are read with `onnx` (no code is run), checked with the backbone against
onnxruntime on a probe image, cached as safetensors, and the classifier's rows are cut to the blank and the
alphabet's characters (CHARSET_BETA); a character ddddocr has no class for keeps its random row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.alphabet import Alphabet
from ..errors import CaptchaError
from ..model.archs import DDDDOCR, READER
from ..model.backbones import DdddocrBackbone
from ..model.crnn import CRNN
from ..model.ddddocr_package import class_list
from .pretrained_weights import TOLERANCE, backbone_weights, cached_conversion

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
