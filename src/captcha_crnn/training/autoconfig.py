"""Automatic configuration from the training data: colour, cropping, model size and augmentation strength.

Every choice is printed before training and stored in the model file (the resolved TrainConfig);
a flag given on the command line overrides it. The input size and the CTC time resolution are
chosen in data.choose_preprocess from the image sizes and the longest label.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from ..data.images import crop_to_ink, open_image, to_mode
from ..data.labels import Sample
from ..errors import CaptchaError
from . import pretrained
from .config import TrainConfig

COLOUR_PIXELS = 0.02  # share of strongly coloured pixels above which colour is kept
BIG_DATA = 50_000  # images from which the larger model pays for itself
SMALL_DATA = 5_000  # images below which augmentation runs at full strength
CROP_BELOW = 0.3  # crop images to their text when the text box (with margin) covers under this share of them


def sample_images(samples: list[Sample], k: int = 48) -> list[Image.Image]:
    """Up to k evenly spaced training images, opened as RGB (unreadable ones left out)."""
    images = []
    for s in samples[:: max(1, len(samples) // k)][:k]:
        try:
            images.append(to_mode(open_image(s.path), 3))
        except CaptchaError:
            continue
    return images


def colour_share(images: list[Image.Image]) -> float:
    """Mean share of pixels whose channels differ by more than 40 levels."""
    shares = []
    for im in images:
        rgb = np.asarray(im, dtype=np.int16)
        shares.append(float(((rgb.max(-1) - rgb.min(-1)) > 40).mean()))
    return float(np.mean(shares)) if shares else 0.0


def text_share(images: list[Image.Image]) -> tuple[float, int]:
    """(mean share of the image area its text box covers (data/images.py: crop_to_ink), number of
    distinct image sizes)."""
    shares = []
    for im in images:
        box = crop_to_ink(im)
        shares.append(box.width * box.height / max(1, im.width * im.height))
    return (float(np.mean(shares)) if shares else 1.0), len({im.size for im in images})


# When --pretrained auto starts from the ddddocr backbone, and why (benchmarks/learning_curve.py, README:
# same split and budget; under this many training images the from-scratch model, whose RNN and
# classifier start trained on synthetic captchas, read better than a new RNN on the backbone).
PRETRAINED_MIN_IMAGES = 90
PRETRAINED_WHY = ("measured from 100 labelled images up: as good or better on captcha_v2 and henan_digits4, "
                  "better on generic_varlen in a 10-minute run; short runs on wide images favour from-scratch")


def resolve_start(cfg: TrainConfig, n_train: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """Settle --pretrained and --backbone: the ddddocr backbone with its weights where asked for, or
    (auto) where installed, the architecture is left to auto (a --preset or a plain/resnet backbone
    names a from-scratch model) and there are at least PRETRAINED_MIN_IMAGES training images; else
    the from-scratch default. Also the input the pretrained backbone expects (grey, its height)."""
    weights = cfg.backbone_weights != "auto"  # naming the weights asks for the pretrained start
    if (cfg.pretrained == "on" or weights) and cfg.backbone not in ("auto", "ddddocr"):
        flag = "--pretrained on" if cfg.pretrained == "on" else "--backbone-weights"
        raise CaptchaError(f"{flag} needs --backbone ddddocr (or auto), not {cfg.backbone}")
    if weights and cfg.pretrained == "off":
        raise CaptchaError("--backbone-weights names pretrained weights, --pretrained off asks for none; drop one")
    named = cfg.backbone == "ddddocr" or weights
    wants = cfg.pretrained == "on" or (cfg.pretrained == "auto" and (
        named or (cfg.backbone == "auto" and cfg.preset == "auto")))
    few = (cfg.pretrained == "auto" and not named and cfg.backbone == "auto"
           and n_train is not None and n_train < PRETRAINED_MIN_IMAGES)
    if not wants or few:
        notes = [f"from scratch: {n_train} training images, under the {PRETRAINED_MIN_IMAGES} from which the "
                 "pretrained start reads better"] if wants else []
        return {"pretrained": "off", "backbone": "plain" if cfg.backbone == "auto" else cfg.backbone}, notes
    source = pretrained.pick_source(cfg.backbone_weights)
    if source is None:
        hint = pretrained.missing_hint(cfg.backbone_weights)
        if cfg.pretrained == "on" or named:
            raise CaptchaError(hint + ("" if cfg.pretrained == "on" or weights else
                                       " (or --pretrained off for random weights)"))
        return {"pretrained": "off", "backbone": "plain"}, [f"from scratch: {hint}"]
    if source != "ddddocr":
        pretrained.backbone_weights(source)  # a bad file fails now, before the images are decoded
    if cfg.channels not in ("auto", 1, "1"):
        raise CaptchaError("--pretrained: the ddddocr backbone reads grey images; drop --channels 3")
    changes: dict[str, Any] = {"pretrained": "on", "backbone": "ddddocr", "channels": 1, "backbone_weights": source}
    if cfg.height == "auto":
        changes["height"] = pretrained.native_height(source)  # what the backbone was trained at
    if cfg.preset == "auto":
        changes["preset"] = "pretrained"
    why = (PRETRAINED_WHY if source == "ddddocr" else "named by --backbone-weights" if weights
           else "the project's own, as ddddocr is not installed")
    return changes, [f"pretrained start from the {source} backbone ({why}), grey, height "
                     f"{changes.get('height', cfg.height)}"]


def resolve(cfg: TrainConfig, samples: list[Sample]) -> tuple[TrainConfig, list[str]]:
    """Replace every "auto" field of cfg by a choice made from the training samples; say why."""
    changes, notes = resolve_start(cfg, len(samples))
    cfg = replace(cfg, **changes)
    images = sample_images(samples) if "auto" in (cfg.channels, cfg.crop) else []  # opened once for both
    if cfg.channels == "auto":
        share = colour_share(images)
        changes["channels"] = 3 if share > COLOUR_PIXELS else 1
        notes.append(f"{'colour' if changes['channels'] == 3 else 'grey'} ({share:.1%} coloured pixels)")
    if cfg.crop == "auto":
        share, n_sizes = text_share(images)  # one image size: a fixed layout, kept as it is
        changes["crop"] = share < CROP_BELOW and n_sizes > 1
        notes.append(f"{'crop to the text' if changes['crop'] else 'no crop'} (text box {share:.0%} of the image, "
                     f"{n_sizes} image size{'s' if n_sizes > 1 else ''})")
    if cfg.preset == "auto":
        changes["preset"] = "base" if len(samples) >= BIG_DATA else "small"
        notes.append(f"model {changes['preset']} ({len(samples)} training images)")
    if cfg.augment == "auto":
        changes["augment"] = 1.0 if len(samples) < SMALL_DATA else 0.5
        notes.append(f"augmentation {changes['augment']}")
    return replace(cfg, **changes), notes
