"""Semi-supervised training inside the loop: FixMatch for CTC (Sohn et al. 2020; GeeSolver, 3E-Solver).

Every step also draws a batch of unlabelled images. The reader that leads on the held-out labels reads
each one's weak view (the image as it is): the run's own weight average (EMA), or fixed readings made
once before the run by a stronger reader (ddddocr's zero-shot model where it reads the held-out labels
well; the pretrained teacher for the small student). A reading that clears the rule (FlexThresholds, the
default: each character against its class's threshold; or "fixed": the reading's confidence against
THRESHOLD), with a length the labels have and room for it in the image, becomes the CTC target of the
image's strong view (data/augment.py: strong_augment); the rest add nothing. The unlabelled loss, averaged over
the whole unlabelled batch (so it grows with the share of readings used), ramps in over the first RAMP of the
schedule. The EMA takes over from fixed readings once it reads more held-out images right.

Per epoch the history records the share of unlabelled images drawn whose readings were used, which
reader gave them, and how right the same rule is on the held-out labels read as if unlabelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.alphabet import Alphabet
from ..data.augment import strong_augment
from ..data.dataset import ImageSet, bucketed_order
from ..data.images import time_steps
from ..decode.ctc import greedy_decode_batch
from ..errors import CaptchaError
from ..evaluate import fold as fold_case
from ..progress import log
from .policy import RAMP, THRESHOLD, UNLABELLED_WEIGHT
from .sets import ctc_targets, ink_tensor, min_frames

OWN = "own EMA"  # the name of the run's own reader in logs and history


def epoch_note(rec: dict[str, Any]) -> str:
    """The epoch line's unlabelled part: share used, by whom, and how right the rule is on the held-out labels."""
    if "unlabelled_used" not in rec:
        return ""
    right = rec["unlabelled_val_right"]
    return (f"  unlabelled {rec['unlabelled_used']:.0%} used ({rec['unlabelled_reader']}; held out "
            f"{rec['unlabelled_val_clear']:.0%} clear, {'-' if right is None else f'{right:.0%}'} right)")


class FlexThresholds:
    """FlexMatch's per-class thresholds (Zhang et al. 2021) for CTC readings: a character class that few of the
    pool's latest readings hold with confidence above THRESHOLD is learning slowly, and its threshold is
    lowered: T(c) = THRESHOLD * b(c) / (2 - b(c)), b(c) = sigma(c) / max(max sigma, characters not yet read
    confidently), sigma(c) = confident characters c among the latest reading of each pool image. A reading
    is a target when each of its characters clears its class's threshold."""

    def __init__(self, n_images: int, n_classes: int, mean_length: float):
        self.latest: list[list[int]] = [[] for _ in range(n_images)]
        self.sigma = np.zeros(n_classes)
        self.total = n_images * mean_length  # characters in the pool, about

    def update(self, i: int, chars: list[int], confs: list[float]) -> None:
        self.update_chars(i, [c for c, p in zip(chars, confs) if p > THRESHOLD])

    def update_chars(self, i: int, confident: list[int]) -> None:
        """Image i's latest confidently read characters are `confident`."""
        for c in self.latest[i]:
            self.sigma[c] -= 1
        self.latest[i] = list(confident)
        for c in self.latest[i]:
            self.sigma[c] += 1

    def thresholds(self) -> np.ndarray:
        unread = max(0.0, self.total - self.sigma.sum())
        b = self.sigma / max(self.sigma.max(), unread, 1.0)
        return THRESHOLD * b / (2 - b)

    def clear(self, chars: list[int], confs: list[float]) -> bool:
        t = self.thresholds()
        return all(p >= t[c] for c, p in zip(chars, confs))


@dataclass
class Readings:
    """A fixed reader's readings of the unlabelled images (aligned with the pool) and of the held-out ones."""

    source: str  # "ddddocr" or the teacher's model file
    texts: list[str]
    confs: list[float]
    val_texts: list[str]
    val_confs: list[float]
    val_accuracy: float  # share of the held-out labels it reads right
    char_confs: list[list[float]] | None = None  # per character of each pool reading (the flex rule's input)


