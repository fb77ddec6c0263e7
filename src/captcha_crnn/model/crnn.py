"""CRNN: backbone -> columns as a sequence -> 2-layer bidirectional GRU/LSTM -> linear per step.

The architecture (CRNNConfig) is part of the model format (format.py); this is the network it builds."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..data.images import time_steps
from .archs import PRESETS
from .backbones import build_backbone, repeat_steps
from .format import INPUT_NORMS, CRNNConfig


def preset(name: str, **overrides: Any) -> CRNNConfig:
    """A CRNNConfig with the sizes of a preset (archs.PRESETS) and overrides (num_classes, backbone, rnn, ...)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(CRNNConfig(**PRESETS[name]), **overrides)


class CRNN(nn.Module):
    """Image (B, C, H, W) ink in [0, 1] -> log-probabilities (B, T=W/4, num_classes)."""

    def __init__(self, cfg: CRNNConfig):
        super().__init__()
        if cfg.height % 16:
            raise ValueError(f"height must be a multiple of 16, got {cfg.height}")
        if cfg.input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {cfg.input_norm!r}; choose from {', '.join(INPUT_NORMS)}")
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, cfg.in_channels, cfg.widths, cfg.depth)
        feat = self.backbone.out_channels * (cfg.height // self.backbone.height_div)
        self.proj = nn.Sequential(nn.Linear(feat, cfg.hidden), nn.ReLU(inplace=True)) if cfg.proj else nn.Identity()
        rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}[cfg.rnn]
        self.rnn = rnn_cls(cfg.hidden if cfg.proj else feat, cfg.hidden, num_layers=cfg.rnn_layers, bidirectional=True,
                           batch_first=True, dropout=cfg.dropout if cfg.rnn_layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.hidden, cfg.num_classes)

    @staticmethod
    def output_lengths(widths: Any) -> torch.Tensor:
        """(B,) time steps produced for input widths (data/images.py: time_steps)."""
        return torch.from_numpy(time_steps(widths))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Ink in [0, 1] (paper 0) -> what the backbone was trained on (cfg.input_norm)."""
        if self.cfg.input_norm == "pixel":
            return 1.0 - x  # grey / 255
        if self.cfg.input_norm == "centered":
            return 1.0 - 2.0 * x  # (grey / 255 - 0.5) / 0.5
        return x

    def forward(self, x: torch.Tensor, exportable: bool = False) -> torch.Tensor:
        """exportable: no Python-side shape logic (the ONNX graph; widths are then a multiple of 4)."""
        if not exportable:
            x = x[..., : max(4, x.shape[-1] // 4 * 4)]  # width a multiple of 4: T = W // 4 exactly
        f = self.backbone(self.normalize(x))  # (B, C', H/h_div, W/4) (W/8 where the backbone repeats later)
        f = f.permute(0, 3, 1, 2).flatten(2)  # (B, T, C'*H/h_div)
        f = self.proj(f)  # (B, T, hidden) (or unchanged without a projection)
        f, _ = self.rnn(f)  # (B, T, 2*hidden)
        if getattr(self.backbone, "time_repeat", 1) > 1:  # ddddocr's LSTM read W/8 columns: T = W/4 again
            f = repeat_steps(f.transpose(1, 2), self.backbone.time_repeat, x.shape[-1] // 4).transpose(1, 2)
        logits = self.head(self.drop(f))  # (B, T, num_classes)
        return logits.float().log_softmax(-1)
