"""The project's own pretrained backbone: batch norm folding, `pretrain` (generate, train, resume,
export) and using its file as the pretrained start, with or without ddddocr installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import make_clean_set

from captcha_crnn.cli import main
from captcha_crnn.errors import CaptchaError
from captcha_crnn.model import pretrained as pretrained_weights
from captcha_crnn.model.backbones import DdddocrBackbone, ddddocr_bn, fold_batchnorm
from captcha_crnn.training import TrainConfig
from captcha_crnn.training import synthetic_pretrain as pretrain_module
from captcha_crnn.training.start import resolve_start
from captcha_crnn.training.synthetic_pretrain import PretrainConfig, pretrain


def test_folded_backbone_equals_the_batch_norm_one() -> None:
    torch.manual_seed(0)
    bn = ddddocr_bn()
    for m in bn.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics far from the identity
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    plain = DdddocrBackbone()
    plain.load_state_dict(fold_batchnorm(bn.eval()))
    x = torch.rand(2, 1, 64, 96)
    with torch.inference_mode():
        assert torch.allclose(bn(x), plain(x), atol=1e-4)
    with pytest.raises(ValueError, match="batch norm after every convolution"):
        fold_batchnorm(plain)


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    assert main(["pretrain", "--out", str(out), "--count", "120", "--epochs", "1", "--quiet"]) == 0
    return out


def test_pretrain_writes_a_backbone_and_resumes(pretrained_file: Path, capsys: pytest.CaptureFixture) -> None:
    out = pretrained_file
    state, note = pretrained_weights.backbone_weights(str(out / "backbone.safetensors"))
    assert set(state) == set(DdddocrBackbone().state_dict()) and str(out) in note
    pngs = sorted((out / "data").glob("*.png"))
    assert len(pngs) == 120
    stamp = pngs[0].stat().st_mtime_ns
    capsys.readouterr()
    # a second run with --resume reuses the set and continues the finished run (nothing left: 1 epoch)
    assert main(["pretrain", "--out", str(out), "--count", "120", "--epochs", "1", "--resume", "--quiet"]) == 0
    assert pngs[0].stat().st_mtime_ns == stamp
    got = capsys.readouterr()
    assert "generating" not in got.out and "resumed from" in got.err
    # the file is the trained backbone with its batch norms folded in: the same features
    from captcha_crnn.model.modelfile import load_bundle

    bn = load_bundle(out / "model" / "model.safetensors").model.backbone.eval()
    plain = DdddocrBackbone()
    plain.load_state_dict(state)
    x = torch.rand(2, 1, 32, 80)
    with torch.inference_mode():
        assert torch.allclose(bn(x), plain.eval()(x), atol=1e-4)


def test_changed_settings_are_a_new_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "p"
    (out / "data").mkdir(parents=True)
    (out / "data" / pretrain_module.DONE).write_text("{damaged")  # an unreadable marker: generate again
    cfg = PretrainConfig(out=str(out), count=100, progress=False)
    folder = pretrain_module.synthetic_set(cfg)
    assert len(list(folder.glob("*.png"))) == 100
    cfg.seed = 1
    pretrain_module.synthetic_set(cfg)  # other settings: the old images go
    assert len(list(folder.glob("*.png"))) == 100
    (out / "model").mkdir()
    (out / "model" / "checkpoint.pt").write_bytes(b"x")
    cfg.seed, cfg.resume = 2, True
    with pytest.raises(CaptchaError, match="settings changed since the checkpoint"):
        pretrain(cfg)
    assert main(["pretrain", "--out", str(tmp_path / "p2"), "--count", "100", "--epochs", "1", "--resume",
                 "--quiet"]) == 0
    assert "no checkpoint" in capsys.readouterr().out
    (tmp_path / "file").write_text("x")
    assert main(["pretrain", "--out", str(tmp_path / "file"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a folder" in err[0]


def test_start_options_that_contradict_each_other(pretrained_file: Path) -> None:
    path = str(pretrained_file / "backbone.safetensors")
    with pytest.raises(CaptchaError, match="--backbone-weights needs --backbone ddddocr"):
        resolve_start(TrainConfig(backbone_weights=path, backbone="plain"))
    with pytest.raises(CaptchaError, match="--pretrained off"):
        resolve_start(TrainConfig(backbone_weights=path, pretrained="off"))


def test_backbone_file_is_the_pretrained_start(pretrained_file: Path, tmp_path: Path) -> None:
    path = str(pretrained_file / "backbone.safetensors")
    changes, notes = resolve_start(TrainConfig(backbone_weights=path), n_labelled=20)  # named: no small-set rule
    assert changes["pretrained"] == "on" and changes["backbone_weights"] == path and path in notes[0]
    assert changes["height"] == 32 == pretrained_weights.native_height(path)  # the height it was pre-trained at
    assert pretrained_weights.native_height("ddddocr") == 64
    make_clean_set(tmp_path / "d", 24)
    from captcha_crnn.training import train

    r = train(str(tmp_path / "d"), TrainConfig(out=str(tmp_path / "run"), epochs=1, batch_size=8, label_sep="-",
                                              progress=False, backbone_weights=path, freeze_epochs=1,
                                              reader="big"))
    from safetensors.torch import load_file

    saved, ref = load_file(str(r.model_path)), load_file(path)
    assert all(torch.equal(saved[f"backbone.{k}"], v) for k, v in ref.items())  # frozen for its one epoch


def test_bad_backbone_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CaptchaError, match="no such file"):
        resolve_start(TrainConfig(backbone_weights=str(tmp_path / "nope.safetensors")))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(CaptchaError, match="not a safetensors backbone file"):
        pretrained_weights.backbone_weights(str(junk))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CaptchaError, match="not a ddddocr-layout backbone"):
        pretrained_weights.backbone_weights(str(tmp_path / "other.safetensors"))
    with pytest.raises(CaptchaError, match="at least 100"):
        pretrain(PretrainConfig(out=str(tmp_path / "p"), count=10))
    state = {k: v.contiguous() for k, v in DdddocrBackbone().state_dict().items()}
    save_file(state, str(tmp_path / "plain.safetensors"))  # no metadata: ddddocr's height
    assert pretrained_weights.native_height(str(tmp_path / "plain.safetensors")) == 64
    save_file(state, str(tmp_path / "odd.safetensors"), metadata={"height": "40"})
    with pytest.raises(CaptchaError, match="odd.safetensors: its metadata gives the input height '40'"):
        resolve_start(TrainConfig(backbone_weights=str(tmp_path / "odd.safetensors")))


def test_auto_takes_ddddocr_or_no_pretrained_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: ddddocr's weights where the package is installed; else the from-scratch start (no backbone of the
    project's own is shipped, and "mixed" names none)."""
    if pretrained_weights.available("ddddocr"):
        assert pretrained_weights.pick_source("auto") == "ddddocr"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ddddocr" else real(n, *a))
    assert pretrained_weights.pick_source("auto") is None
    assert resolve_start(TrainConfig(), n_labelled=500)[0] == {"pretrained": "off", "backbone": "plain"}
    with pytest.raises(CaptchaError, match="--backbone-weights mixed: no such file"):
        resolve_start(TrainConfig(backbone_weights="mixed"))
