"""Captchas of many styles through the real train(): what the automatic configuration chooses, and
that each style goes end to end (train -> model.safetensors -> Recognizer.load -> predict / eval).

Styles (project issue 5, "any captcha style"): label lengths 1 to 12 in one set, widths from 60 to
800 pixels in one set, tiny 70x30 images, colour-coded characters on a grey-ish background, and an
alphabet of 70 symbols with both cases. Each set is tiny and trains for an epoch or two: the
checks are about choices, shapes and plumbing, not accuracy.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from captcha_crnn import Recognizer
from captcha_crnn.cli import main as cli_main
from captcha_crnn.data.images import Preprocess
from captcha_crnn.evaluate import evaluate_model, score_both
from captcha_crnn.model.crnn import PRESETS
from captcha_crnn.model.modelfile import read_metadata
from captcha_crnn.training import TrainConfig, train
from captcha_crnn.training.run import TrainResult
from captcha_crnn.training.sets import load_data, min_frames

pytestmark = pytest.mark.slow  # trains models or runs subprocesses (make test-fast skips)

LOWER = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
PUNCT = "+-=@#%&?"
BIG = DIGITS + LOWER + LOWER.upper() + PUNCT  # 70 symbols
PALETTE = [(200, 30, 30), (30, 150, 30), (30, 60, 220), (180, 40, 200), (220, 140, 0), (0, 150, 160)]


# ------------------------------------------------------------------ drawing


def render(text: str, size: tuple[int, int], seed: int, font_size: int = 18,
           colours: list[tuple[int, int, int]] | None = None,
           background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Characters spread evenly over the width, dark grey or each in its own colour."""
    rng = random.Random(seed)
    w, h = size
    im = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=font_size)
    step = (w - 4) / max(1, len(text))
    for i, ch in enumerate(text):
        fill = colours[(i + seed) % len(colours)] if colours else (rng.randint(0, 60),) * 3
        x = 2 + i * step + rng.uniform(0, max(0.0, step - 0.6 * font_size))
        draw.text((x, (h - font_size) / 2 + rng.randint(-2, 2)), ch, fill=fill, font=font)
    return im


def grey_background(rng: random.Random) -> tuple[int, int, int]:
    """A light grey with a faint tint (channels within a few levels of each other)."""
    g = rng.randint(190, 225)
    return (g + rng.randint(-6, 6), g + rng.randint(-6, 6), g + rng.randint(-6, 6))


def write_csv(folder: Path, items: list[tuple[str, Image.Image]]) -> Path:
    """Save images as img/<i>.png with a labels.csv (labels may hold characters unfit for file names)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = ["filename,label"]
    for i, (label, im) in enumerate(items):
        im.save(folder / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{label}")
    csv = folder / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def random_label(rng: random.Random, n: int, chars: str = DIGITS + LOWER) -> str:
    return "".join(rng.choice(chars) for _ in range(n))


# ------------------------------------------------------------------ training


@dataclass
class Run:
    """A finished run with its data, model metadata and what it printed."""

    data: Path
    result: TrainResult
    meta: dict[str, Any]
    log: str

    @property
    def pre(self) -> Preprocess:
        return Preprocess.from_dict(self.meta["preprocess"])

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["training"]["config"]


def run_train(data: Path, out: Path, **overrides: Any) -> Run:
    """train() with a tiny budget (one epoch, tiny model, from scratch) unless overridden; stderr kept."""
    kw: dict[str, Any] = dict(out=str(out), epochs=1, batch_size=16, preset="tiny", init=None, progress=False,
                              seed=0, patience=5, val=0.1, test=0.1)  # a test split, few labels as they are
    kw.update(overrides)
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        result = train(str(data), TrainConfig(**kw))
    return Run(data, result, read_metadata(result.model_path), buf.getvalue())


def split_of(run: Run) -> list[Any]:
    """The training samples train() split off (the split is seeded, so load_data repeats it)."""
    tr, _, _, _ = load_data(TrainConfig.from_dict({**run.config, "data": str(run.data)}))
    return tr


def recognizer(run: Run) -> Recognizer:
    """The run's model on the torch engine (no ONNX export needed)."""
    return Recognizer.load(run.result.model_path, engine="torch")


