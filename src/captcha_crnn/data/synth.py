"""Synthetic labelled captchas from the `captcha` package (offline, its bundled fonts), seeded."""

from __future__ import annotations

import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..progress import bar_disable

# the font helpers live in fonts.py (shared with mixed.py); still importable from here
from .fonts import FONT_SUFFIXES, captcha_image, font_files, user_fonts  # noqa: F401

DEFAULT_CHARSET = "0123456789abcdefghijkmnpqrstuvwxyz"
STYLES = ("captcha", "mixed")


def _render(job: tuple[str, str, int, int, int, list[str] | None, str]) -> None:
    path, text, w, h, seed, fonts, style = job
    if style == "mixed":
        from .mixed import render_mixed

        render_mixed(text, seed, fonts or []).save(path)
    else:
        captcha_image(text, w, h, seed, fonts).save(path)


def labels_for(n: int, charset: str, lengths: tuple[int, int], seed: int) -> list[str]:
    """n random labels with lengths in [lo, hi] from charset, reproducible from seed."""
    rng = random.Random(seed)
    return ["".join(rng.choice(charset) for _ in range(rng.randint(*lengths))) for _ in range(n)]


def synthesize(
    out: str | Path,
    n: int = 1000,
    charset: str = DEFAULT_CHARSET,
    lengths: tuple[int, int] = (4, 6),
    size: tuple[int, int] = (160, 60),
    seed: int = 0,
    fonts_dir: str | None = None,
    workers: int = 2,
    progress: bool = True,
    style: str = "captcha",
) -> list[tuple[str, str]]:
    """Write n captchas into `out`, named `<label>_<i>.png`; returns (path, label) pairs.

    style "captcha": the `captcha` package's look at `size`; "mixed": many fonts, colours, rotations
    and spacings at sizes of their own (data/mixed.py), for pre-training.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if style not in STYLES:
        raise ValueError(f"unknown synth style {style!r} (choose from {', '.join(STYLES)})")
    if style == "mixed":
        from .mixed import font_pool

        fonts: list[str] | None = font_pool(fonts_dir)
    else:
        fonts = user_fonts(fonts_dir) if fonts_dir else None
    labels = labels_for(n, charset, lengths, seed)
    jobs = [(str(out / f"{lab}_{i}.png"), lab, size[0], size[1], seed * 1_000_003 + i, fonts, style)
            for i, lab in enumerate(labels)]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        for _ in tqdm(pool.map(_render, jobs, chunksize=32), total=n, desc="synth", unit="img",
                      disable=bar_disable(progress), file=sys.stderr):
            pass
    return [(j[0], j[1]) for j in jobs]
