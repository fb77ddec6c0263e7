"""Shared fixtures: small labelled captcha sets generated on the fly (no downloaded data)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

pytest.register_assert_rewrite("bad_input")  # its shared assertions explain their failures

CHARS = "0123456789"


def render_clean(text: str, size: tuple[int, int] = (96, 32), seed: int = 0) -> Image.Image:
    """An easy captcha: dark digits on white with a little jitter, drawn with PIL's default font."""
    rng = random.Random(seed)
    im = Image.new("L", size, 255)
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=20)
    x = 4 + rng.randint(0, 4)
    for ch in text:
        d.text((x, 4 + rng.randint(-2, 2)), ch, fill=rng.randint(0, 60), font=font)
        x += 14 + rng.randint(-1, 2)
    return im


def make_clean_set(folder: Path, n: int, seed: int = 0, lengths: tuple[int, int] = (3, 4)) -> list[str]:
    """n images named by their label (with '-k' suffixes where labels repeat)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for i in range(n):
        label = "".join(rng.choice(CHARS) for _ in range(rng.randint(*lengths)))
        render_clean(label, seed=seed * 100003 + i).save(folder / f"{label}-{i}.png")
        labels.append(label)
    return labels


@pytest.fixture(scope="session")
def clean_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 easy digit images, labels of 3-4 chars, label before '-' in the file name."""
    d = tmp_path_factory.mktemp("clean")
    make_clean_set(d, 300)
    return d


@pytest.fixture(scope="session")
def captcha_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 captchas from the `captcha` package, label = file stem."""
    from captcha.image import ImageCaptcha

    d = tmp_path_factory.mktemp("captcha")
    gen = ImageCaptcha(width=160, height=60)
    rng = random.Random(1)
    seen = set()
    while len(seen) < 60:
        label = "".join(rng.choice("abcd2345") for _ in range(4))
        if label in seen:
            continue
        seen.add(label)
        gen.generate_image(label).save(d / f"{label}.png")
    return d


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, clean_dir: Path):
    """A small model trained once on the clean set (shared by the train, eval, predict tests)."""
    from captcha_crnn.training import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(out=str(out), epochs=16, batch_size=8, preset="tiny", label_sep="-", progress=False,
                      seed=0, lr=3e-3, patience=50, augment=0.3)
    return train(str(clean_dir), cfg)


def interrupt_at(backbone: str, seen: list[str]) -> Callable[[dict, Any], None]:
    """An epoch hook that records each epoch's backbone and raises KeyboardInterrupt at the first epoch
    of `backbone`: a run killed there, for --resume to pick up."""
    def hook(rec: dict, bundle: Any) -> None:
        seen.append(bundle.model.cfg.backbone)
        if bundle.model.cfg.backbone == backbone:
            raise KeyboardInterrupt
    return hook