def read_with(reader: Any, source: str, pool: Sequence[str], val: Sequence[str], val_labels: Sequence[str],
              fold: Callable[[str], str]) -> Readings:
    """Read the pool and the held-out images with any Reader (a Recognizer, the ddddocr reader); an image it
    cannot read gets an empty reading (never a target)."""

    def read(paths: Sequence[str]) -> tuple[list[str], list[float], list[list[float]]]:
        texts, confs, chars = [], [], []
        for p in reader.predict(list(paths), errors="return"):
            ok = not isinstance(p, CaptchaError)
            texts.append(fold(p.text) if ok else "")
            confs.append(float(p.confidence) if ok else 0.0)
            chars.append([float(c) for c in p.char_confidences] if ok else [])
        return texts, confs, chars

    vt, vc, _ = read(val)
    texts, confs, chars = read(pool) if pool else ([], [], [])
    return Readings(source, texts, confs, vt, vc, share_right(vt, val_labels), chars)


def share_right(texts: Sequence[str], labels: Sequence[str]) -> float:
    """The share of `labels` that `texts` read right."""
    return sum(t == y for t, y in zip(texts, labels)) / max(1, len(labels))


def fits(texts: Sequence[str], steps: Sequence[int], lengths: tuple[int, int]) -> list[bool]:
    """Which readings could be targets: of a length the labels have, and with the CTC steps their image gives
    (one per character and a blank between repeats)."""
    lo, hi = lengths
    return [lo <= len(t) <= hi and min_frames(t) <= n for t, n in zip(texts, steps)]


def ramp(progress: float) -> float:
    """The unlabelled loss weight at `progress` (0..1) through the schedule."""
    return UNLABELLED_WEIGHT * min(1.0, progress / RAMP) if RAMP > 0 else UNLABELLED_WEIGHT


