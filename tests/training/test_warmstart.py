"""Warm start from a trained model, case handling, and the shipped-model cards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from captcha_crnn.cli import main
from captcha_crnn.data.alphabet import Alphabet
from captcha_crnn.errors import CaptchaError
from captcha_crnn.evaluate import has_both_cases, score_both
from captcha_crnn.model.crnn import CRNN
from captcha_crnn.model.modelfile import load_bundle
from captcha_crnn.model.warmstart import warm_start


def test_warm_start_copies_features_and_shared_character_rows(trained) -> None:
    src = load_bundle(trained.model_path).model
    alphabet = Alphabet("01xyz")
    cfg = src.cfg.__class__(**{**src.cfg.to_dict(), "widths": tuple(src.cfg.widths),
                               "num_classes": alphabet.num_classes})
    model = CRNN(cfg)
    msg = warm_start(model, alphabet, str(trained.model_path))
    assert "2/5 characters" in msg
    s, m = src.state_dict(), model.state_dict()
    for k in s:
        if not k.startswith("head."):
            assert torch.equal(s[k], m[k]), k
    src_alpha = load_bundle(trained.model_path).alphabet
    assert torch.equal(m["head.weight"][1], s["head.weight"][src_alpha.index["0"]])  # '0' row copied
    assert torch.equal(m["head.weight"][0], s["head.weight"][0])  # blank row copied
    assert not torch.equal(m["head.weight"][3], s["head.weight"][3])  # 'x' is new: left random


def test_warm_start_adapts_grey_weights_to_colour(trained) -> None:
    src = load_bundle(trained.model_path).model
    cfg = src.cfg.__class__(**{**src.cfg.to_dict(), "widths": tuple(src.cfg.widths), "in_channels": 3})
    model = CRNN(cfg)
    warm_start(model, Alphabet("0123456789"), str(trained.model_path))
    first = next(k for k, v in src.state_dict().items() if v.ndim == 4)
    w_src, w_new = src.state_dict()[first], model.state_dict()[first]
    assert w_new.shape[1] == 3
    assert torch.allclose(w_new.sum(1, keepdim=True), w_src, atol=1e-6)


def test_warm_start_stretches_the_projection_to_another_height(trained) -> None:
    src = load_bundle(trained.model_path).model
    h2 = src.cfg.height * 2
    model = CRNN(src.cfg.__class__(**{**src.cfg.to_dict(), "widths": tuple(src.cfg.widths), "height": h2}))
    msg = warm_start(model, Alphabet("0123456789"), str(trained.model_path))
    total = len([k for k in model.state_dict() if not k.startswith("head.")])
    assert msg.startswith(f"{total}/{total} tensors")  # the projection too, though its shape differs
    c = src.backbone.out_channels
    w_src = src.state_dict()["proj.0.weight"].view(src.cfg.hidden, c, src.cfg.height // 16)
    w_new = model.state_dict()["proj.0.weight"].view(src.cfg.hidden, c, h2 // 16)
    assert torch.allclose(w_new[:, :, 0] * 2, w_src[:, :, 0]) and torch.allclose(w_new[:, :, -1] * 2, w_src[:, :, -1])
    # a feature map constant over its rows projects the same at either height
    f1 = torch.randn(c, 1)
    new = w_new.reshape(src.cfg.hidden, -1) @ f1.expand(c, h2 // 16).reshape(-1)
    old = w_src.reshape(src.cfg.hidden, -1) @ f1.expand(c, src.cfg.height // 16).reshape(-1)
    assert torch.allclose(new, old, atol=1e-5)


def test_warm_start_refuses_another_architecture(trained) -> None:
    from captcha_crnn.model.crnn import preset

    model = CRNN(preset("small", num_classes=11))
    with pytest.raises(CaptchaError, match="architecture differs"):
        warm_start(model, Alphabet("0123456789"), str(trained.model_path))
    # the plan's default ("auto") chooses random weights where the shipped model does not fit, and says why
    import captcha_crnn.model.zoo as zoo
    from captcha_crnn.training import TrainConfig
    from captcha_crnn.training.start import build_model, warm_source

    orig = zoo.zoo_path
    cfg = TrainConfig(preset="small", backbone="plain", rnn="gru")
    try:
        zoo.zoo_path = lambda name: trained.model_path  # type: ignore[assignment]
        warm, why = warm_source(cfg, model.cfg)
        assert warm is None and "architecture differs" in why
        with pytest.raises(CaptchaError):  # named by --init: an error, not a silent fallback
            build_model(cfg, model.cfg, Alphabet("0123456789"), str(trained.model_path), resume=False)
    finally:
        zoo.zoo_path = orig
    assert warm_source(cfg, model.cfg)[0] == "synthetic"  # the shipped one fits the small preset
    assert warm_source(TrainConfig(init="none"), model.cfg) == (None, "random weights (--init none)")
    assert build_model(cfg, model.cfg, Alphabet("01"), None, resume=False)[1] == "random (from scratch)"


def test_score_reports_case_blind_figures_when_case_matters() -> None:
    assert has_both_cases("abAB12") and not has_both_cases("ab12") and not has_both_cases("AB")
    rep = score_both(["aB1", "xy2"], ["ab1", "xy2"], "abxyB12")
    assert rep.sequence_accuracy == 0.5
    assert rep.case_insensitive == {"sequence_accuracy": 1.0, "char_accuracy": 1.0, "cer": 0.0}
    assert score_both(["ab"], ["ab"], "ab").case_insensitive is None


def test_case_insensitive_training_folds_labels(tmp_path: Path, clean_dir: Path) -> None:
    data = tmp_path / "mixed"
    data.mkdir()
    for i, f in enumerate(sorted(clean_dir.glob("*.png"))[:80]):
        label = f.name.split("-")[0]
        cased = "A" + label if i % 2 else "a" + label  # the same letter in both cases
        shutil.copy(f, data / f"{cased}-{i}.png")
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", "--preset", "tiny", "--label-sep", "-",
                 "--case", "insensitive", "--quiet", "--init", "none"]) == 0
    b = load_bundle(out / "model.safetensors")
    assert "A" not in b.alphabet.chars and "a" in b.alphabet.chars
    assert b.info["training"]["config"]["case"] == "insensitive"
    out2 = tmp_path / "run2"
    assert main(["train", str(data), "--out", str(out2), "--epochs", "1", "--preset", "tiny", "--label-sep", "-",
                 "--quiet", "--init", "none"]) == 0
    assert {"a", "A"} <= set(load_bundle(out2 / "model.safetensors").alphabet.chars)


def test_models_command_lists_cards_and_names_work_as_paths(trained, clean_dir: Path, tmp_path: Path,
                                                             monkeypatch, capsys) -> None:
    import captcha_crnn.model.zoo as zoo

    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    shutil.copy(trained.model_path, tmp_path / "digits.safetensors")
    assert main(["models", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in cards] == ["digits"]
    c = cards[0]
    assert c["alphabet"] == "0123456789" and c["size_mb"] > 0 and c["test_n"] > 0
    assert 0 <= c["test_sequence_accuracy"] <= 1
    assert main(["models"]) == 0
    assert "| `digits` |" in capsys.readouterr().out
    img = next(iter(sorted(clean_dir.glob("*.png"))))
    assert main(["predict", "digits", str(img)]) == 0
    assert str(img) in capsys.readouterr().out
