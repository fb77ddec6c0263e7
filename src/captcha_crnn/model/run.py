"""The one batched runner: images grouped by width, stacked, run, and cut to their valid time steps.

Training validation, the Recognizer and log_probs all read through run_batches; only what they do
with each batch's log-probabilities differs. Imports no torch (the runner takes any `run`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..data.dataset import width_batches
from ..data.images import stack_padded, time_steps, to_ink

__all__ = ["log_probs", "run_batches", "width_batches"]

Batch = tuple[np.ndarray, np.ndarray]  # float32 ink (B, C, H, W), widths (B,)


def run_batches(widths: Sequence[int], batch_size: int, load: Callable[[list[int]], Batch],
                run: Callable[[np.ndarray], Any]) -> Iterator[tuple[list[int], Any, np.ndarray]]:
    """For each batch of at most batch_size images of similar width: (indices, run(ink) (B, T, C),
    valid time steps per image (B,))."""
    for idx in width_batches(list(widths), batch_size):
        x, w = load(idx)  # (B, C, H, W), (B,)
        yield idx, run(x), time_steps(w)


def log_probs(model: Any, arrays: Sequence[np.ndarray], batch_size: int = 128, device: str = "cpu") -> list[np.ndarray]:
    """Per uint8 (C, H, W_i) image, float32 log-probabilities (T_i, C) of a torch CRNN."""
    import torch

    model.eval()

    def load(idx: list[int]) -> Batch:
        u8, w = stack_padded([arrays[i] for i in idx])
        return to_ink(u8), w

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

    out: list[Any] = [None] * len(arrays)
    for idx, lp, lens in run_batches([a.shape[-1] for a in arrays], batch_size, load, run):
        for j, i in enumerate(idx):
            out[i] = lp[j, : lens[j]]
    return out
