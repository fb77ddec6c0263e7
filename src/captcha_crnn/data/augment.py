"""Batch augmentation on ink tensors that keeps the text readable: affine, blur, noise, contrast."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, strength: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly perturb a batch of ink images (B, C, H, W) in [0, 1]; strength 0 returns x."""
    if strength <= 0:
        return x
    b, c, h, w = x.shape
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:  # (B,) uniform in [lo, hi]
        return torch.rand(b, generator=generator).to(dev) * (hi - lo) + lo

    s = strength
    angle = u(-3, 3) * s * math.pi / 180
    shear = u(-0.15, 0.15) * s
    scale = 1 + u(-0.06, 0.06) * s
    tx, ty = u(-0.03, 0.03) * s, u(-0.08, 0.08) * s
    aspect = h / w  # rotate in pixel space, not in normalised coordinates
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([cos / scale, (-sin * aspect + shear * aspect) / scale, tx], 1),
        torch.stack([sin / aspect / scale, cos / scale, ty], 1),
    ], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    k = torch.tensor([0.25, 0.5, 0.25], device=dev)
    kernel = (k[:, None] * k[None, :]).expand(c, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
    mix = (torch.rand(b, generator=generator).to(dev) < 0.3 * s).float() * u(0.3, 1.0)
    x = x + (blurred - x) * mix.view(b, 1, 1, 1)

    contrast = 1 + u(-0.25, 0.25) * s
    bright = u(-0.06, 0.06) * s
    x = x * contrast.view(b, 1, 1, 1) + bright.view(b, 1, 1, 1)
    sigma = u(0, 0.05) * s
    noise = torch.randn(x.shape, generator=generator).to(dev)
    x = x + noise * sigma.view(b, 1, 1, 1)
    return x.clamp_(0, 1)
