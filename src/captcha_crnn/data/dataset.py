"""Decoded images held in memory as uint8, and batches of them as tensors."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import CaptchaError
from .images import Preprocess, load_image, stack_padded
from .labels import Sample


@dataclass
class ImageSet:
    """Preprocessed images (uint8 (C, H, W_i) each) with their labels and source paths."""

    images: list[np.ndarray]
    labels: list[str]
    paths: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Sequence[int]) -> ImageSet:
        return ImageSet([self.images[i] for i in idx], [self.labels[i] for i in idx],
                        [self.paths[i] for i in idx])

    def batch(self, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, C, H, W_max) white-padded pixels and the true widths."""
        return stack_padded([self.images[i] for i in idx])


def load_samples(
    samples: Sequence[Sample],
    pre: Preprocess,
    desc: str = "loading",
    progress: bool = True,
    threads: int = 2,
) -> ImageSet:
    """Decode and preprocess samples; unreadable images are skipped with a warning and counted."""
    from tqdm import tqdm

    def one(s: Sample) -> np.ndarray | str:
        try:
            return load_image(s.path, pre)
        except CaptchaError as e:
            return str(e)

    images, labels, paths, skipped = [], [], [], []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = pool.map(one, samples, chunksize=64)
        bar = tqdm(results, total=len(samples), desc=desc, unit="img", disable=not progress,
                   leave=False, file=sys.stderr)
        for s, r in zip(samples, bar):
            if isinstance(r, str):
                skipped.append(r)
                if len(skipped) <= 5:
                    print(f"warning: skipped {r}", file=sys.stderr)
                continue
            images.append(r)
            labels.append(s.label)
            paths.append(s.path)
    if len(skipped) > 5:
        print(f"warning: skipped {len(skipped)} unreadable images in all", file=sys.stderr)
    return ImageSet(images, labels, paths, skipped)


def iterate_batches(n: int, batch_size: int, order: Sequence[int] | None = None) -> Iterator[list[int]]:
    """Consecutive index batches over `order` (default range(n))."""
    order = list(range(n)) if order is None else list(order)
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]
