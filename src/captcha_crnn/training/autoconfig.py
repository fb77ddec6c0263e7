"""Automatic configuration from the training data: colour, cropping, model size and augmentation strength.

training/plan.py applies every choice, prints it before training and stores it in the model file;
a flag given on the command line overrides it. The input size and the CTC time resolution are
chosen in data.choose_preprocess from the image sizes and the longest label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..data.images import crop_to_ink, open_image, to_mode
from ..data.labels import Sample
from ..errors import CaptchaError
from ..model.archs import BIG, SCRATCH
from .config import TrainConfig
from .policy import AUGMENT_BIG, AUGMENT_SMALL, BIG_DATA, COLOUR_PIXELS, CROP_BELOW, SMALL_DATA


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


def choose(cfg: TrainConfig, samples: list[Sample]) -> tuple[dict[str, Any], list[str]]:
    """A choice, made from the training samples, for each data-dependent "auto" field of cfg (colour, grey, crop,
    model size, augmentation), and why (training/plan.py applies them)."""
    changes: dict[str, Any] = {}
    notes: list[str] = []
    images = sample_images(samples) if "auto" in (cfg.channels, cfg.crop, cfg.grey) else []  # opened once for all
    share = colour_share(images) if "auto" in (cfg.channels, cfg.grey) else 0.0
    if cfg.channels == "auto":
        changes["channels"] = 3 if share > COLOUR_PIXELS else 1
        notes.append(f"{'colour' if changes['channels'] == 3 else 'grey'} ({share:.1%} coloured pixels)")
    if cfg.grey == "auto":  # the contrast grey costs reading time; it pays where colour carries the text
        changes["grey"] = "contrast" if share > COLOUR_PIXELS else "luma"
        if changes.get("channels", cfg.channels) in (1, "1"):
            notes.append(f"grey as {'contrast to the background' if changes['grey'] == 'contrast' else 'luma'}")
    if cfg.crop == "auto":
        share, n_sizes = text_share(images)  # one image size: a fixed layout, kept as it is
        changes["crop"] = share < CROP_BELOW and n_sizes > 1
        notes.append(f"{'crop to the text' if changes['crop'] else 'no crop'} (text box {share:.0%} of the image, "
                     f"{n_sizes} image size{'s' if n_sizes > 1 else ''})")
    if cfg.preset == "auto":
        changes["preset"] = BIG.name if len(samples) >= BIG_DATA else SCRATCH.name
        notes.append(f"model {changes['preset']} ({len(samples)} training images)")
    if cfg.augment == "auto":
        changes["augment"] = AUGMENT_SMALL if len(samples) < SMALL_DATA else AUGMENT_BIG
        notes.append(f"augmentation {changes['augment']}")
    return changes, notes
