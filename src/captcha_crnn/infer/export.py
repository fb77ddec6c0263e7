"""Export a CRNN to ONNX (optionally int8-quantised) with the model file's metadata inside.

The ONNX graph takes ``image``: float32 ink (B, C, H, W) in [0, 1] (``data/images.py: to_ink``),
and gives ``log_probs``: float32 (B, T = W/4, classes). The batch axis is always dynamic; the
width (and so time) axis is dynamic when the model keeps the aspect ratio (preprocess width None).
The same JSON the .safetensors file carries (alphabet, preprocess, architecture, metrics, training)
is stored in the ONNX model's ``metadata_props`` under ``captcha_crnn``, so the .onnx file alone
is enough to read captchas.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

from ..errors import CaptchaError
from ..files import atomic_write
from ..model.format import INPUT, META_KEY, ONNX_KEY, OUTPUT, onnx_metadata
from ..model.modelfile import ModelBundle, load_bundle
from ..model.zoo import resolve_model

OPSET = 17
EXPORT_VERSION = 1  # bump when the exported graph changes (invalidates the engine's cache)


def _export_module(model: Any) -> Any:
    """The CRNN's own forward in its exportable form (no Python-side shape logic)."""
    from torch import nn

    class Exported(nn.Module):
        def __init__(self, m: Any):
            super().__init__()
            self.m = m

        def forward(self, x: Any) -> Any:
            return self.m(x, exportable=True)

    # eval() on the wrapper too: the exporter traces in the wrapper's mode, and a GRU/LSTM in
    # training mode would be exported with its inter-layer dropout.
    return Exported(model).eval()


def export_bytes(bundle: ModelBundle, int8: bool = False) -> bytes:
    """A serialized ONNX model of the bundle's CRNN, with its metadata; int8: dynamic quantisation."""
    import onnx
    import torch

    pre = bundle.preprocess
    width = max(4, pre.width // 4 * 4) if pre.width is not None else 128
    x = torch.zeros(2, pre.channels, pre.height, width)
    dyn_in, dyn_out = {0: "batch"}, {0: "batch"}
    if pre.width is None:
        dyn_in[3], dyn_out[1] = "width", "time"
    module = _export_module(bundle.model.cpu())
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and GRU batch-size notices
        torch.onnx.export(module, (x,), buf, dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: dyn_in, OUTPUT: dyn_out}, opset_version=OPSET,
                          do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    meta = bundle.metadata()
    graph_info = {"input": INPUT, "output": OUTPUT, "input_range": "ink = (255 - pixel) / 255",
                  "dynamic_width": pre.width is None, "quantized": None, "torch": torch.__version__}
    if int8:
        proto = quantize_int8(proto, bundle.model.cfg.rnn)
        graph_info["quantized"] = "int8-dynamic"
    set_metadata(proto, meta, graph_info)
    return proto.SerializeToString()


def set_metadata(proto: Any, meta: dict[str, Any], graph_info: dict[str, Any]) -> None:
    """Store the model-file JSON and the graph description in metadata_props (replacing old ones)."""
    keep = [p for p in proto.metadata_props if p.key not in (META_KEY, ONNX_KEY)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in ((META_KEY, meta), (ONNX_KEY, graph_info)):
        p = proto.metadata_props.add()
        p.key, p.value = key, json.dumps(value)
    proto.producer_name = "captcha-crnn"
    proto.doc_string = f"CRNN captcha reader; alphabet {meta.get('alphabet')!r}"


def quantize_int8(proto: Any, rnn: str = "gru") -> Any:
    """Dynamic int8 quantisation of the weights of MatMul/Gemm (and LSTM; ONNX Runtime has no
    integer GRU). Convolutions stay float: ConvInteger is slower than float Conv on CPU."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = ["MatMul", "Gemm"] + (["LSTM"] if rnn == "lstm" else [])
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(proto.SerializeToString())
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)  # its "consider pre-processing" advice goes to the root logger
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(src, dst, op_types_to_quantize=ops, weight_type=QuantType.QInt8, per_channel=False)
        finally:
            logging.disable(level)
        return onnx.load_from_string(dst.read_bytes())


def _onnx_input(path: Path, int8: bool) -> bytes:
    """Re-export an existing .onnx model file (checking it is ours), quantising it if asked."""
    import onnx

    meta, graph_info = onnx_metadata(path)
    if not int8:
        return path.read_bytes()
    if graph_info.get("quantized"):
        raise CaptchaError(f"{path}: already quantised ({graph_info['quantized']})")
    proto = quantize_int8(onnx.load_from_string(path.read_bytes()), meta.get("model", {}).get("rnn", "gru"))
    set_metadata(proto, meta, {**graph_info, "quantized": "int8-dynamic"})
    return proto.SerializeToString()


def export_onnx(model: str | Path, out: str | Path, int8: bool = False) -> Path:
    """Export a model (file, run folder or shipped name) to an .onnx file, atomically; returns its path."""
    path = resolve_model(model)
    if path.suffix.lower() == ".onnx":
        data = _onnx_input(path, int8)
    else:
        data = export_bytes(load_bundle(path), int8=int8)
    out = Path(out)
    try:
        atomic_write(out, lambda f: f.write(data))
    except OSError as e:
        raise CaptchaError(f"{out}: cannot write ({e.strerror or e})") from None
    return out
