"""Run a CRNN on preprocessed uint8 images, batching by width so padding stays small."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.dataset import width_batches
from ..data.images import stack_padded, time_steps, to_ink
from .crnn import CRNN


@torch.inference_mode()
def log_probs(
    model: CRNN, arrays: Sequence[np.ndarray], batch_size: int = 128, device: str = "cpu"
) -> list[np.ndarray]:
    """Per image, float32 log-probabilities (T_i, C) over its valid time steps."""
    model.eval()
    out: list[np.ndarray | None] = [None] * len(arrays)
    for idx in width_batches([a.shape[-1] for a in arrays], batch_size):
        u8, widths = stack_padded([arrays[i] for i in idx])
        x = torch.from_numpy(to_ink(u8)).to(device)  # (B, C, H, W)
        lp = model(x).float().cpu().numpy()  # (B, T, C)
        lens = time_steps(widths).tolist()
        for j, i in enumerate(idx):
            out[i] = lp[j, : lens[j]]
    return out  # type: ignore[return-value]
