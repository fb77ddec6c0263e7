"""The pretrained start: the ddddocr backbone's conversion, its check, the training recipe, and a
trained model that reads, exports and serves without ddddocr installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_clean_set

from captcha_crnn.cli import main
from captcha_crnn.errors import CaptchaError
from captcha_crnn.model import pretrained as pretrained_weights
from captcha_crnn.model.backbones import DdddocrBackbone
from captcha_crnn.model.crnn import CRNN, preset
from captcha_crnn.training import TrainConfig, train
from captcha_crnn.training.start import resolve_start

needs_ddddocr = pytest.mark.skipif(not pretrained_weights.available(),
                                   reason="the pretrained extra (ddddocr) is not installed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One conversion cache for this module (converting reads a 54 MB ONNX file)."""
    return tmp_path_factory.mktemp("weights-cache")


@pytest.fixture
def uninstalled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As if the ddddocr package were not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ddddocr" else real(name, *a))


def test_backbone_keeps_four_pixels_per_step() -> None:
    b = DdddocrBackbone()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in b.modules()) == 21
    assert b(torch.zeros(2, 1, 64, 100)).shape == (2, 64, 8, 25)  # (B, C, H/8, W/4)
    m = CRNN(preset("pretrained", backbone="ddddocr", height=64, num_classes=11, input_norm="centered"))
    assert m(torch.zeros(3, 1, 64, 128)).shape == (3, 32, 11)
    assert isinstance(m.proj, torch.nn.Identity)
    assert torch.equal(m.normalize(torch.tensor([0.0, 1.0])), torch.tensor([1.0, -1.0]))  # paper 1, ink -1


@needs_ddddocr
def test_conversion_is_checked_and_cached(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTCHA_CRNN_CACHE", str(cache))
    state, note = pretrained_weights.backbone_weights()
    files = list(cache.glob("ddddocr-backbone-*.safetensors"))
    assert len(files) == 1 and ("converted" in note or str(files[0]) in note)
    again, note2 = pretrained_weights.backbone_weights()
    assert str(files[0]) in note2 and all(torch.equal(state[k], again[k]) for k in state)
    onnx_path = pretrained_weights._onnx_path()
    tol = pretrained_weights.TOLERANCE
    assert pretrained_weights.check(state, pretrained_weights._load(onnx_path), onnx_path) < tol
    bad = {k: v.clone() for k, v in state.items()}
    bad["body.0.0.bias"] += 0.01
    with pytest.raises(CaptchaError, match="differs from onnxruntime"):
        pretrained_weights.check(bad, pretrained_weights._load(onnx_path), onnx_path)


def test_not_installed_is_one_clear_line(uninstalled: None, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert not pretrained_weights.available()
    with pytest.raises(CaptchaError, match=r'pip install "captcha-crnn\[pretrained\]"'):
        resolve_start(TrainConfig(pretrained="on"))
    changes, notes = resolve_start(TrainConfig())  # auto falls back to the from-scratch default
    assert changes == {"pretrained": "off", "backbone": "plain"}
    assert "from scratch" in notes[0] and "captcha-crnn[pretrained]" in notes[0]
    make_clean_set(tmp_path / "d", 12)
    assert main(["train", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--pretrained", "on", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "captcha-crnn[pretrained]" in err[0]


def test_choices_that_contradict_each_other() -> None:
    with pytest.raises(CaptchaError, match="--pretrained on needs --backbone ddddocr"):
        resolve_start(TrainConfig(pretrained="on", backbone="plain"))
    assert resolve_start(TrainConfig(pretrained="off"))[0] == {"pretrained": "off", "backbone": "plain"}
    assert resolve_start(TrainConfig(preset="tiny"))[0]["pretrained"] == "off"  # a scratch architecture
    if pretrained_weights.available():  # auto: a from-scratch start for very few images, the pretrained one above
        changes, notes = resolve_start(TrainConfig(), n_labelled=20)
        assert changes["pretrained"] == "off" and "20 labelled images" in notes[0]
        assert resolve_start(TrainConfig(), n_labelled=50)[0]["pretrained"] == "on"
        assert resolve_start(TrainConfig(pretrained="on"), n_labelled=20)[0]["pretrained"] == "on"
    with pytest.raises(CaptchaError, match="--freeze-epochs"):
        TrainConfig(freeze_epochs=-1).validate()
    with pytest.raises(CaptchaError, match="--backbone-lr"):
        TrainConfig(backbone_lr=0).validate()


@pytest.mark.slow
@needs_ddddocr
@pytest.mark.parametrize("head,backbone", [("new", "ddddocr"), ("ddddocr", "ddddocr-seq")])
def test_pretrained_start_end_to_end(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, head: str,
                                     backbone: str) -> None:
    """Frozen for the first epoch (the backbone is the pretrained one), then fine-tuned; the model
    file holds every weight, so reading, ONNX export and the onnx engine work without ddddocr. With
    ddddocr's own head too (its LSTM reads W/8 columns and the CRNN repeats its steps)."""
    monkeypatch.setenv("CAPTCHA_CRNN_CACHE", str(cache))
    make_clean_set(tmp_path / "d", 40)
    ref, _ = pretrained_weights.backbone_weights()
    seen: list[dict[str, torch.Tensor]] = []

    def hook(rec: dict, bundle) -> None:  # the model that is validated and saved, after each epoch
        seen.append({k: v.clone() for k, v in bundle.model.backbone.state_dict().items()})

    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=3, batch_size=8, freeze_epochs=1, label_sep="-",
                      progress=False, ema=0.0, lr=1e-3, pretrained="on", reader="big", pretrained_head=head)
    r = train(str(tmp_path / "d"), cfg, on_epoch=hook)
    assert r.config["pretrained"] == "on" and r.config["backbone"] == backbone
    assert all(torch.equal(seen[0][k], ref[k]) for k in ref)  # frozen in epoch 1
    assert any(not torch.equal(seen[-1][k], ref[k]) for k in ref)  # fine-tuned after

    from captcha_crnn import Recognizer
    from captcha_crnn.infer.export import export_onnx
    from captcha_crnn.model.modelfile import read_metadata

    meta = read_metadata(r.model_path)
    assert meta["model"]["backbone"] == backbone and meta["model"]["input_norm"] == "centered"
    assert meta["preprocess"]["height"] == 64 and meta["preprocess"]["channels"] == 1  # native: few labels
    images = sorted((tmp_path / "d").glob("*.png"))[:8]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ddddocr" else real(n, *a))
    assert not pretrained_weights.available()
    torch_read = Recognizer.load(r.model_path, engine="torch").predict(images)
    onnx_read = Recognizer.load(r.model_path, engine="onnx").predict(images)
    assert [p.text for p in torch_read] == [p.text for p in onnx_read]
    out = export_onnx(r.model_path, tmp_path / "m.onnx")
    exported = Recognizer.load(out).predict(images)
    assert [p.text for p in exported] == [p.text for p in torch_read]
    np.testing.assert_allclose([p.confidence for p in exported], [p.confidence for p in torch_read], atol=1e-3)
    int8 = Recognizer.load(export_onnx(r.model_path, tmp_path / "m8.onnx", int8=True)).predict(images)
    assert len(int8) == len(images) and all(0.0 <= p.confidence <= 1.0 for p in int8)
