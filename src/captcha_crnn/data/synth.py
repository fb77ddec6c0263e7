"""Synthetic labelled captchas from the `captcha` package (offline, its bundled fonts), seeded."""

from __future__ import annotations

import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CaptchaError

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_CHARSET = "0123456789abcdefghijkmnpqrstuvwxyz"
STYLES = ("captcha", "mixed")
FONT_SUFFIXES = (".ttf", ".otf")


class _SeededSecrets:
    """Stands in for the `secrets` module the captcha package draws from, so a seed reproduces images."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq):  # noqa: ANN001, ANN201
        return self._rng.choice(seq)


def font_files(folder: str | Path) -> list[str]:
    """The .ttf/.otf files anywhere under `folder`, sorted; none when it is not a folder."""
    root = Path(folder)
    return sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in FONT_SUFFIXES) if root.is_dir() else []


def user_fonts(fonts_dir: str | Path) -> list[str]:
    """The fonts of a `--fonts DIR`; CaptchaError naming the folder when it holds none."""
    found = font_files(fonts_dir)
    if not found:
        why = "no .ttf or .otf fonts in it" if Path(fonts_dir).is_dir() else "no such folder"
        raise CaptchaError(f"{fonts_dir}: {why} (--fonts wants a folder of fonts)")
    return found


def captcha_image(text: str, w: int, h: int, seed: int, fonts: list[str] | None) -> Image.Image:
    """The `captcha` package's image of `text`, reproducible from `seed`."""
    import captcha.image as ci

    random.seed(seed)
    ci.secrets = _SeededSecrets(seed)  # type: ignore[assignment]
    return ci.ImageCaptcha(width=w, height=h, fonts=fonts).generate_image(text)


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
                      disable=not progress, file=sys.stderr):
            pass
    return [(j[0], j[1]) for j in jobs]
