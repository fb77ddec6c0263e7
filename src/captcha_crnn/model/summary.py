"""A layer-by-layer summary of a CRNN: output shapes and parameter counts."""

from __future__ import annotations

import torch
from torch import nn

from .crnn import CRNN


def summarize(model: CRNN, width: int = 128) -> list[tuple[str, str, str, int]]:
    """Rows (name, type, output shape, parameters) for one forward pass at the given input width."""
    rows: list[tuple[str, str, str, int]] = []
    hooks = []

    def hook(name: str):
        def f(mod: nn.Module, _inp, out) -> None:
            t = out[0] if isinstance(out, tuple) else out
            n = sum(p.numel() for p in mod.parameters(recurse=False))
            if isinstance(mod, (nn.GRU, nn.LSTM)):
                n = sum(p.numel() for p in mod.parameters())
            rows.append((name, type(mod).__name__, str(tuple(t.shape)), n))
        return f

    for name, mod in model.named_modules():
        leaf = not list(mod.children()) or isinstance(mod, (nn.GRU, nn.LSTM))
        inside_rnn = any(name.startswith(p + ".") for p in ("rnn",))
        if leaf and name and not inside_rnn:
            hooks.append(mod.register_forward_hook(hook(name)))
    cfg = model.cfg
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, cfg.in_channels, cfg.height, width))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def format_summary(model: CRNN, width: int = 128) -> str:
    """The summary as an aligned text table."""
    rows = summarize(model, width)
    out = [f"{'layer':<28} {'type':<14} {'output shape':<20} {'params':>9}"]
    out += [f"{n:<28} {t:<14} {s:<20} {p:>9,}" for n, t, s, p in rows]
    total = sum(p.numel() for p in model.parameters())
    out.append(f"{'total':<28} {'':<14} {'':<20} {total:>9,}")
    return "\n".join(out)
