"""Architecture cards (as docTR's `default_cfgs`): every named architecture in one table, ARCHS, and the
lookups several places make on it. The format checks (format.py), the network (crnn.py, backbones.py),
the CLI choices of --backbone and --preset (training/config.py), the weights (model/pretrained.py) and the
start logic (training/start.py, training/plan.py, training/synthetic_pretrain.py) read them here; no other module
names a backbone or a preset or holds one of their sizes or inputs (tests/test_layout.py checks). No torch.

Two kinds of card share the table:
- a backbone card (it has a `builder`; its name is the `backbone` a model file and --backbone give):
  what model/backbones.py builds, the input it reads and where its trained weights come from;
- a preset card (--preset): sizes (widths, hidden, depth, proj) for any backbone, with the backbone and
  input it is made for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Arch:
    """One named architecture."""

    name: str
    backbone: str  # the backbone card it uses (a backbone card names itself)
    builder: str | None = None  # backbone cards: the class or function of model/backbones.py that builds it
    widths: tuple[int, ...] = (32, 64, 96, 128)  # channels of the four stages (unused by the ddddocr layout)
    hidden: int = 128  # RNN width per direction
    depth: int = 1  # convolutions (or blocks) per stage
    rnn_layers: int = 2  # stacked bidirectional RNN layers
    rnn: str = "gru"  # the RNN a preset is made for where it matters (the ddddocr reader's LSTM)
    proj: bool = True  # a linear + ReLU from the features to `hidden` before the RNN
    height: int | None = None  # the input height it reads best (its native one); None: the data's auto height
    tuned_height: int | None = None  # fewer rows that fine-tuning on a few hundred labels moves it to
    channels: int | None = None  # input channels it needs; None: from the data (grey or colour)
    input_norm: str = "ink"  # what it is fed (format.INPUT_NORMS)
    weights: str | None = None  # where trained weights come from: "ddddocr" (the package,
    # model/pretrained.py), a shipped model (model/zoo.py), None (random)

    def sizes(self) -> dict[str, Any]:
        """The fields of CRNNConfig a preset sets."""
        return {"widths": self.widths, "hidden": self.hidden, "depth": self.depth, "proj": self.proj,
                "rnn_layers": self.rnn_layers}


ARCHS: dict[str, Arch] = {a.name: a for a in (
    # backbones; plain's sizes are what a model file that does not say has (format.CRNNConfig's defaults)
    Arch("plain", "plain", "PlainBackbone"),
    Arch("resnet", "resnet", "ResNetBackbone"),
    # the convolutions of ddddocr's captcha model: its weights from the package, centred grey input as it was
    # trained on (docs/experiments.md, input normalisation: zero-shot, centred input read 98.0/97.5/8.5% of captcha_v2/
    # henan_digits4/generic_varlen against 97.5/97.5/6.5% for grey / 255), and ddddocr's own models read at
    # 64 rows (infer/ddddocr_reader.py)
    Arch("ddddocr", "ddddocr", "DdddocrBackbone", hidden=192, proj=False, height=64, channels=1,
         input_norm="centered", weights="ddddocr"),
    # its layout with batch norm, trained from random weights by `captcha-crnn pretrain`
    # (training/synthetic_pretrain.py)
    Arch("ddddocr-bn", "ddddocr-bn", "ddddocr_bn", hidden=192, proj=False, channels=1, input_norm="centered"),
    # the same convolutions giving ddddocr's own W/8 columns: its LSTM reads them as it was trained to, and the
    # CRNN repeats each output step twice (T = W/4 as for every backbone; crnn.py)
    Arch("ddddocr-seq", "ddddocr-seq", "ddddocr_seq", hidden=512, proj=False, height=64, channels=1,
         input_norm="centered", weights="ddddocr"),
    # presets
    Arch("tiny", "plain", widths=(16, 32, 48, 64), hidden=64),
    # 2.3x faster to read than (32,64,96,128)/128, as accurate; the shipped models have its sizes
    Arch("small", "plain", widths=(16, 32, 64, 128), hidden=96, weights="synthetic"),
    Arch("base", "plain", widths=(64, 128, 192, 256), hidden=256, depth=2),
    # the RNN straight on the features per column of the ddddocr backbone: a projection before it kept a
    # new head on the CTC blank plateau for hundreds of steps (docs/experiments.md); trained at 48 rows (1.8x the
    # images per second of its native 64, as accurate) from training/start.py's TUNED_HEIGHT_FROM_LABELS
    # labelled images, fewer at its native 64
    Arch("pretrained", "ddddocr", hidden=192, proj=False, tuned_height=48, channels=1, input_norm="centered",
         weights="ddddocr"),
    # ddddocr's whole captcha reader (common.onnx): convolutions, one bidirectional LSTM of 512 and its classifier
    # cut to the labels' characters, so fine-tuning starts from its zero-shot reading (--pretrained-head
    # ddddocr); its LSTM reads 64 rows' features, so it stays at its native height
    Arch("ddddocr-reader", "ddddocr-seq", hidden=512, proj=False, rnn_layers=1, rnn="lstm", channels=1,
         input_norm="centered", weights="ddddocr"),
)}

BACKBONES = tuple(name for name, a in ARCHS.items() if a.builder)  # --backbone, a model file's "backbone"
PRESETS = {name: a.sizes() for name, a in ARCHS.items() if not a.builder}  # --preset: name -> sizes

DEFAULT = ARCHS["plain"]  # a model file's architecture where it says nothing (format.CRNNConfig)
SCRATCH = ARCHS["small"]  # from scratch: --backbone and --preset auto (under policy.BIG_DATA images)
BIG = ARCHS["base"]  # --preset auto from policy.BIG_DATA images
PRETRAINED = ARCHS["pretrained"]  # the pretrained start (training/start.py)
READER = ARCHS["ddddocr-reader"]  # the pretrained start with ddddocr's own RNN and classifier too
DDDDOCR_LAYOUT = ("ddddocr", "ddddocr-seq")  # backbones that read ddddocr's backbone weights
DDDDOCR = ARCHS["ddddocr"]  # the network of the ddddocr package: the pretrained backbone, its native input
PRETRAIN = ARCHS["ddddocr-bn"]  # what `captcha-crnn pretrain` trains from random weights


def backbone_card(name: str) -> Arch:
    """The card of backbone `name`; ValueError naming the choices."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    return ARCHS[name]


def input_norm(backbone: str) -> str:
    """What `backbone` is fed (format.INPUT_NORMS): its card's input, the default for an unknown name."""
    return ARCHS[backbone].input_norm if backbone in BACKBONES else DEFAULT.input_norm


def preset_of(arch: dict[str, Any]) -> str | None:
    """The preset whose sizes a stored architecture (CRNNConfig.to_dict) has, or None."""
    for name, sizes in PRESETS.items():
        if all(json.dumps(list(v) if k == "widths" else v) == json.dumps(arch[k]) for k, v in sizes.items()):
            return name
    return None
