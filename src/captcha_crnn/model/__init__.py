"""The CRNN: a convolutional backbone, a bidirectional RNN over the width, a linear per step."""

from .crnn import CRNN, PRESETS, CRNNConfig

__all__ = ["CRNN", "CRNNConfig", "PRESETS"]
