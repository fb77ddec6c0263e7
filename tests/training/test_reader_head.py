"""ddddocr's whole reader as the pretrained start (--pretrained-head): the LSTM and classifier's conversion and
check, the rows cut to an alphabet, its zero-shot reading kept before any training, and when the plan takes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_clean_set

from captcha_crnn.data.alphabet import Alphabet
from captcha_crnn.data.images import Preprocess, load_image
from captcha_crnn.decode.ctc import greedy_decode_batch
from captcha_crnn.errors import CaptchaError
from captcha_crnn.model import pretrained as pretrained_weights
from captcha_crnn.model.archs import READER
from captcha_crnn.model.crnn import CRNN, preset
from captcha_crnn.model.pretrained import check_head, head_weights, load_reader_head
from captcha_crnn.training import TrainConfig
from captcha_crnn.training.start import build_model, probe, resolve_start

pytestmark = pytest.mark.skipif(not pretrained_weights.available(),
                                reason="the pretrained extra (ddddocr) is not installed")


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One conversion cache for this module (converting reads a 54 MB ONNX file)."""
    monkeypatch.setenv("CAPTCHA_CRNN_CACHE", str(tmp_path_factory.getbasetemp() / "reader-cache"))


def reader_model(chars: str) -> CRNN:
    cfg = preset(READER.name, backbone=READER.backbone, rnn=READER.rnn, height=64, num_classes=len(chars) + 1,
                 input_norm=READER.input_norm)
    return CRNN(cfg).eval()


def test_conversion_matches_onnxruntime_and_a_wrong_weight_is_caught() -> None:
    state, _ = head_weights()
    path = pretrained_weights._onnx_path()
    assert check_head(state, pretrained_weights._load(path), path) < pretrained_weights.TOLERANCE
    bad = dict(state, **{"rnn.bias_ih_l0": state["rnn.bias_ih_l0"] + 0.5})
    with pytest.raises(CaptchaError, match="differs from onnxruntime"):
        check_head(bad, pretrained_weights._load(path), path)


def test_rows_are_cut_to_the_alphabet_and_unknown_characters_keep_their_own() -> None:
    chars = "ab7\u2603"  # a snowman: no class of ddddocr's
    model = reader_model(chars)
    before = model.head.weight.detach().clone()
    note = load_reader_head(model, Alphabet(chars))
    assert "3/4 characters" in note
    state, _ = head_weights()
    from captcha_crnn.model.ddddocr_package import class_list

    beta = class_list("CHARSET_BETA")
    for k, c in enumerate(chars[:3], start=1):
        assert torch.equal(model.head.weight[k], state["head.weight"][beta.index(c)])
    assert torch.equal(model.head.weight[0], state["head.weight"][0])  # the blank
    assert torch.equal(model.head.weight[4], before[4])
    with pytest.raises(CaptchaError, match="architecture"):
        load_reader_head(CRNN(preset("small", num_classes=5)), Alphabet(chars))


def test_it_reads_before_any_training(tmp_path: Path) -> None:
    """Zero-shot: the reader start reads clean digits untrained; a new head reads nothing."""
    make_clean_set(tmp_path, 12)
    paths = sorted(tmp_path.glob("*.png"))
    labels = [p.stem.split("-")[0] for p in paths]
    pre = Preprocess(height=64, width=None, channels=1)

    def read(model: CRNN) -> list[str]:
        out = []
        for p in paths:
            x = torch.from_numpy((255 - load_image(str(p), pre).astype(np.float32)) / 255)[None].reshape(1, 1, 64, -1)
            with torch.no_grad():
                lp = model(x).numpy()
            out.append("".join("0123456789"[i - 1] for i in greedy_decode_batch(lp, [lp.shape[1]])[0].indices))
        return out

    mcfg = reader_model("0123456789").cfg
    on = dict(pretrained="on", backbone_weights="ddddocr")
    digits = Alphabet("0123456789")
    kept = build_model(TrainConfig(**on, pretrained_head="ddddocr"), mcfg, digits, None, False)[0].eval()
    fresh = build_model(TrainConfig(**on, pretrained_head="new"), mcfg, digits, None, False)[0].eval()
    assert sum(r == y for r, y in zip(read(kept), labels)) >= 9
    assert sum(r == y for r, y in zip(read(fresh), labels)) == 0


def test_the_plan_takes_it_under_the_label_count_and_at_its_height(tmp_path: Path) -> None:
    changes, notes = resolve_start(TrainConfig(), n_labelled=250)
    assert (changes["preset"], changes["backbone"], changes["rnn"], changes["height"]) == (
        READER.name, READER.backbone, "lstm", 64)
    assert changes["pretrained_head"] == "ddddocr" and "LSTM and classifier" in notes[0]
    big = resolve_start(TrainConfig(), n_labelled=1000)[0]
    assert (big["pretrained_head"], big["preset"], big["height"]) == ("new", "pretrained", 48)
    assert resolve_start(TrainConfig(height=48), n_labelled=250)[0]["pretrained_head"] == "new"
    assert resolve_start(TrainConfig(pretrained_head="new"), n_labelled=250)[0]["backbone"] == "ddddocr"
    assert resolve_start(TrainConfig(pretrained_head="ddddocr"), n_labelled=5000)[0]["height"] == 64
    with pytest.raises(CaptchaError, match="--pretrained-head ddddocr reads at ddddocr's height 64"):
        resolve_start(TrainConfig(pretrained_head="ddddocr", height=48), n_labelled=250)
    own = tmp_path / "own.safetensors"
    own.write_bytes(b"not checked here")
    with pytest.raises(CaptchaError, match="needs ddddocr's backbone"):
        resolve_start(TrainConfig(pretrained_head="ddddocr", backbone_weights=str(own)), n_labelled=250)


def test_auto_keeps_it_only_where_ddddocr_reads_the_held_out_labels(tmp_path: Path) -> None:
    """Clean digits, which ddddocr reads untrained: kept. Noise labelled with digits, which it cannot read: a new
    head, and the plan says why."""
    from PIL import Image

    from captcha_crnn.data.labels import Sample

    make_clean_set(tmp_path / "clean", 10)
    clean = [Sample(str(p), p.stem.split("-")[0]) for p in sorted((tmp_path / "clean").glob("*.png"))]
    changes, notes = resolve_start(TrainConfig(), n_labelled=250, zero_shot=lambda: probe(clean, "0123456789",
                                                                                         "sensitive", None))
    assert changes["pretrained_head"] == "ddddocr" and "untrained it reads" in notes[0]
    rng = np.random.default_rng(0)
    noise = []
    for i in range(10):
        path = tmp_path / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 120), dtype=np.uint8)).save(path)
        noise.append(Sample(str(path), "4711"))
    changes, notes = resolve_start(TrainConfig(), n_labelled=250, zero_shot=lambda: probe(noise, "0123456789",
                                                                                         "sensitive", None))
    assert changes["pretrained_head"] == "new" and changes["backbone"] == "ddddocr"
    assert "not kept: untrained it reads 0% of the labelled images" in notes[0]