class Semi:
    """The unlabelled pool of one run, who reads it, and what was used this epoch."""

    def __init__(self, pool: ImageSet, alphabet: Alphabet, lengths: tuple[int, int],
                 readings: Readings | None = None, rule: str = "flex"):
        self.pool, self.alphabet, self.lengths, self.readings = pool, alphabet, lengths, readings
        self.flex = FlexThresholds(len(pool), len(alphabet) + 1, sum(lengths) / 2) if rule == "flex" else None
        self.steps = time_steps(pool.widths()).tolist()
        self.own_leads = readings is None
        self.drawn = self.used = 0  # this epoch's unlabelled images drawn and used as targets
        self.always_forward = False  # distributed: every rank runs the strong forward, so DDP's collectives pair up
        self.widths = pool.widths().tolist()
        self._order: tuple[int, list[int]] = (-1, [])

    @property
    def reader(self) -> str:
        return OWN if self.own_leads or self.readings is None else self.readings.source

    def draw(self, seed: int, batch: int, size: int) -> list[int]:
        """Batch `batch` of the epoch's pool order (a permutation seeded by `seed`, batches of similar widths
        as for the labelled images, cycled)."""
        if self._order[0] != seed:
            perm = torch.randperm(len(self.pool), generator=torch.Generator().manual_seed(seed)).tolist()
            self._order = (seed, bucketed_order(perm, self.widths, size, seed))
        order = self._order[1]
        return [order[(k + batch * size) % len(order)] for k in range(size)]

    def fetch(self, idx: list[int]) -> tuple[torch.Tensor, np.ndarray]:
        """Ink (B, C, H, W) and widths of pool images idx (the loader thread calls this)."""
        return ink_tensor(self.pool, idx)

    @torch.no_grad()
    def targets(self, reader: torch.nn.Module, x: torch.Tensor, widths: np.ndarray, idx: list[int],
                bf16: bool) -> tuple[list[int], list[str]]:
        """(positions in the batch, readings) of the images whose weak-view reading clears the rule."""
        steps = [self.steps[i] for i in idx]
        if self.own_leads or self.readings is None:
            was = reader.training
            reader.eval()
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
                logp = reader(x)  # (B, T, classes)
            reader.train(was)
            dec = greedy_decode_batch(logp.float().cpu().numpy(), steps)
            texts = [self.alphabet.decode(d.indices) for d in dec]
            confs = [d.confidence for d in dec]
            chars = [(d.indices, d.char_confidences) for d in dec]
        else:
            texts = [self.readings.texts[i] for i in idx]
            confs = [self.readings.confs[i] for i in idx]
            per_char = self.readings.char_confs  # None in readings made without them: the product per character
            chars = [([] if self.alphabet.unknown(t) else self.alphabet.encode(t),
                      per_char[i] if per_char else [c] * len(t)) for t, c, i in zip(texts, confs, idx)]
        if self.flex:  # each character against its class's threshold instead of the product against THRESHOLD
            for i, (c, cc) in zip(idx, chars):
                self.flex.update(i, c, cc)
            passes = [self.flex.clear(c, cc) for c, cc in chars]
        else:
            passes = [c >= THRESHOLD for c in confs]
        keep = [p and f and not self.alphabet.unknown(t)
                for p, f, t in zip(passes, fits(texts, steps, self.lengths), texts)]
        pos = [k for k, ok in enumerate(keep) if ok]
        return pos, [texts[k] for k in pos]

    def loss(self, net: torch.nn.Module, reader: torch.nn.Module, x: torch.Tensor, widths: np.ndarray,
             idx: list[int], gen: torch.Generator, bf16: bool, memory_format: torch.memory_format) -> torch.Tensor:
        """The unlabelled CTC loss of one batch: the strong views of the images whose readings clear the rule
        against those readings, summed per image (per character) and divided by the whole batch."""
        pos, texts = self.targets(reader, x, widths, idx, bf16)
        self.drawn += len(idx)
        self.used += len(pos)
        if not pos:
            if not self.always_forward:
                return torch.zeros((), device=x.device)
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
                return net(x[:1].contiguous(memory_format=memory_format)).float().sum() * 0.0
        xs = strong_augment(x[pos], gen).contiguous(memory_format=memory_format)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logp = net(xs)  # (B', T, classes)
        targets, target_lens = ctc_targets(texts, self.alphabet)
        in_lens = torch.tensor([min(self.steps[idx[k]], logp.shape[1]) for k in pos], dtype=torch.long)
        nll = F.ctc_loss(logp.float().transpose(0, 1), targets, in_lens, target_lens, blank=0,
                         reduction="none", zero_infinity=True)  # (B',)
        return (nll / target_lens.to(nll.device)).sum() / len(idx)

    def first_lead(self, own_accuracy: float) -> None:
        """Before the first step: the fixed readings teach only where they read more held-out labels right than
        the model's own start does (a teacher that reads none of them teaches nothing)."""
        if self.readings is not None and own_accuracy >= self.readings.val_accuracy:
            self.own_leads = True
            log(f"unlabelled: the {OWN} reads {own_accuracy:.1%} of the held-out labels from the start, "
                f"{self.readings.source} {self.readings.val_accuracy:.1%}: it reads the pool from the start")

    def takes_over(self, own_accuracy: float) -> bool:
        """Whether the run's own EMA, reading `own_accuracy` of the held-out labels, now leads the fixed readings."""
        return self.readings is not None and not self.own_leads and own_accuracy > self.readings.val_accuracy

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to read on as this one would: who leads, the flex rule's latest confident
        characters per pool image (plain values, for the checkpoint)."""
        return {"own_leads": self.own_leads, "latest": self.flex.latest if self.flex else None}

    def resume(self, state: dict[str, Any] | None, val_accuracies: Sequence[float]) -> None:
        """Continue from a checkpoint's state(); from a checkpoint without one, the EMA leads if any earlier
        epoch made it take over."""
        if not state:
            self.own_leads = self.own_leads or any(self.takes_over(a) for a in val_accuracies)
            return
        self.own_leads = bool(state["own_leads"])
        if self.flex and state.get("latest") is not None and len(state["latest"]) == len(self.flex.latest):
            for i, chars in enumerate(state["latest"]):
                self.flex.update_chars(i, chars)

    def end_epoch(self, val_labels: Sequence[str], own_preds: Sequence[str], own_confs: Sequence[float],
                  own_accuracy: float, val_steps: Sequence[int]) -> dict[str, Any]:
        """The epoch's figures for the history, and who reads next epoch: the EMA once it reads more held-out
        labels right than the fixed readings do."""
        if self.takes_over(own_accuracy):
            assert self.readings is not None
            self.own_leads = True
            log(f"unlabelled: the {OWN} reads {own_accuracy:.1%} of the held-out labels, "
                f"{self.readings.source} {self.readings.val_accuracy:.1%}: it reads the pool from now on")
        if self.own_leads or self.readings is None:
            texts, confs = list(own_preds), list(own_confs)
        else:
            texts, confs = self.readings.val_texts, self.readings.val_confs
        if self.flex:  # each character taken at the reading's geometric-mean confidence (per-character ones unkept)
            passes = [bool(t) and not self.alphabet.unknown(t)
                      and self.flex.clear(self.alphabet.encode(t), [c ** (1 / len(t))] * len(t))
                      for t, c in zip(texts, confs)]
        else:
            passes = [c >= THRESHOLD for c in confs]
        clear = [p and f for p, f in zip(passes, fits(texts, val_steps, self.lengths))]
        right = [ok and t == y for ok, t, y in zip(clear, texts, val_labels)]
        n_clear = sum(clear)
        rec = {"unlabelled_reader": self.reader, "unlabelled_used": self.used / self.drawn if self.drawn else 0.0,
               "unlabelled_val_clear": n_clear / max(1, len(val_labels)),
               "unlabelled_val_right": sum(right) / n_clear if n_clear else None}
        self.drawn = self.used = 0
        return rec

    def describe(self) -> str:
        seeded = ""
        if self.readings is not None:
            seeded = (f"; first read by {self.readings.source} ({self.readings.val_accuracy:.1%} of the held-out "
                      f"labels), then by the {OWN} once it reads more")
        rule = (f"characters clearing their class's threshold (up to {THRESHOLD:g})" if self.flex
                else f"confidence >= {THRESHOLD:g}")
        return (f"unlabelled: {len(self.pool)} images; each step's readings with {rule} "
                f"teach their strong view, weight ramping to {UNLABELLED_WEIGHT:g} over {RAMP:.0%} of the run{seeded}")


def build_semi(cfg: Any, stage: Any, plan: Any, data: Any, d: Any = None) -> Semi | None:
    """The stage's unlabelled pool (the plan's, or on --resume its list file) decoded at the stage's input, and the
    fixed readings that teach first (stage.first_reader); None where there are no unlabelled images."""
    from ..data.labels import Sample
    from .sets import expand_lists, load_set

    paths = list(plan.pool) or expand_lists(list(cfg.unlabelled))
    if not paths:
        return None
    pool = load_set([Sample(p, "") for p in paths], data.pre, cfg, "unlabelled", d)  # one decoder per machine
    if len(pool) < len(paths):
        log(f"warning: {len(paths) - len(pool)} unlabelled images could not be read and were skipped")
    if not len(pool):
        return None
    labels = list(data.train.labels) + list(data.val.labels)
    lengths = (min(map(len, labels)), max(map(len, labels)))
    return Semi(pool, data.alphabet, lengths, first_readings(cfg, stage.first_reader, plan.probe, data, pool.paths),
                cfg.semi_rule)


def first_readings(cfg: Any, reader: str | None, probe: Any, data: Any, pool: list[str]) -> Readings | None:
    """The fixed readings that teach before the stage's own EMA leads: ddddocr's zero-shot model limited to the
    alphabet (its readings of the held-out images from the plan's probe), or a model file's; None for none."""
    if reader is None:
        return None
    fold = partial(fold_case, case_insensitive=cfg.case == "insensitive")
    val, val_labels = list(data.val.paths), list(data.val.labels)
    if reader == "ddddocr":  # its readings of the held-out images are the plan's probe's, where it has them
        from ..infer.ddddocr_reader import DdddocrReader

        probed = {str(Path(p).resolve()): tc for p, tc in zip(probe.paths, zip(probe.texts, probe.confs))} \
            if probe else {}
        known = [probed.get(str(Path(p).resolve())) for p in val]
        again = None in known
        r = read_with(DdddocrReader(data.alphabet.chars, threads=cfg.threads), reader, pool, val if again else [],
                      val_labels, fold)
        if not again:
            r.val_texts, r.val_confs = [k[0] for k in known], [k[1] for k in known]  # type: ignore[index]
            r.val_accuracy = share_right(r.val_texts, val_labels)
        return r
    from ..infer.recognizer import Recognizer

    return read_with(Recognizer.load(reader, threads=cfg.threads), reader, pool, val, val_labels, fold)
