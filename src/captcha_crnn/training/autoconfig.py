"""Automatic configuration from the training data: colour, cropping, model size and augmentation strength.

Every choice is printed before training and stored in the model file (the resolved TrainConfig);
a flag given on the command line overrides it. The input size and the CTC time resolution are
chosen in data.choose_preprocess from the image sizes and the longest label.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from ..data.images import crop_to_ink, open_image, to_mode
from ..data.labels import Sample
from ..errors import CaptchaError
from ..model.archs import BIG, SCRATCH
from .config import TrainConfig
from .start import resolve_start

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


def resolve(cfg: TrainConfig, samples: list[Sample], n_labelled: int | None = None) -> tuple[TrainConfig, list[str]]:
    """Replace every "auto" field of cfg by a choice made from the training samples (and the number of
    labelled images the user gave, which decides the start); say why."""
    changes, notes = resolve_start(cfg, len(samples) if n_labelled is None else n_labelled)
    cfg = replace(cfg, **changes)
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
        changes["augment"] = 1.0 if len(samples) < SMALL_DATA else 0.5
        notes.append(f"augmentation {changes['augment']}")
    return replace(cfg, **changes), notes
