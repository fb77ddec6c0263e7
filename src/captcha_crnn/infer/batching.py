"""Fast batched reading: images decoded on a thread pool, stacked into batches of equal width.

Pillow releases the GIL while it decodes, converts and resizes, so a pool of threads decodes
images in parallel; the per-image work is ``data/images.py: load_image`` (the one preprocessing).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..data.images import Preprocess, load_image, to_ink
from ..errors import CaptchaError

PARALLEL_MIN = 8  # fewer images than this are decoded on the calling thread


def default_threads() -> int:
    return os.cpu_count() or 1


def load_many(
    items: Sequence[Any], pre: Preprocess, pool: ThreadPoolExecutor | None = None, threads: int = 1,
    errors: str = "raise",
) -> list[np.ndarray | CaptchaError]:
    """Preprocess images to uint8 (C, H, W) arrays in order, on the pool when there are enough.

    Work goes to the pool in a few slices per thread (one task per image costs more than a small
    PNG's decode). errors="raise": the first unreadable image raises its CaptchaError; "return":
    the error is returned in that image's place.
    """

    def part(srcs: Sequence[Any]) -> list[np.ndarray | CaptchaError]:
        out: list[np.ndarray | CaptchaError] = []
        for src in srcs:
            try:
                out.append(load_image(src, pre))
            except CaptchaError as e:
                if errors == "raise":
                    raise
                out.append(e)
        return out

    if pool is None or threads <= 1 or len(items) < PARALLEL_MIN:
        return part(items)
    n = len(items)
    step = -(-n // (4 * threads))
    results: list[np.ndarray | CaptchaError] = []
    for r in pool.map(part, [items[i : i + step] for i in range(0, n, step)]):
        results.extend(r)
    return results


def fill_in(arrays: Sequence[Any], read: Callable[[list[np.ndarray]], list[Any]]) -> list[Any]:
    """`read` run on the readable arrays of `arrays` (preprocessed images, a CaptchaError where one was
    unreadable), each result in its image's place; the errors stay where they are."""
    good = [i for i, a in enumerate(arrays) if not isinstance(a, CaptchaError)]
    out = list(arrays)
    for i, p in zip(good, read([arrays[i] for i in good])):
        out[i] = p
    return out


def stack_batch(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """float32 ink (B, C, H, W) with widths cut to a multiple of 4 (padded with paper), and widths.

    Equal widths (a fixed-width model) stack directly; otherwise shorter images are padded with
    white. The network's time steps are W // 4, so cutting to a multiple of 4 changes nothing.
    """
    widths = np.fromiter((a.shape[-1] for a in arrays), dtype=np.int64, count=len(arrays))
    c, h = arrays[0].shape[:2]
    w_max = int(widths.max())
    w_in = max(4, w_max // 4 * 4)
    if widths.min() == w_max and w_in == w_max:
        u8 = np.stack(arrays)
    else:
        u8 = np.full((len(arrays), c, h, max(w_in, w_max)), 255, dtype=np.uint8)
        for i, a in enumerate(arrays):
            u8[i, :, :, : a.shape[-1]] = a
        u8 = u8[..., :w_in]
    return to_ink(u8), widths
