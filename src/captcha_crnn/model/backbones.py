"""Convolutional feature extractors that turn (B, C, H, W) images into (B, C', H/16, W/4)."""

from __future__ import annotations

import torch
from torch import nn

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))  # (B, C, H, W) -> (B, C', H/16, W/4)


BACKBONES = {"plain": PlainBackbone, "resnet": ResNetBackbone}
