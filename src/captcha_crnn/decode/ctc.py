"""CTC decoding: greedy and prefix beam search, with length and charset constraints inside the search.

Inputs are log-probabilities of shape (T, C) per image (class 0 = blank). Confidences are
probabilities in [0, 1]: per character the highest frame probability of that character on the
decoded path, and for the whole string the product of those.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CaptchaError
from .limits import MAX_BEAM, MAX_LENGTH

NEG = -1e30


@dataclass
class Decoded:
    """A decoded string as class indices with per-character confidences."""

    indices: list[int]
    char_confidences: list[float] = field(default_factory=list)
    confidence: float = 1.0


def _as_numpy(logp: Any) -> np.ndarray:
    if hasattr(logp, "detach"):
        logp = logp.detach().float().cpu().numpy()
    return np.asarray(logp, dtype=np.float32)


def allowed_mask(num_classes: int, allowed: Sequence[int] | None) -> np.ndarray | None:
    """Boolean (C,) mask of classes the search may emit (blank always allowed)."""
    if allowed is None:
        return None
    mask = np.zeros(num_classes, dtype=bool)
    mask[0] = True
    mask[list(allowed)] = True
    return mask


def greedy_decode(logp: Any, mask: np.ndarray | None = None) -> Decoded:
    """Best path: argmax per frame, collapse repeats, drop blanks. (T, C) -> Decoded."""
    lp = _as_numpy(logp)
    if mask is not None:
        lp = np.where(mask[None, :], lp, NEG)
    best = lp.argmax(1)  # (T,)
    probs = np.exp(lp[np.arange(len(best)), best])
    indices, confs = [], []
    prev = 0
    for k, p in zip(best.tolist(), probs.tolist()):
        if k != 0 and k != prev:
            indices.append(k)
            confs.append(p)
        elif k != 0 and k == prev:
            confs[-1] = max(confs[-1], p)
        prev = k
    return Decoded(indices, confs, float(np.prod(confs)) if confs else float(probs.prod()))


def greedy_decode_batch(
    logp: Any, lengths: Sequence[int] | None = None, mask: np.ndarray | None = None
) -> list[Decoded]:
    """Best path for a whole batch (B, T, C) at once: one argmax, collapse and confidences in numpy.

    Gives what greedy_decode gives on each item's first lengths[i] frames.
    """
    lp = _as_numpy(logp)
    b, t, _ = lp.shape
    if b == 0:
        return []
    if mask is not None:
        lp = np.where(mask[None, None, :], lp, NEG)
    best = lp.argmax(-1)  # (B, T)
    probs = np.exp(np.take_along_axis(lp, best[..., None], -1)[..., 0])  # (B, T) float32
    lens = np.full(b, t) if lengths is None else np.minimum(np.asarray(lengths, dtype=np.int64), t)
    valid = np.arange(t)[None, :] < lens[:, None]
    prev = np.concatenate([np.zeros((b, 1), best.dtype), best[:, :-1]], axis=1)
    ink = (best != 0) & valid  # frames on a character (a repeat continues the character before)
    start = ink & (best != prev)  # frames starting a new character
    counts = start.sum(1).tolist()
    chars = best[start].tolist()  # row-major: every row's characters in order
    confs: list[float] = []
    if chars:
        ink_probs = probs[ink].astype(np.float64)
        first = np.flatnonzero(start[ink])  # where each character's run starts among ink frames
        confs = np.maximum.reduceat(ink_probs, first).tolist()
    out, k = [], 0
    for i, n in enumerate(counts):
        cc = confs[k : k + n]
        conf = float(np.prod(cc)) if n else float(probs[i, : lens[i]].prod())
        out.append(Decoded(chars[k : k + n], cc, conf))
        k += n
    return out


def _logadd(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b <= NEG:
        return a
    return a + math.log1p(math.exp(b - a))


def _extend(
    beams: dict[tuple[int, ...], list], row: np.ndarray, cands: list[int], length: int | None
) -> dict[tuple[int, ...], list]:
    """One frame of the prefix beam search: each prefix kept (blank, repeated last char) or grown by a candidate."""
    nxt: dict[tuple[int, ...], list] = {}

    def add(p: tuple[int, ...], which: int, logp: float, confs: list[float]) -> None:
        if logp <= NEG / 2:  # impossible path (e.g. a repeat with no blank between)
            return
        e = nxt.get(p)
        if e is None:
            e = nxt[p] = [NEG, NEG, confs, logp]
        e[which] = _logadd(e[which], logp)
        if logp > e[3]:  # confidences follow the most probable alignment
            e[2], e[3] = confs, logp

    for prefix, (pb, pnb, confs, _) in beams.items():
        total = _logadd(pb, pnb)
        add(prefix, 0, total + row[0], confs)  # a blank keeps the prefix
        if prefix and pnb > NEG / 2:  # the last char again, without a blank between
            last = prefix[-1]
            add(prefix, 1, pnb + row[last], confs[:-1] + [max(confs[-1], math.exp(row[last]))])
        for c in cands:
            new = prefix + (c,)
            if length is not None and len(new) > length:
                continue
            p_new = (pb if prefix and prefix[-1] == c else total) + row[c]
            add(new, 1, p_new, confs + [math.exp(row[c])])
    return nxt


def beam_decode(
    logp: Any,
    beam: int = 8,
    length: int | None = None,
    mask: np.ndarray | None = None,
    prune: float = -12.0,
) -> Decoded:
    """CTC prefix beam search over (T, C) log-probabilities.

    length: only strings of exactly this many characters (prefixes that grow past it, or can no
    longer reach it in the frames left, leave the beam). mask: classes allowed (blank included).
    The confidence is the probability of the string summed over all its alignments.
    """
    lp = _as_numpy(logp)
    t_max, n_cls = lp.shape
    if mask is not None:
        lp = np.where(mask[None, :], lp, NEG)
    # prefix -> [log p ending in blank, log p ending in non-blank, char confidences, best path]
    beams: dict[tuple[int, ...], list] = {(): [0.0, NEG, [], 0.0]}
    for t in range(t_max):
        row = lp[t]
        floor = NEG / 2 if length is not None else prune  # a length constraint may need unlikely chars
        cands = [c for c in range(1, n_cls) if row[c] > floor]
        if not cands:
            cands = [int(row[1:].argmax()) + 1]
        nxt = _extend(beams, row, cands, length)
        left = t_max - t - 1  # frames after this one
        if length is not None:  # prefixes that can no longer reach the length
            feasible = {p: v for p, v in nxt.items() if length - len(p) <= left}
            if feasible:
                nxt = feasible
            else:  # the length cannot be reached in these frames: search unconstrained
                length = None
        ranked = sorted(nxt.items(), key=lambda kv: _logadd(kv[1][0], kv[1][1]), reverse=True)
        beams = dict(ranked[:beam]) if ranked else beams
    final = [(p, v) for p, v in beams.items() if length is None or len(p) == length]
    if not final:  # constraint unreachable: fall back to the best unconstrained beam
        final = list(beams.items())
    prefix, (pb, pnb, confs, _) = max(final, key=lambda kv: _logadd(kv[1][0], kv[1][1]))
    return Decoded(list(prefix), [float(c) for c in confs], float(math.exp(_logadd(pb, pnb))))


def check_options(beam: Any, length: Any) -> None:
    """CaptchaError unless beam is 1 to MAX_BEAM and length None or 1 to MAX_LENGTH (whole numbers)."""
    for name, v, hi in (("beam", beam, MAX_BEAM), ("length", length, MAX_LENGTH)):
        if v is None and name == "length":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= hi:
            raise CaptchaError(f"{name} must be a whole number from 1 to {hi}, got {v!r}")


def decode_batch(
    logp: Any,
    lengths: Sequence[int] | None = None,
    beam: int = 1,
    length: int | None = None,
    allowed: Sequence[int] | None = None,
) -> list[Decoded]:
    """Decode a batch (B, T, C) of log-probabilities; lengths gives valid frames per item.

    A beam or length outside decode/limits.py is a CaptchaError (they come from users' options).
    """
    check_options(beam, length)
    lp = _as_numpy(logp)
    b, t, c = lp.shape
    mask = allowed_mask(c, allowed)
    lens = [t] * b if lengths is None else [int(x) for x in lengths]
    if beam <= 1 and length is None:
        return greedy_decode_batch(lp, lens, mask=mask)
    k = max(beam, 8) if length is not None else beam
    return [beam_decode(lp[i, : lens[i]], beam=k, length=length, mask=mask) for i in range(b)]
