"""`captcha-crnn pretrain`: the project's own captcha-pretrained backbone, so the pretrained start
needs no outside file.

Generates a broad synthetic set once (data/mixed.py: `synth --style mixed`), trains the ddddocr
layout with batch norm on it (model/backbones.py: ddddocr_bn) for as long as it is given, and
writes the backbone with every batch norm folded into its convolutions: a drop-in for the ddddocr
weights (`train --backbone-weights FILE`). Killed runs continue with `--resume` (the training
checkpoint); the synthetic set is reused once complete.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CaptchaError
from ..files import atomic_write
from ..model.archs import PRETRAIN, PRETRAINED
from .config import TrainConfig

CHARSET = string.digits + string.ascii_lowercase + string.ascii_uppercase
BACKBONE_FILE = "backbone.safetensors"
DONE = ".complete"  # marks a fully written synthetic set


@dataclass
class PretrainConfig:
    """What `pretrain` generates and how long it trains."""

    out: str = "runs/pretrain"
    count: int = 60_000  # synthetic images, generated once
    charset: str = CHARSET
    lengths: tuple[int, int] = (3, 8)
    height: int = 32  # input height: a quarter of the cost of ddddocr's 64 per image, to train and to read
    max_minutes: float | None = None  # the schedule fits into it; counted across resumed runs
    epochs: int = 30
    batch_size: int = 32
    seed: int = 0
    workers: int = 2
    threads: int | None = None
    resume: bool = False
    progress: bool = True


def _settings(cfg: PretrainConfig) -> dict[str, Any]:
    return {"count": cfg.count, "charset": cfg.charset, "lengths": list(cfg.lengths), "seed": cfg.seed}


def _marked(folder: Path) -> dict[str, Any] | None:
    """The settings of the complete set in `folder`, or None (none, or an unreadable marker)."""
    try:
        got = json.loads((folder / DONE).read_text())
    except (OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None


def synthetic_set(cfg: PretrainConfig) -> Path:
    """The mixed-style set under OUT/data, generated unless a complete one with these settings is there
    (a set of other settings, or a half-written one, is removed first)."""
    from ..data.synth import synthesize

    folder = Path(cfg.out) / "data"
    if _marked(folder) == _settings(cfg):
        return folder
    (folder / DONE).unlink(missing_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    print(f"generating {cfg.count} mixed-style captchas into {folder} (once) ...")
    synthesize(folder, cfg.count, cfg.charset, cfg.lengths, seed=cfg.seed, workers=cfg.workers,
               progress=cfg.progress, style="mixed")
    atomic_write(folder / DONE, lambda f: f.write(json.dumps(_settings(cfg)).encode()))
    return folder


def train_config(cfg: PretrainConfig) -> TrainConfig:
    """The training run: ddddocr layout with batch norm, random weights, grey at cfg.height."""
    out = Path(cfg.out) / "model"
    return TrainConfig(out=str(out), backbone=PRETRAIN.backbone, preset=PRETRAINED.name, pretrained="off",
                       init="none", channels=PRETRAIN.channels, height=cfg.height, crop=False, label_sep="_",
                       val=0.02, test=0.02, epochs=cfg.epochs, patience=cfg.epochs, batch_size=cfg.batch_size,
                       seed=cfg.seed, max_minutes=cfg.max_minutes, threads=cfg.threads, progress=cfg.progress,
                       resume=cfg.resume and (out / "checkpoint.pt").is_file())


def export_backbone(model_path: str | Path, out: str | Path) -> Path:
    """Fold the trained model's batch norms and write its backbone as safetensors (DdddocrBackbone keys)."""
    from safetensors.torch import save

    from ..model.backbones import fold_batchnorm
    from ..model.modelfile import load_bundle

    b = load_bundle(model_path)
    if b.model.cfg.backbone != PRETRAIN.backbone:
        raise CaptchaError(f"{model_path}: a {b.model.cfg.backbone} model; pretrain exports {PRETRAIN.backbone} "
                           "backbones")
    state = fold_batchnorm(b.model.backbone.eval())
    test = b.info.get("metrics", {}).get("test", {})
    meta = {"source": "captcha-crnn pretrain (synth --style mixed)", "model": str(model_path),
            "height": str(b.preprocess.height), "input_norm": b.model.cfg.input_norm,
            "test_sequence_accuracy": str(test.get("sequence_accuracy", "")),
            "train_images": str(b.info.get("training", {}).get("train_images", ""))}
    data = save({k: v.contiguous() for k, v in state.items()}, metadata=meta)
    atomic_write(out, lambda f: f.write(data))
    return Path(out)


def pretrain(cfg: PretrainConfig) -> Path:
    """Generate (once), train (resumable) and export the backbone; returns OUT/backbone.safetensors."""
    from .run import train

    if cfg.count < 100:
        raise CaptchaError(f"--count {cfg.count}: pre-training needs at least 100 images")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise CaptchaError(f"--out {cfg.out}: not a folder")
    tcfg = train_config(cfg).validate()  # the height and the budget follow train's rules
    marked = _marked(Path(cfg.out) / "data")
    if tcfg.resume and marked is not None and marked != _settings(cfg):
        raise CaptchaError(f"{cfg.out}: the synthetic set's settings changed since the checkpoint "
                           f"({marked}); drop --resume to start again, or use another --out")
    if cfg.resume and not tcfg.resume:
        print(f"no checkpoint in {tcfg.out} yet: starting the training")
    data = synthetic_set(cfg)
    res = train(str(data), tcfg)
    out = export_backbone(res.model_path, Path(cfg.out) / BACKBONE_FILE)
    print(f"wrote {out} (use it with: captcha-crnn train DATA --backbone-weights {out})")
    return out