@pytest.fixture(autouse=True)
def _memory_onnx_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX exports (the CLI's eval, the onnx engine) stay in memory: nothing under ~/.cache."""
    monkeypatch.setenv("CAPTCHA_CRNN_CACHE", "")


# ------------------------------------------------------------------ (a) label lengths 1 to 12 in one set

VARLEN_SIZE = (100, 50)  # 64x32 at the model's height: 16 time steps, too few for 12 characters
REPEATS = ["aabbccddeeff", "112233445566", "zzyyxxwwvvuu"]  # 12 characters, CTC needs 18 steps


@pytest.fixture(scope="module")
def varlen(tmp_path_factory: pytest.TempPathFactory) -> Run:
    rng = random.Random(1)
    labels = [random_label(rng, 1 + i % 12) for i in range(60)] + REPEATS * 2
    items = [(lab, render(lab, VARLEN_SIZE, seed=i, font_size=12)) for i, lab in enumerate(labels)]
    csv = write_csv(tmp_path_factory.mktemp("varlen"), items)
    return run_train(csv, tmp_path_factory.mktemp("varlen_run"), epochs=2)


def test_variable_lengths_widen_the_input_for_ctc(varlen: Run) -> None:
    pre = varlen.pre
    assert pre.width is not None, "one image size: a fixed width"
    assert pre.width > round(VARLEN_SIZE[0] * pre.height / VARLEN_SIZE[1]), "not widened past the aspect ratio"
    assert pre.width // 4 >= 2 * 12 + 1
    tr = split_of(varlen)
    assert max(len(s.label) for s in tr) == 12 and set(REPEATS) & {s.label for s in tr}
    assert max(min_frames(s.label) for s in tr) > 16  # would not fit at the aspect-ratio width


def test_variable_lengths_drop_no_sample(varlen: Run) -> None:
    assert varlen.meta["training"]["train_images"] == len(split_of(varlen))
    assert "too long" not in varlen.log and "skipped" not in varlen.log


def test_variable_lengths_read_at_any_length(varlen: Run) -> None:
    rec = recognizer(varlen)
    image = render("k3", VARLEN_SIZE, seed=99, font_size=12)
    for n in (1, 2, 7, 12):
        assert len(rec.predict(image, length=n).text) == n
    rep, _, preds = evaluate_model(rec, str(varlen.data), progress=False)
    assert rep.n == 66 and len(preds) == 66
    assert sorted(rep.by_length, key=int) == [str(k) for k in range(1, 13)]


# ------------------------------------------------------------------ (b) widths from 60 to 800 in one set


def width_label(rng: random.Random, w: int) -> str:
    return random_label(rng, max(1, min(12, w // 60)))  # about one character per 60 pixels


@pytest.fixture(scope="module")
def varwidth(tmp_path_factory: pytest.TempPathFactory) -> Run:
    rng = random.Random(2)
    items = []
    for i in range(50):
        w = 60 + 740 * i // 49
        lab = width_label(rng, w)
        items.append((lab, render(lab, (w, 40), seed=i, font_size=22)))
    csv = write_csv(tmp_path_factory.mktemp("varwidth"), items)
    return run_train(csv, tmp_path_factory.mktemp("varwidth_run"))


def test_variable_widths_keep_aspect_and_pad(varwidth: Run) -> None:
    pre, tr = varwidth.pre, split_of(varwidth)
    assert pre.width is None, "mixed widths: aspect-preserving resize with padding"
    max_len = max(len(s.label) for s in tr)
    assert pre.min_width >= 4 * (2 * max_len + 1)
    assert varwidth.meta["training"]["train_images"] == len(tr) and "too long" not in varwidth.log


def test_variable_widths_read_narrow_and_wide(varwidth: Run) -> None:
    rec = recognizer(varwidth)
    narrow = render("7", (60, 40), seed=1, font_size=22)
    wide = render(width_label(random.Random(3), 800), (800, 40), seed=2, font_size=22)
    a_narrow, a_wide = rec.prepare([narrow, wide])
    assert a_narrow.shape == (1, 32, max(48, rec.preprocess.min_width))
    assert a_wide.shape == (1, 32, 640)  # 800 * 32 / 40: aspect kept
    assert len(rec.predict(narrow, length=1).text) == 1
    assert len(rec.predict(wide, length=12).text) == 12
    both = rec.predict([narrow, wide])
    onnx = Recognizer.load(varwidth.result.model_path, engine="onnx").predict([narrow, wide])
    assert [p.text for p in onnx] == [p.text for p in both]  # the exported graph takes any width


# ------------------------------------------------------------------ (c) tiny 70x30 images, grey


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 grey 70x30 images named <label>_<i>.png."""
    d = tmp_path_factory.mktemp("tiny")
    rng = random.Random(3)
    for i in range(50):
        lab = random_label(rng, 4)
        render(lab, (70, 30), seed=i, font_size=16).convert("L").save(d / f"{lab}_{i}.png")
    return d


@pytest.fixture(scope="module")
def tiny(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_train(tiny_data, tmp_path_factory.mktemp("tiny_run"), label_sep="_", epochs=2)


def test_tiny_images_fixed_width_and_grey(tiny: Run) -> None:
    pre = tiny.pre
    assert (pre.height, pre.width, pre.channels) == (32, 76, 1)  # 70 * 32 / 30 = 74.7 -> 76
    assert tiny.meta["model"]["in_channels"] == 1
    assert "grey" in tiny.log and tiny.config["channels"] == 1


def test_tiny_images_read_end_to_end(tiny: Run, tiny_data: Path) -> None:
    assert tiny.result.test is not None and tiny.result.test.n == 5
    rec = recognizer(tiny)
    image = render("ab12", (70, 30), seed=7, font_size=16).convert("L")
    assert rec.prepare([image])[0].shape == (1, 32, 76)
    assert len(rec.predict(image, length=4).text) == 4
    rep, _, _ = evaluate_model(rec, str(tiny_data), label_sep="_", progress=False)
    assert rep.n == 50 and set(rep.by_length) == {"4"}


# ------------------------------------------------------------------ (d) colour-coded characters


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 images 120x40: each character in its own colour on a grey-ish background."""
    rng = random.Random(4)
    items = []
    for i in range(50):
        lab = random_label(rng, 4)
        items.append((lab, render(lab, (120, 40), seed=i, font_size=22, colours=PALETTE,
                                  background=grey_background(rng))))
    return write_csv(tmp_path_factory.mktemp("colour"), items)


@pytest.fixture(scope="module")
def colour(colour_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Every from-scratch choice left to the automatic configuration, warm start included (the
    pretrained start, which reads grey, is tested in test_pretrained.py)."""
    return run_train(colour_data, tmp_path_factory.mktemp("colour_run"), preset="auto", init="auto",
                     pretrained="off")


def test_colour_is_kept(colour: Run) -> None:
    assert colour.pre.channels == 3 and colour.meta["model"]["in_channels"] == 3
    assert colour.config["channels"] == 3 and "colour" in colour.log


def test_auto_config_on_a_small_colour_set(colour: Run) -> None:
    assert colour.config["preset"] == "small" and colour.meta["model"]["hidden"] == PRESETS["small"]["hidden"]
    assert colour.config["augment"] == 1.0
    assert "warm start from synthetic" in colour.log  # the grey synthetic model adapted to 3 channels


def test_colour_model_reads_colour_and_grey_input(colour: Run) -> None:
    rec = recognizer(colour)
    image = render("wxyz", (120, 40), seed=5, font_size=22, colours=PALETTE, background=(210, 208, 212))
    arr = rec.prepare([image])[0]
    assert arr.shape == (3, 32, 96) and (arr[0] != arr[2]).any()  # colour reaches the network
    assert len(rec.predict(image, length=4).text) == 4
    grey = rec.prepare([image.convert("L")])[0]  # a grey image is read as three equal channels
    assert grey.shape == (3, 32, 96) and (grey[0] == grey[2]).all()
    assert len(rec.predict(image.convert("L"), length=4).text) == 4


# ------------------------------------------------------------------ (e) 70 symbols, both cases


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """70 labels of 6 characters; each of the 70 symbols appears 6 times."""
    rng = random.Random(5)
    chars = list(BIG) * 6
    rng.shuffle(chars)
    labels = ["".join(chars[i : i + 6]) for i in range(0, len(chars), 6)]
    items = [(lab, render(lab, (150, 40), seed=i, font_size=20)) for i, lab in enumerate(labels)]
    return write_csv(tmp_path_factory.mktemp("big"), items)


@pytest.fixture(scope="module")
def big(big_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_train(big_csv, tmp_path_factory.mktemp("big_run"))


@pytest.fixture(scope="module")
def big_folded(big_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_train(big_csv, tmp_path_factory.mktemp("big_folded_run"), case="insensitive")


def test_big_alphabet_is_case_sensitive_by_default(big: Run) -> None:
    alphabet = big.meta["alphabet"]
    assert len(BIG) == 70 and sorted(alphabet) == sorted(BIG)
    assert big.meta["model"]["num_classes"] == 71 and big.config["case"] == "sensitive"
    assert big.result.test is not None and big.result.test.case_insensitive is not None


def test_case_insensitive_folds_labels(big_folded: Run) -> None:
    alphabet = big_folded.meta["alphabet"]
    assert sorted(alphabet) == sorted(set(BIG.lower())) and len(alphabet) == 44
    assert big_folded.config["case"] == "insensitive"
    assert big_folded.result.test is not None and big_folded.result.test.case_insensitive is None


def cli_eval(model: Path, data: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli_main(["eval", str(model), str(data), "--json", *extra])
    return rc, capsys.readouterr().out


def test_eval_reports_case_sensitive_and_case_blind(big: Run, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = cli_eval(big.result.model_path, big.data, capsys)
    assert rc == 0
    rep = json.loads(out)
    ci = rep["case_insensitive"]
    assert rep["n"] == 70 and set(ci) == {"sequence_accuracy", "char_accuracy", "cer"}
    assert ci["sequence_accuracy"] >= rep["sequence_accuracy"] and ci["cer"] <= rep["cer"]


def test_eval_of_a_folded_model_compares_case_blind(big_folded: Run, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = cli_eval(big_folded.result.model_path, big_folded.data, capsys)  # labels hold upper case
    assert rc == 0 and json.loads(out)["n"] == 70
    rc, out = cli_eval(big_folded.result.model_path, big_folded.data, capsys, "--case", "sensitive")
    assert rc == 0 and json.loads(out)["outside_alphabet"] > 0  # upper-case labels: outside the model's alphabet


def test_score_both_separates_case_errors() -> None:
    rep = score_both(["Ab1", "xY"], ["aB1", "xY"], BIG)
    assert rep.sequence_accuracy == 0.5 and rep.case_insensitive is not None
    assert rep.case_insensitive["sequence_accuracy"] == 1.0 and rep.case_insensitive["cer"] == 0.0
    assert score_both(["ab"], ["AB"], DIGITS + LOWER).case_insensitive is None  # one case only


# ------------------------------------------------------------------ overriding every automatic choice


def test_cli_flags_override_every_auto_choice(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    argv = ["train", str(tiny_data), "--out", str(out), "--epochs", "1", "--label-sep", "_", "--init", "none",
            "--quiet", "--channels", "3", "--preset", "tiny", "--augment", "0", "--width", "96", "--height", "48",
            "--crop", "off"]
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert cli_main(argv) == 0
    meta = read_metadata(out / "model.safetensors")
    pre, cfg, model = meta["preprocess"], meta["training"]["config"], meta["model"]
    assert (pre["height"], pre["width"], pre["channels"]) == (48, 96, 3)  # auto: 32, 76, 1
    assert model["in_channels"] == 3 and model["height"] == 48
    assert model["widths"] == list(PRESETS["tiny"]["widths"]) and cfg["preset"] == "tiny"  # auto: small
    assert cfg["augment"] == 0.0  # auto: 1.0
    assert "auto config" not in buf.getvalue()
    rec = Recognizer.load(out, engine="torch")
    image = render("ab12", (70, 30), seed=7, font_size=16).convert("L")
    assert rec.prepare([image])[0].shape == (3, 48, 96)
    assert len(rec.predict(image, length=4).text) == 4


def test_grey_and_variable_width_override_colour_data(colour_data: Path, tmp_path: Path) -> None:
    run = run_train(colour_data, tmp_path / "o", channels=1, width="variable", augment=0.5)
    assert run.pre.channels == 1 and run.pre.width is None  # auto: 3 and a fixed 96
    assert run.meta["model"]["in_channels"] == 1 and run.config["augment"] == 0.5
    image = render("wxyz", (120, 40), seed=5, font_size=22, colours=PALETTE, background=(210, 208, 212))
    assert recognizer(run).prepare([image])[0].shape == (1, 32, 96)


def test_auto_height_gives_each_character_twenty_four_pixels() -> None:
    """32 where characters are wide enough at 32; taller for long labels in short, tall images; never
    taller than the images; an explicit --height wins; cropped images stay at 32."""
    from captcha_crnn.training.sets import choose_height

    auto = TrainConfig()
    assert choose_height(auto, {(200, 50)}, 5) == 32  # captcha_v2: 25.6 px per character at 32
    assert choose_height(auto, {(70, 30)}, 4) == 32  # henan_digits4: small images are not made taller
    assert choose_height(auto, {(120, 40)}, 4) == 32  # the demo: 24 px at 32
    assert choose_height(auto, {(200, 90)}, 4) == 48  # 17.8 px per character at 32, 26.7 at 48
    assert choose_height(auto, {(200, 90)}, 6) == 64  # 23.7 px at 64: the tallest there is
    assert choose_height(auto, {(160, 60)}, 6) == 48  # 21.3 px at 48; 64 is taller than the images
    assert choose_height(auto, {(160, 40)}, 8) == 32  # too narrow for any height, and only 40 tall
    assert choose_height(TrainConfig(height=16), {(200, 90)}, 6) == 16
    assert choose_height(TrainConfig(crop=True), {(200, 90)}, 6) == 32
    assert choose_height(auto, set(), 6) == 32
