"""Fonts and the `captcha` package's seeded rendering, shared by `synth` and its `mixed` style."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CaptchaError

if TYPE_CHECKING:
    from PIL import Image

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
