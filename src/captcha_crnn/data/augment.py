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


def _warp(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Resample x (B, C, H, W) at the identity grid shifted by dx, dy (B, H, W) in normalised units."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device)
    xs = torch.linspace(-1, 1, w, device=x.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
    grid = torch.stack([gx[None] + dx, gy[None] + dy], -1)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def elastic(x: torch.Tensor, alpha: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A smooth random displacement: noise on a coarse 4 x (W/16) grid, upsampled; `alpha` is its largest
    shift as a share of the image height."""
    b, _, h, w = x.shape
    coarse = (torch.rand(b, 2, 4, max(2, w // 16), generator=generator) * 2 - 1).to(x.device)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)  # (B, 2, H, W)
    return _warp(x, field[:, 0] * alpha * h / w, field[:, 1] * alpha)


def lens(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Barrel (k > 0) or pincushion (k < 0) distortion per image, k (B,): the centre scaled by 1 + k/2, the
    middles of the edges left in place (so a barrel pushes nothing out of the frame but the corners)."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device)
    xs = torch.linspace(-1, 1, w, device=x.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
    f = (1 + k.view(b, 1, 1) * (gx**2 + gy**2)[None] / 2) / (1 + k.view(b, 1, 1) / 2)  # (B, H, W)
    return _warp(x, gx[None] * (f - 1), gy[None] * (f - 1))


def erase(x: torch.Tensor, generator: torch.Generator | None = None, max_share: float = 0.12) -> torch.Tensor:
    """Blank one random box per image (up to `max_share` of its width, a third to all of its height)."""
    b, _, h, w = x.shape
    r = torch.rand(b, 4, generator=generator)
    bw = (r[:, 0] * max_share * w).long() + 1
    bh = ((r[:, 1] * 2 + 1) / 3 * h).long()
    x0 = (r[:, 2] * (w - bw)).long()
    y0 = (r[:, 3] * (h - bh + 1)).long()
    cols = torch.arange(w)[None, :]
    rows = torch.arange(h)[None, :]
    inside = ((cols >= x0[:, None]) & (cols < (x0 + bw)[:, None]))[:, None, :] & \
        ((rows >= y0[:, None]) & (rows < (y0 + bh)[:, None]))[:, :, None]  # (B, H, W)
    return x.masked_fill(inside[:, None].to(x.device), 0.0)


STRONG = 2.0  # the strong view's affine, blur, noise and contrast strength (augment's scale)
ELASTIC = 0.04  # its largest elastic shift, of the image height
LENS = 0.3  # its largest lens strength either way


def policy(x: torch.Tensor, strength: float | str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A training batch's augmentation: `augment` at a strength, or "strong" (strong_augment)."""
    if strength == "strong":
        return strong_augment(x, generator)
    return augment(x, float(strength), generator)


def strong_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The strong view of semi-supervised training (training/semi.py): what `augment` does at STRONG, then
    an elastic warp, a lens warp, per-channel colour jitter and one erased box, on ink (B, C, H, W) in [0, 1].
    The text stays readable to a person: a reading of the weak view is a fair target for it."""
    b, c = x.shape[:2]
    x = augment(x, STRONG, generator)
    x = elastic(x, ELASTIC, generator)
    x = lens(x, (torch.rand(b, generator=generator) * 2 - 1).to(x.device) * LENS)
    if c > 1:  # colour: each channel's ink scaled on its own
        x = x * (1 + (torch.rand(b, c, 1, 1, generator=generator) - 0.5).to(x.device) * 0.4)
    return erase(x, generator).clamp_(0, 1)
