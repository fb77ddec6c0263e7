"""A broad synthetic style for pre-training: many fonts, colours, rotations, spacings and noises.

The `captcha` package draws one font with one kind of warp. A model that starts every training
run (the warm start) should have seen more: this style draws each image in one of three ways,
chosen at random, and writes it like `synth` does (label in the file name):

- "captcha": the `captcha` package's own rendering, with a font drawn from the pool;
- "glyphs": each character on its own, in its own font, colour, size and rotation, spaced from
  touching to wide apart, over a plain, tinted, noisy or gradient background, with thin lines
  and dots;
- "line": one font and colour for the whole text, a small shear, on the same backgrounds.

Fonts: the `captcha` package's bundled font plus whatever TrueType fonts the machine has (or those
of a folder given), so it runs anywhere.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .fonts import captcha_image, font_files, user_fonts

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts")
SKIP_FONTS = ("Math", "Symbol", "Emoji", "Dingbat", "Wingding")  # fonts without plain Latin glyphs


def font_pool(fonts_dir: str | None = None) -> list[str]:
    """TrueType/OpenType files to draw from: `fonts_dir`, or the system's fonts, plus the captcha package's."""
    import captcha

    bundled = font_files(Path(captcha.__file__).parent / "data")
    found = user_fonts(fonts_dir) if fonts_dir else sorted({f for d in FONT_DIRS for f in font_files(d)})
    found = [f for f in found if not any(s in Path(f).name for s in SKIP_FONTS)]
    return bundled + found


def _background(rng: random.Random, w: int, h: int) -> np.ndarray:
    """(H, W, 3) float32: white, a light tint, a noisy tint or a horizontal gradient."""
    kind = rng.random()
    tint = np.array([rng.randrange(170, 256) for _ in range(3)], dtype=np.float32)
    if kind < 0.3:
        return np.full((h, w, 3), 255, dtype=np.float32)
    if kind < 0.55:
        return np.broadcast_to(tint, (h, w, 3)).copy()
    if kind < 0.8:
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(5, 30), (h, w, 3))
        return np.clip(tint + noise, 0, 255).astype(np.float32)
    other = np.array([rng.randrange(170, 256) for _ in range(3)], dtype=np.float32)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    return np.broadcast_to(tint * (1 - t) + other * t, (h, w, 3)).copy()


def _ink(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(0, 150) for _ in range(3))  # type: ignore[return-value]


def _glyph(ch: str, font: ImageFont.FreeTypeFont, angle: float) -> Image.Image:
    """The character as an L mask (255 = ink), rotated by `angle` degrees, cut to its box."""
    left, top, right, bottom = font.getbbox(ch)
    m = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(m).text((4 - left, 4 - top), ch, font=font, fill=255)
    m = m.rotate(angle, resample=Image.BICUBIC, expand=True)
    return m.crop(m.getbbox() or (0, 0, 1, 1))


def _compose(rng: random.Random, text: str, fonts: list[str], per_char: bool) -> Image.Image:
    """Characters placed left to right on a background, one font/colour each (per_char) or shared."""
    size = rng.randrange(22, 52)
    spacing = rng.choice((rng.uniform(-0.15, 0.1), rng.uniform(0.0, 0.5), rng.uniform(0.5, 1.6)))
    shared_font, shared_ink = rng.choice(fonts), _ink(rng)
    max_angle = rng.choice((5, 15, 30, 45)) if per_char else rng.choice((0, 5))
    glyphs = []
    for ch in text:
        font = ImageFont.truetype(rng.choice(fonts) if per_char else shared_font,
                                  round(size * (rng.uniform(0.8, 1.2) if per_char else 1)))
        ink = _ink(rng) if per_char else shared_ink
        glyphs.append((_glyph(ch, font, rng.uniform(-max_angle, max_angle)), ink))
    gap = round(size * spacing)
    h = max(g.height for g, _ in glyphs) + 2 * rng.randrange(4, size)
    margin = rng.randrange(4, 3 * size)
    w = 2 * margin + sum(g.width for g, _ in glyphs) + gap * (len(glyphs) - 1)
    w, h = max(w, 16), max(h, 16)
    canvas = _background(rng, w, h)
    x, jitter = margin, rng.choice((0.05, 0.15, 0.3)) * size
    for g, ink in glyphs:
        y = round((h - g.height) / 2 + rng.uniform(-jitter, jitter))
        y = max(0, min(y, h - g.height))
        x0 = max(0, min(x, w - g.width))
        region = canvas[y : y + g.height, x0 : x0 + g.width]  # (gh, gw, 3), less where the canvas ends
        a = np.asarray(g, dtype=np.float32)[: region.shape[0], : region.shape[1], None] / 255
        region[:] = region * (1 - a) + np.array(ink) * a
        x += g.width + gap
    im = Image.fromarray(canvas.astype(np.uint8))
    _noise(rng, im)
    return im


def _noise(rng: random.Random, im: Image.Image) -> None:
    """Thin lines and dots, in place."""
    d = ImageDraw.Draw(im)
    w, h = im.size
    for _ in range(rng.choice((0, 1, 2, 3, 5))):
        colour = _ink(rng) if rng.random() < 0.5 else (rng.randrange(60, 200),) * 3
        d.line([(rng.randrange(w), rng.randrange(h)) for _ in range(2)], fill=colour, width=rng.choice((1, 1, 2)))
    for _ in range(rng.choice((0, 0, 20, 100))):
        x, y = rng.randrange(w), rng.randrange(h)
        d.point((x, y), fill=_ink(rng))


def _shear(rng: random.Random, im: Image.Image) -> Image.Image:
    s = math.tan(math.radians(rng.uniform(-12, 12)))
    w, h = im.size
    return im.transform((w + int(abs(s) * h), h), Image.AFFINE, (1, s, -abs(s) * h if s > 0 else 0, 0, 1, 0),
                        resample=Image.BILINEAR, fillcolor=im.getpixel((0, 0)))


def render_mixed(text: str, seed: int, fonts: list[str]) -> Image.Image:
    """One RGB image of `text` in a randomly drawn way (see the module docstring); seeded."""
    rng = random.Random(seed)
    kind = rng.random()
    if kind < 0.3:
        per = rng.randrange(28, 42)
        w, h = max(60, per * len(text) + rng.randrange(20, 60)), rng.randrange(50, 80)
        im = captcha_image(text, w, h, seed, [rng.choice(fonts)])
    elif kind < 0.75:
        im = _compose(rng, text, fonts, per_char=True)
    else:
        im = _shear(rng, _compose(rng, text, fonts, per_char=False))
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return im.convert("RGB")
