"""Training speed and input options: bf16 autocast chosen from the CPU's features, the contrast grey."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont
from safetensors import safe_open

from captcha_crnn import Recognizer
from captcha_crnn.data.images import Preprocess, contrast_grey, load_image
from captcha_crnn.errors import CaptchaError
from captcha_crnn.training import TrainConfig, plan, train


def test_precision_follows_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan, "cpu_bf16_flag", lambda: "avx512_bf16")
    assert plan.pick_precision("auto", "cpu") == ("bf16", "the CPU has avx512_bf16")
    assert plan.pick_precision("fp32", "cpu")[0] == "fp32"  # asked for wins
    monkeypatch.setattr(plan, "cpu_bf16_flag", lambda: None)
    assert plan.pick_precision("auto", "cpu") == ("fp32", "the CPU has no native bf16")
    assert plan.pick_precision("bf16", "cpu")[0] == "bf16"


def test_bf16_training_learns_and_saves_fp32(tmp_path: Path, clean_dir: Path, capsys) -> None:
    cfg = TrainConfig(out=str(tmp_path / "o"), epochs=10, batch_size=8, preset="tiny", label_sep="-",
                      progress=False, lr=3e-3, augment=0.3, precision="bf16")
    r = train(str(clean_dir), cfg)
    assert "precision: bf16 (asked for)" in capsys.readouterr().err
    losses = [h["train_loss"] for h in r.history]
    assert losses[-1] < 0.7 * losses[0]  # bf16 arithmetic still learns
    with safe_open(str(r.model_path), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert {t for t in dtypes if t.is_floating_point} == {torch.float32}
    info = json.loads((tmp_path / "o" / "history.json").read_text())
    assert info["history"][-1]["images_per_s"] > 0


def pale_text(text: str, colour: tuple[int, int, int] = (250, 235, 150)) -> Image.Image:
    """Light yellow characters on white: nearly invisible in luma grey."""
    im = Image.new("RGB", (96, 32), "white")
    ImageDraw.Draw(im).text((6, 4), text, fill=colour, font=ImageFont.load_default(size=20))
    return im


def test_contrast_grey_makes_pale_text_dark() -> None:
    im = pale_text("123")
    luma = np.asarray(im.convert("L"))
    contrast = np.asarray(contrast_grey(im))
    assert luma.min() > 200  # the text is barely darker than the paper
    assert contrast.min() < 30 and np.median(contrast) > 250  # dark text, white paper
    blank = np.asarray(contrast_grey(Image.new("RGB", (40, 20), (200, 220, 240))))
    assert blank.min() == 255  # a plain background stays paper, whatever its colour


def test_contrast_grey_is_part_of_the_preprocessing(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    pale_text("42").save(path)
    a = load_image(path, Preprocess(height=32, width=96, channels=1, grey="contrast"))
    b = load_image(path, Preprocess(height=32, width=96, channels=1))
    assert a.shape == b.shape == (1, 32, 96) and a.min() < b.min() - 150
    with pytest.raises(ValueError, match="grey must be luma or contrast"):
        Preprocess(grey="inverted").validate()


def test_a_contrast_model_reads_with_contrast(tmp_path: Path) -> None:
    """Training with --grey contrast stores it in the model file; the reader applies it."""
    rng = random.Random(0)
    data = tmp_path / "d"
    data.mkdir()
    for i in range(40):
        label = "".join(rng.choice("0123456789") for _ in range(3))
        pale_text(label).save(data / f"{label}-{i}.png")
    r = train(str(data), TrainConfig(out=str(tmp_path / "o"), epochs=1, preset="tiny", label_sep="-",
                                     progress=False, grey="contrast", channels=1))
    rec = Recognizer.load(r.model_path)
    assert rec.preprocess.grey == "contrast"
    assert len(rec.predict([pale_text("123")])) == 1
    with pytest.raises(CaptchaError, match="--grey must be"):
        TrainConfig(grey="pale").validate()


def test_auto_grey_is_contrast_only_for_coloured_captchas(tmp_path: Path) -> None:
    from captcha_crnn.data.labels import Sample
    from captcha_crnn.training.plan import settle

    def resolve(cfg: TrainConfig, s: list[Sample]) -> tuple[TrainConfig]:
        return (settle(cfg, s, [])[0],)

    def samples(colour: tuple[int, int, int], name: str) -> list[Sample]:
        (tmp_path / name).mkdir()
        out = []
        for i in range(6):
            path = tmp_path / name / f"{i}.png"
            im = Image.new("RGB", (96, 32), "white")
            ImageDraw.Draw(im).rectangle((10, 5, 60, 25), fill=colour)  # a fifth of the image in that colour
            im.save(path)
            out.append(Sample(str(path), "1"))
        return out

    cfg = TrainConfig(pretrained="off", channels=1)
    assert resolve(cfg, samples((250, 235, 150), "pale"))[0].grey == "contrast"
    assert resolve(cfg, samples((20, 20, 20), "black"))[0].grey == "luma"
    assert resolve(TrainConfig(pretrained="off", grey="luma"), samples((250, 0, 0), "red"))[0].grey == "luma"
