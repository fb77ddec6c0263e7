"""Learning rate as a function of progress through the run: linear warm-up, then cosine decay."""

from __future__ import annotations

import math


def lr_at(progress: float, peak: float, warmup: float = 0.15, final: float = 0.01) -> float:
    """LR at `progress` in [0, 1] of the run (by steps, or by time when a budget is set)."""
    p = min(max(progress, 0.0), 1.0)
    if p < warmup:
        return peak * (0.04 + 0.96 * p / warmup)
    q = (p - warmup) / max(1e-9, 1 - warmup)
    return peak * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * q)))
