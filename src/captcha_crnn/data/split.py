"""Deterministic, disjoint, covering train/val/test split from a seed."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def split_indices(
    n: int, seed: int, val: float = 0.1, test: float = 0.1
) -> tuple[list[int], list[int], list[int]]:
    """Split range(n) into (train, val, test) index lists; the same seed gives the same split."""
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise ValueError(f"bad split fractions val={val} test={test}")
    order = sorted(range(n), key=lambda i: hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest())
    n_test = round(n * test)
    n_val = round(n * val)
    if n >= 3:
        n_test = max(n_test, 1) if test > 0 else 0
        n_val = max(n_val, 1) if val > 0 else 0
    test_idx = sorted(order[:n_test])
    val_idx = sorted(order[n_test : n_test + n_val])
    train_idx = sorted(order[n_test + n_val :])
    return train_idx, val_idx, test_idx


def split_items(
    items: Sequence[T], seed: int, val: float = 0.1, test: float = 0.1
) -> tuple[list[T], list[T], list[T]]:
    """Split items (sorted by their order) into train/val/test lists."""
    tr, va, te = split_indices(len(items), seed, val, test)
    return [items[i] for i in tr], [items[i] for i in va], [items[i] for i in te]
