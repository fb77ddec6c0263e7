"""What a run starts from: the device, the model and its initial weights, the optimiser."""

from __future__ import annotations

import torch

from ..data.alphabet import Alphabet
from ..errors import CaptchaError
from ..model.archs import SCRATCH, input_norm
from ..model.crnn import CRNN, preset
from .config import TrainConfig
from .data import Data


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CaptchaError("--device cuda: no CUDA device is available")
    return name


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU features that make bf16 matrix products native


def cpu_bf16_flag() -> str | None:
    """The CPU feature (from /proc/cpuinfo) that computes bf16 natively, or None (or not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def pick_precision(name: str, device: str) -> tuple[str, str]:
    """("bf16" or "fp32", why) for the --precision setting on `device`."""
    if name != "auto":
        return name, "asked for"
    if device.startswith("cuda"):
        ok = torch.cuda.is_bf16_supported()
        return ("bf16", "the GPU supports it") if ok else ("fp32", "the GPU has no bf16")
    flag = cpu_bf16_flag()
    return ("bf16", f"the CPU has {flag}") if flag else ("fp32", "the CPU has no native bf16")


def init_weights(model: CRNN, alphabet: Alphabet, init: str | None, pretrained: str = "off",
                 source: str = "ddddocr", head: str = "new") -> str:
    """Initialise `model`: from the `init` model when one is named, else from the pretrained backbone
    of `source` (`pretrained` "on"; with `head` "ddddocr" ddddocr's RNN and classifier too), else from the
    shipped synthetic model (init "auto") when present; describe what happened."""
    from ..model.zoo import zoo_path
    from .pretrained_weights import load_pretrained
    from .warmstart import warm_start

    if init not in (None, "", "none", "auto"):
        return f"warm start from {init}: " + warm_start(model, alphabet, init)
    if pretrained == "on" and head == "ddddocr":
        from .reader_head import load_reader_head

        return f"pretrained {load_pretrained(model, source)}; {load_reader_head(model, alphabet)}"
    if pretrained == "on":
        return "pretrained " + load_pretrained(model, source) + "; new RNN and head"
    if init in (None, "", "none"):
        return "random (from scratch)"
    shipped = SCRATCH.weights  # the shipped model of the from-scratch sizes: "synthetic"
    if shipped is None or zoo_path(shipped) is None:
        return f"random (from scratch; no shipped {shipped} model to start from)"
    try:
        return f"warm start from {shipped}: " + warm_start(model, alphabet, shipped)
    except CaptchaError as e:
        return f"random (from scratch; {e})"


def build_model(cfg: TrainConfig, data: Data, warm: bool) -> tuple[CRNN, str]:
    """The CRNN for this data, initialised when `warm` (not when resuming); with a description of its init."""
    mcfg = preset(cfg.preset, num_classes=data.alphabet.num_classes, in_channels=data.pre.channels,
                  height=data.pre.height, backbone=cfg.backbone, rnn=cfg.rnn, dropout=cfg.dropout,
                  input_norm=input_norm(cfg.backbone))
    model = CRNN(mcfg)
    if not warm:
        return model, "from the checkpoint"
    return model, init_weights(model, data.alphabet, cfg.init, cfg.pretrained, cfg.backbone_weights,
                               cfg.pretrained_head)


def make_optimizer(model: CRNN, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices and kernels only (not on biases and norms). A pretrained
    backbone gets groups of its own, at cfg.backbone_lr times the learning rate (`lr_scale`)."""
    parts = [(list(model.parameters()), 1.0, False)]
    if cfg.pretrained == "on":
        mine = {id(p) for p in model.backbone.parameters()}
        parts = [(list(model.backbone.parameters()), cfg.backbone_lr, True),
                 ([p for p in model.parameters() if id(p) not in mine], 1.0, False)]
    groups = []
    for params, scale, backbone in parts:
        for decay in (True, False):
            groups.append({"params": [p for p in params if (p.ndim > 1) == decay], "lr_scale": scale,
                           "weight_decay": cfg.weight_decay if decay else 0.0, "backbone": backbone})
    return torch.optim.AdamW(groups, lr=cfg.lr)


