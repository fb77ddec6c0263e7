"""Warm start: initialise a new CRNN from a trained one (by default the shipped `synthetic` model).

Small captcha sets (a few hundred images) spend most of a from-scratch run on the CTC blank plateau
and then over-fit. Conv and RNN weights learned on many synthetic captchas read strokes of any
style; copying them, plus the classifier rows of the characters both alphabets share, lets training
start from features that already see characters.
"""

from __future__ import annotations

import torch

from ..data.alphabet import Alphabet
from ..errors import CaptchaError
from .crnn import CRNN

ARCH_KEYS = ("backbone", "widths", "depth", "rnn", "hidden", "rnn_layers")  # what must match to copy weights
PROJECTION = "proj.0.weight"  # (hidden, C' * H/16): the one weight whose shape follows the input height


def _adapt(key: str, src: torch.Tensor, dst: torch.Tensor, channels: int) -> torch.Tensor | None:
    """src reshaped for dst: same shape, a first conv with 1 <-> 3 input channels, or the projection
    of another input height (`channels` feature maps of H/16 rows each); else None."""
    if src.shape == dst.shape:
        return src
    if key == PROJECTION and src.shape[0] == dst.shape[0]:
        return _stretch_rows(src, dst.shape[1] // channels, channels)
    if src.ndim == 4 and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:]:
        if src.shape[1] == 1 and dst.shape[1] == 3:
            return src.expand_as(dst) / 3  # grey filters applied to each colour channel
        if src.shape[1] == 3 and dst.shape[1] == 1:
            return src.sum(1, keepdim=True)
    return None


def _stretch_rows(w: torch.Tensor, rows: int, channels: int) -> torch.Tensor:
    """A projection (hidden, channels * r) over r feature rows remapped to `rows` rows: each new row
    takes the weights of the old row at its relative height, scaled so a uniform column sums the same."""
    hidden, r = w.shape[0], w.shape[1] // channels
    src = (torch.arange(rows) * r // rows).clamp(max=r - 1)  # old row under each new row
    w = w.view(hidden, channels, r)[:, :, src] * (r / rows)  # (hidden, channels, rows)
    return w.reshape(hidden, channels * rows)


def architecture_differs(a: dict, b: dict) -> list[str]:
    """The ARCH_KEYS in which two model configs (to_dict()) differ: weights copy only where there are none."""
    return [k for k in ARCH_KEYS if a[k] != b[k]]


def warm_start(model: CRNN, alphabet: Alphabet, source: str) -> str:
    """Copy matching weights from the model `source` (path or shipped name) into `model`.

    Returns a one-line description of what was copied; raises CaptchaError when `source` is unusable.
    """
    from .modelfile import load_bundle
    from .zoo import resolve_model

    src = load_bundle(resolve_model(source))
    diff = architecture_differs(src.model.cfg.to_dict(), model.cfg.to_dict())
    if diff:
        raise CaptchaError(f"{source}: architecture differs ({', '.join(diff)}), cannot start from it")
    sd, own = src.model.state_dict(), model.state_dict()
    copied = 0
    for k, v in sd.items():
        if k.startswith("head.") or k not in own:
            continue
        a = _adapt(k, v, own[k], model.backbone.out_channels)
        if a is not None:
            own[k] = a.clone()
            copied += 1
    rows = 0
    if "head.weight" in sd and sd["head.weight"].shape[1] == own["head.weight"].shape[1]:
        own["head.weight"][0], own["head.bias"][0] = sd["head.weight"][0], sd["head.bias"][0]  # blank
        for i, ch in enumerate(alphabet.chars, start=1):
            j = src.alphabet.index.get(ch, src.alphabet.index.get(ch.lower()))
            if j is not None:
                own["head.weight"][i], own["head.bias"][i] = sd["head.weight"][j], sd["head.bias"][j]
                rows += 1
    if copied == 0:
        raise CaptchaError(f"{source}: no weights match this architecture")
    model.load_state_dict(own)
    return f"{copied}/{len([k for k in own if not k.startswith('head.')])} tensors, {rows}/{len(alphabet)} characters"
