"""Cropping to the text: small glyphs in wide blank margins, with thin noise lines, as in generic_varlen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from captcha_crnn.data.images import Preprocess, crop_to_ink, ink_box, load_image
from captcha_crnn.data.labels import Sample
from captcha_crnn.training import TrainConfig
from captcha_crnn.training.plan import settle
from captcha_crnn.training.sets import choose_preprocess, sample_images, text_share


def margins_image(text_box: tuple[int, int, int, int] = (150, 40, 250, 60), size: tuple[int, int] = (400, 100),
                  colour: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    """A filled 'glyph' block inside wide white margins, crossed by a 1-pixel line over the whole image."""
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    d.rectangle(text_box, fill=colour)
    d.line([(0, 5), (size[0] - 1, size[1] - 5)], fill=(0, 0, 0), width=1)
    return im


def test_ink_box_follows_glyphs_not_thin_lines() -> None:
    box = ink_box(margins_image())
    assert box is not None
    left, top, right, bottom = box
    assert abs(left - 150) <= 2 and abs(top - 40) <= 2 and abs(right - 251) <= 2 and abs(bottom - 61) <= 2


def test_crop_keeps_a_margin_and_blank_images_stay_whole() -> None:
    out = crop_to_ink(margins_image())
    assert 100 < out.width < 120 and 20 < out.height < 30  # box 101x21 plus 15% of its height each side
    blank = Image.new("RGB", (300, 80), "white")
    assert crop_to_ink(blank).size == (300, 80)


def test_load_image_crops_before_resizing(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    margins_image().save(path)
    plain = load_image(path, Preprocess(height=32, width=None, channels=3))
    cropped = load_image(path, Preprocess(height=32, width=None, channels=3, crop=True))
    assert plain.shape[-1] == 128  # 400x100 at height 32
    assert cropped.shape[-1] < plain.shape[-1]
    assert (cropped[0] < 128).mean() > 5 * (plain[0] < 128).mean()  # the glyph fills the crop


def test_preprocess_crop_round_trips_and_defaults_off() -> None:
    pre = Preprocess(height=32, width=None, crop=True)
    assert Preprocess.from_dict(pre.to_dict()).crop is True
    old = {k: v for k, v in pre.to_dict().items() if k != "crop"}  # a model file from before cropping
    assert Preprocess.from_dict(old).crop is False
    with pytest.raises(ValueError, match="crop"):
        Preprocess.from_dict({**pre.to_dict(), "crop": "yes"})


def _samples(tmp_path: Path, margins: bool) -> list[Sample]:
    out = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        if margins:
            margins_image(size=(300 + 60 * i, 80), text_box=(100, 30, 160 + 10 * i, 50)).save(p)
        else:
            margins_image(size=(200, 50), text_box=(5, 5, 195, 45)).save(p)
        out.append(Sample(str(p), f"ab{i}"))
    return out


def resolve(cfg: TrainConfig, samples: list) -> tuple[TrainConfig, list[str]]:
    notes: list[str] = []
    return settle(cfg, samples, notes)[0], notes


def test_autoconfig_crops_only_when_text_is_small(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "f").mkdir()
    small_text, full_text = _samples(tmp_path / "m", True), _samples(tmp_path / "f", False)
    assert text_share(sample_images(small_text))[0] < 0.3 < text_share(sample_images(full_text))[0]
    cfg, notes = resolve(TrainConfig(), small_text)
    assert cfg.crop is True and any("crop to the text" in n for n in notes)
    pre = choose_preprocess(cfg, small_text)
    assert pre.crop is True and pre.width is None  # cropped boxes keep their aspect ratio
    cfg, notes = resolve(TrainConfig(), full_text)
    assert cfg.crop is False and any("no crop" in n for n in notes)
    assert choose_preprocess(cfg, full_text).crop is False
    cfg, _ = resolve(TrainConfig(crop=False), small_text)  # a flag overrides the choice
    assert cfg.crop is False


def test_cropped_pixels_are_what_the_model_reads(tmp_path: Path) -> None:
    """The same preprocessing at training and reading: arrays from a path and from bytes agree."""
    path = tmp_path / "a.png"
    margins_image().save(path)
    pre = Preprocess(height=32, width=None, channels=1, crop=True)
    a = load_image(path, pre)
    b = load_image(path.read_bytes(), pre)
    np.testing.assert_array_equal(a, b)


def test_thin_font_text_is_not_cut_away() -> None:
    """Glyphs drawn with one-pixel strokes (PIL's default font) survive: the box holds all the text."""
    im = Image.new("L", (300, 80), 255)
    ImageDraw.Draw(im).text((100, 30), "1234", fill=0, font=ImageFont.load_default(size=20))
    ink = np.asarray(im) < 200
    out = np.asarray(crop_to_ink(im)) < 200
    assert out.sum() >= 0.95 * ink.sum()
    assert out.shape[1] < 100  # and still much narrower than the image
