"""The architecture cards (model/archs.py): the names, sizes and inputs they give stay what model files,
the CLI and the start logic had before the cards, and every card is one the code can build."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from captcha_crnn.model import archs
from captcha_crnn.model import pretrained as pretrained_weights
from captcha_crnn.model.archs import ARCHS, BACKBONES, PRESETS, preset_of
from captcha_crnn.model.backbones import build_backbone
from captcha_crnn.model.crnn import CRNN, preset
from captcha_crnn.model.format import INPUT_NORMS, CRNNConfig, parse_metadata, read_metadata
from captcha_crnn.model.zoo import zoo_names, zoo_path
from captcha_crnn.training.config import TrainConfig

# what the constants spread over the code said before the cards (model files and flags depend on them)
OLD_PRESETS = {"tiny": dict(widths=(16, 32, 48, 64), hidden=64),
               "small": dict(widths=(16, 32, 64, 128), hidden=96),
               "base": dict(widths=(64, 128, 192, 256), hidden=256, depth=2),
               "pretrained": dict(hidden=192, proj=False)}
OLD_BACKBONES = ("plain", "resnet", "ddddocr", "ddddocr-bn")
# added since: ddddocr's whole reader (--pretrained-head ddddocr), settled by the plan, not a flag's choice
NEW_BACKBONES, NEW_PRESETS = ("ddddocr-seq",), {"ddddocr-reader": dict(hidden=512, proj=False, rnn_layers=1)}
OLD_NATIVE_NORM = {"ddddocr": "centered", "ddddocr-bn": "centered"}


def test_names_sizes_and_inputs_are_unchanged() -> None:
    assert BACKBONES == OLD_BACKBONES + NEW_BACKBONES
    want = {**OLD_PRESETS, **NEW_PRESETS}
    assert {n: CRNNConfig(**s) for n, s in PRESETS.items()} == {n: CRNNConfig(**s) for n, s in want.items()}
    assert list(PRESETS) == list(want)
    norms = {**OLD_NATIVE_NORM, "ddddocr-seq": "centered"}
    assert {b: archs.input_norm(b) for b in BACKBONES} == {b: norms.get(b, "ink") for b in BACKBONES}
    assert archs.input_norm("vgg99") == "ink"
    assert CRNNConfig() == CRNNConfig(num_classes=37, in_channels=1, height=32, backbone="plain", input_norm="ink",
                                      widths=(32, 64, 96, 128), depth=1, rnn="gru", hidden=128, proj=True,
                                      rnn_layers=2, dropout=0.1)
    assert archs.DDDDOCR.height == 64 == pretrained_weights.native_height("ddddocr")
    assert (archs.SCRATCH.name, archs.BIG.name, archs.PRETRAINED.name) == ("small", "base", "pretrained")
    assert (archs.PRETRAINED.backbone, archs.PRETRAINED.channels, archs.PRETRAINED.height) == ("ddddocr", 1, None)


def test_cli_choices_come_from_the_cards() -> None:
    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(TrainConfig) if "choices" in f.metadata}
    assert choices["backbone"] == (*OLD_BACKBONES, "auto")
    # "pretrained" is the teacher's architecture, settled by the plan: not a size a user picks
    assert choices["preset"] == (*(p for p in OLD_PRESETS if p != "pretrained"), "auto")
    assert choices["pretrained_head"] == ("auto", "new", "ddddocr")


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_card_builds(name: str) -> None:
    card = ARCHS[name]
    assert card.backbone in BACKBONES and card.input_norm in INPUT_NORMS
    assert (card.builder is not None) == (card.name == card.backbone)  # a backbone card names itself
    assert card.input_norm == ARCHS[card.backbone].input_norm and card.channels == ARCHS[card.backbone].channels
    cfg = dataclasses.replace(CRNNConfig(**card.sizes()), backbone=card.backbone, input_norm=card.input_norm,
                              in_channels=card.channels or 3, height=card.height or 32, num_classes=5)
    with torch.inference_mode():
        out = CRNN(cfg).eval()(torch.zeros(1, cfg.in_channels, cfg.height, 40))
    assert out.shape == (1, 10, 5)


def test_backbones_are_built_by_their_builder() -> None:
    assert type(build_backbone("resnet", 1, (8, 8, 8, 8))).__name__ == ARCHS["resnet"].builder
    with pytest.raises(ValueError, match="choose from plain, resnet, ddddocr, ddddocr-bn"):
        build_backbone("tiny", 1, (8, 8, 8, 8))  # a preset, not a backbone


def test_preset_of_finds_each_preset_and_only_those() -> None:
    for name in PRESETS:
        assert preset_of(preset(name, backbone="resnet").to_dict()) == name
    assert preset_of(CRNNConfig().to_dict()) is None
    assert preset_of(preset("small", hidden=97).to_dict()) is None


def test_shipped_models_have_the_small_cards_sizes() -> None:
    for name in zoo_names():
        path = zoo_path(name)
        arch = parse_metadata(read_metadata(path), str(path)).arch
        assert preset_of(arch.to_dict()) == archs.SCRATCH.name and arch.input_norm == archs.DEFAULT.input_norm
    assert archs.SCRATCH.weights in zoo_names()
    assert pretrained_weights.pick_source("auto") in (archs.PRETRAINED.weights, None)
