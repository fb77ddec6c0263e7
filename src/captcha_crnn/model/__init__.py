"""The CRNN (a convolutional backbone, a bidirectional RNN over the width, a linear per step) and
its model file. Importing the package imports no torch: format.py and zoo.py read model files
without it (an .onnx model is read by onnxruntime alone)."""

from __future__ import annotations

from typing import Any

__all__ = ["CRNN", "CRNNConfig", "PRESETS"]


def __getattr__(name: str) -> Any:
    if name == "CRNN":
        from .crnn import CRNN

        return CRNN
    if name == "PRESETS":
        from .archs import PRESETS

        return PRESETS
    if name == "CRNNConfig":
        from .format import CRNNConfig

        return CRNNConfig
    raise AttributeError(name)
