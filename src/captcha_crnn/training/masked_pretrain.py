"""Self-supervised pretraining of the backbone on the unlabelled pool: masked-image reconstruction.

The sequence model reads the backbone's features one column (4 input pixels wide) at a time. Here spans of
those columns are blanked in the input and a linear decoder on the backbone's feature column rebuilds each
blanked strip's pixels (MAE-style, He et al. 2022; GeeSolver pretrains its encoder this way on the
unlabelled captchas). The loss counts only the blanked strips, so the backbone must infer strokes from
their surroundings. The decoder is dropped afterwards; the recurrent layer and head are untouched.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import ImageSet
from .data import ink_tensor
from .log import log

STRIP = 4  # input columns per feature column (CRNN.forward: T = W // 4)
MASK_SHARE = 0.4  # of each image's columns blanked, in spans
SPAN = (2, 5)  # columns per blanked span, least and most (8-20 pixels: about a character's stroke)
BATCH = 32
LR = 3e-4


def column_mask(b: int, t: int, gen: torch.Generator) -> torch.Tensor:
    """(B, T) booleans: spans of SPAN columns blanked until MASK_SHARE of each row is."""
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        while mask[i].float().mean() < MASK_SHARE:
            n = int(torch.randint(SPAN[0], SPAN[1] + 1, (1,), generator=gen))
            s = int(torch.randint(0, max(1, t - n + 1), (1,), generator=gen))
            mask[i, s : s + n] = True
    return mask


def strips(x: torch.Tensor, t: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, T, C*H*STRIP): each feature column's input pixels."""
    b, c, h, _ = x.shape
    x = x[..., : t * STRIP].reshape(b, c, h, t, STRIP)  # (B, C, H, T, STRIP)
    return x.permute(0, 3, 1, 2, 4).flatten(2)  # (B, T, C*H*STRIP)


def reconstruction_loss(model: nn.Module, decoder: nn.Module, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mean squared error of the blanked strips rebuilt from the backbone's features of the masked input."""
    x = x[..., : max(STRIP, x.shape[-1] // STRIP * STRIP)]
    t = x.shape[-1] // STRIP
    mask = column_mask(x.shape[0], t, gen).to(x.device)  # (B, T)
    pixel_mask = mask.repeat_interleave(STRIP, dim=1)[:, None, None, :]  # (B, 1, 1, W)
    f = model.backbone(model.normalize(x.masked_fill(pixel_mask, 0.0)))  # (B, C', H', T')
    f = f.permute(0, 3, 1, 2).flatten(2)[:, :t]  # (B, T, C'*H')
    rebuilt = decoder(f)  # (B, T, C*H*STRIP)
    return F.mse_loss(rebuilt[mask], strips(model.normalize(x), t)[mask])


def masked_pretrain(model: nn.Module, pool: ImageSet, seconds: float, device: str, seed: int = 0) -> dict[str, float]:
    """Train `model`'s backbone to rebuild blanked strips of the pool's images for `seconds`; returns the first
    and last epoch's mean loss and the steps taken."""
    gen = torch.Generator().manual_seed(seed)
    x0, _ = ink_tensor(pool, [0])
    with torch.no_grad():
        feat = model.backbone(model.normalize(x0.to(device)))  # (1, C', H', T')
    pixels = x0.shape[1] * x0.shape[2] * STRIP
    decoder = nn.Linear(feat.shape[1] * feat.shape[2], pixels).to(device)
    params = list(model.backbone.parameters()) + list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.01)
    was = model.training
    model.train()
    losses: list[float] = []
    epochs: list[float] = []
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        order = torch.randperm(len(pool), generator=gen).tolist()
        for k in range(0, len(order) - BATCH + 1, BATCH):
            x, _ = ink_tensor(pool, order[k : k + BATCH])  # (B, C, H, W_max)
            loss = reconstruction_loss(model, decoder, x.to(device), gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            steps += 1
            if time.perf_counter() - t0 >= seconds:
                break
        epochs.append(float(np.mean(losses)))
        losses = []
    model.train(was)
    report = {"first_loss": epochs[0] if epochs else float("nan"), "last_loss": epochs[-1] if epochs else float("nan"),
              "steps": steps, "seconds": round(time.perf_counter() - t0, 1)}
    log(f"masked-image pretraining on {len(pool)} unlabelled images: {steps} steps in {report['seconds']:g}s, "
        f"reconstruction loss {report['first_loss']:.4f} -> {report['last_loss']:.4f}")
    return report
