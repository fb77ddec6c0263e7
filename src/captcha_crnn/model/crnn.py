"""CRNN: backbone -> columns as a sequence -> 2-layer bidirectional GRU/LSTM -> linear per step."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..data.images import time_steps
from .backbones import BACKBONES


@dataclass
class CRNNConfig:
    """Architecture of a CRNN; stored in every model file."""

    num_classes: int = 37  # alphabet + CTC blank
    in_channels: int = 1
    height: int = 32
    backbone: str = "plain"  # plain | resnet
    widths: tuple[int, ...] = field(default_factory=lambda: (32, 64, 96, 128))
    depth: int = 1
    rnn: str = "gru"  # gru | lstm
    hidden: int = 128
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


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(widths=(16, 32, 48, 64), hidden=64),
    "small": dict(widths=(16, 32, 64, 128), hidden=96),  # 2.3x faster to read than (32,64,96,128)/128, as accurate
    "base": dict(widths=(64, 128, 192, 256), hidden=256, depth=2),
}


def preset(name: str, **overrides: Any) -> CRNNConfig:
    """A CRNNConfig from a preset name with overrides (num_classes, backbone, rnn, ...)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(CRNNConfig(**PRESETS[name]), **overrides)


class CRNN(nn.Module):
    """Image (B, C, H, W) ink in [0, 1] -> log-probabilities (B, T=W/4, num_classes)."""

    def __init__(self, cfg: CRNNConfig):
        super().__init__()
        if cfg.height % 16:
            raise ValueError(f"height must be a multiple of 16, got {cfg.height}")
        if cfg.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {cfg.backbone!r}; choose from {', '.join(BACKBONES)}")
        self.cfg = cfg
        self.backbone = BACKBONES[cfg.backbone](cfg.in_channels, cfg.widths, cfg.depth)
        feat = self.backbone.out_channels * (cfg.height // 16)
        self.proj = nn.Sequential(nn.Linear(feat, cfg.hidden), nn.ReLU(inplace=True))
        rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}[cfg.rnn]
        self.rnn = rnn_cls(cfg.hidden, cfg.hidden, num_layers=cfg.rnn_layers, bidirectional=True,
                           batch_first=True, dropout=cfg.dropout if cfg.rnn_layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.hidden, cfg.num_classes)

    @staticmethod
    def output_lengths(widths: Any) -> torch.Tensor:
        """(B,) time steps produced for input widths (data/images.py: time_steps)."""
        return torch.from_numpy(time_steps(widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., : max(4, x.shape[-1] // 4 * 4)]  # width a multiple of 4: T = W // 4 exactly
        f = self.backbone(x)  # (B, C', H/16, W/4)
        b, c, h, t = f.shape
        f = f.permute(0, 3, 1, 2).reshape(b, t, c * h)  # (B, T, C'*H/16)
        f = self.proj(f)  # (B, T, hidden)
        f, _ = self.rnn(f)  # (B, T, 2*hidden)
        logits = self.head(self.drop(f))  # (B, T, num_classes)
        return logits.float().log_softmax(-1)
