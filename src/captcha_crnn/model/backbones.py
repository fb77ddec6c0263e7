"""Convolutional feature extractors that turn (B, C, H, W) images into (B, C', H/h_div, W/4).

Every backbone gives W/4 columns (the one time-step rule, data/images.py: time_steps) and says how
much it divides the height by (`height_div`), which fixes the feature size the RNN sees.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .archs import backbone_card

# Downsampling per stage: height halves four times, width twice (W/4 time steps).
STRIDES = ((2, 2), (2, 2), (2, 1), (2, 1))


def conv_bn_relu(cin: int, cout: int, stride: tuple[int, int] = (1, 1)) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PlainBackbone(nn.Module):
    """VGG-style: per stage conv-BN-ReLU (x depth), then max-pool by the stage's stride."""

    def __init__(self, in_ch: int, widths: tuple[int, ...], depth: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_ch
        for w, s in zip(widths, STRIDES):
            for _ in range(depth):
                layers.append(conv_bn_relu(c, w))
                c = w
            layers.append(nn.MaxPool2d(kernel_size=s, stride=s))
        self.body = nn.Sequential(*layers)
        self.out_channels = c
        self.height_div = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, C, H, W) -> (B, C', H/16, W/4)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with a (projected) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.short: nn.Module = nn.Identity()
        if stride != (1, 1) or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.short(x))


class ResNetBackbone(nn.Module):
    """A small ResNet: a stem conv, then `depth` basic blocks per stage, the first one strided."""

    def __init__(self, in_ch: int, widths: tuple[int, ...], depth: int = 1):
        super().__init__()
        self.stem = conv_bn_relu(in_ch, widths[0] // 2)
        blocks: list[nn.Module] = []
        c = widths[0] // 2
        for w, s in zip(widths, STRIDES):
            for i in range(depth):
                blocks.append(BasicBlock(c, w, s if i == 0 else (1, 1)))
                c = w
        self.body = nn.Sequential(*blocks)
        self.out_channels = c
        self.height_div = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))  # (B, C, H, W) -> (B, C', H/16, W/4)


def conv_silu(cin: int, cout: int, stride: int = 1, norm: bool = False) -> nn.Sequential:
    """3x3 conv + SiLU; with `norm`, batch norm between them (and no conv bias: the norm has one)."""
    if not norm:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.SiLU())
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


def pointwise(cin: int, cout: int, norm: bool = False) -> nn.Module:
    """1x1 conv; with `norm`, followed by batch norm."""
    if not norm:
        return nn.Conv2d(cin, cout, 1)
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


class Residual(nn.Module):
    """x + 1x1(SiLU(3x3(x))): the block of the ddddocr backbone (its batch norm folded into conv biases;
    `norm` puts batch norm after both convolutions instead)."""

    def __init__(self, c: int, mid: int, norm: bool = False):
        super().__init__()
        self.body = nn.Sequential(conv_silu(c, mid, norm=norm), pointwise(mid, c, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DdddocrBackbone(nn.Module):
    """The convolutional part of the captcha model shipped in the `ddddocr` package (common.onnx):
    21 convolutions with SiLU, three stride-2 stages, 64 channels out. Its weights come from
    model/pretrained.py; the layer order here is the ONNX graph's order of Conv nodes.

    `norm` adds batch norm after every convolution: the same network, trainable from random weights
    (training/synthetic_pretrain.py); fold_batchnorm turns it back into the plain one.

    The original gives W/8 columns; each is repeated twice so the CRNN keeps T = W/4 (CTC then has
    room for a blank between repeated characters even in narrow images). With `seq` the W/8 columns are
    given as they are, for ddddocr's own LSTM, and the CRNN repeats that RNN's steps (`time_repeat`).
    """

    def __init__(self, in_ch: int = 1, widths: tuple[int, ...] = (), depth: int = 1, norm: bool = False,
                 seq: bool = False):
        super().__init__()
        if in_ch != 1:
            raise ValueError("the ddddocr backbone reads grey images (1 channel)")
        n = norm
        self.body = nn.Sequential(
            conv_silu(1, 24, 2, n), Residual(24, 24, n), Residual(24, 24, n),  # (B, 24, H/2, W/2)
            conv_silu(24, 96, 2, n), pointwise(96, 48, n),
            *[Residual(48, 192, n) for _ in range(3)],  # (B, 48, H/4, W/4)
            conv_silu(48, 192, 2, n), pointwise(192, 64, n),
            *[Residual(64, 256, n) for _ in range(3)],  # (B, 64, H/8, W/8)
        )
        self.out_channels = 64
        self.height_div = 8
        self.time_repeat = 2 if seq else 1  # the CRNN repeats each RNN step this often

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)  # (B, 64, H/8, ceil(W/8))
        return f if self.time_repeat > 1 else repeat_steps(f, 2, x.shape[-1] // 4)  # (B, 64, H/8, W/4)


def repeat_steps(f: torch.Tensor, k: int, t: Any) -> torch.Tensor:
    """Each step of the last axis `k` times, cut to `t` steps (exportable: no Python-side shape logic)."""
    *lead, w = f.shape
    return f.unsqueeze(-1).expand(*lead, w, k).reshape(*lead, k * w)[..., :t]


def ddddocr_seq(in_ch: int = 1, widths: tuple[int, ...] = (), depth: int = 1) -> DdddocrBackbone:
    """The ddddocr layout giving its own W/8 columns (for its LSTM; the CRNN repeats the RNN's steps)."""
    return DdddocrBackbone(in_ch, widths, depth, seq=True)


def ddddocr_bn(in_ch: int = 1, widths: tuple[int, ...] = (), depth: int = 1) -> DdddocrBackbone:
    """The ddddocr layout with batch norm after every convolution (for pre-training from scratch)."""
    return DdddocrBackbone(in_ch, widths, depth, norm=True)


def fold_batchnorm(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The plain DdddocrBackbone state dict equal (in eval mode) to a `norm` one: each batch norm
    folded into the convolution before it. Conv modules appear in the same order in both."""
    mods = list(backbone.modules())
    folded: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            bn = mods[i + 1]
            if not isinstance(bn, nn.BatchNorm2d):
                raise ValueError("fold_batchnorm needs batch norm after every convolution")
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
            w = m.weight * scale[:, None, None, None]
            b = bn.bias - bn.running_mean * scale + (m.bias * scale if m.bias is not None else 0)
            folded.append((w.detach().clone(), b.detach().clone()))
    plain = DdddocrBackbone()
    names = [name for name, m in plain.named_modules() if isinstance(m, nn.Conv2d)]
    return {k: v for name, (w, b) in zip(names, folded, strict=True)
            for k, v in ((f"{name}.weight", w), (f"{name}.bias", b))}


def build_backbone(name: str, in_ch: int, widths: tuple[int, ...], depth: int = 1) -> nn.Module:
    """The backbone `name` (a backbone card of model/archs.py), built by its card's builder here."""
    return globals()[backbone_card(name).builder](in_ch, widths, depth)
