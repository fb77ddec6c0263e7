"""Semi-supervised training inside the loop: FixMatch for CTC (Sohn et al. 2020; GeeSolver, 3E-Solver).

Every step also draws a batch of unlabelled images. The reader that leads on the held-out labels reads
each one's weak view (the image as it is): the run's own weight average (EMA), or fixed readings made
once before the run by a stronger reader (ddddocr's zero-shot model where it reads the held-out labels
well; the pretrained teacher for the small student). A reading that clears the rule (FlexThresholds, the
default: each character against its class's threshold; or "fixed": the reading's confidence against
THRESHOLD), with a length the labels have and room for it in the image, becomes the CTC target of the
image's strong view
(data/augment.py: strong_augment); the rest add nothing. The unlabelled loss, averaged over the whole
unlabelled batch (so it grows with the share of readings used), ramps in over the first RAMP of the
schedule. The EMA takes over from fixed readings once it reads more held-out images right.

Per epoch the history records the share of unlabelled images drawn whose readings were used, which
reader gave them, and how right the same rule is on the held-out labels read as if unlabelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from .data import ink_tensor
from .log import log
from .policy import PRECISION, RAMP, THRESHOLD, WEIGHT, ZERO_SHOT_MIN

OWN = "own EMA"  # the name of the run's own reader in logs and history


def epoch_note(rec: dict[str, Any]) -> str:
    """The epoch line's unlabelled part: share used, by whom, and how right the rule is on the held-out labels."""
    if "unlabelled_used" not in rec:
        return ""
    right = rec["unlabelled_val_right"]
    return (f"  unlabelled {rec['unlabelled_used']:.0%} used ({rec['unlabelled_reader']}; held out "
            f"{rec['unlabelled_val_clear']:.0%} clear, {'-' if right is None else f'{right:.0%}'} right"
            + (f"; floor {rec['unlabelled_floor']:.2f}" if "unlabelled_floor" in rec else "") + ")")


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
    acc = sum(t == y for t, y in zip(vt, val_labels)) / max(1, len(val_labels))
    texts, confs, chars = read(pool) if pool else ([], [], [])
    return Readings(source, texts, confs, vt, vc, acc, chars)


def rule_check(texts: Sequence[str], confs: Sequence[float], steps: Sequence[int], lengths: tuple[int, int],
               threshold: float = THRESHOLD) -> list[bool]:
    """Which readings become targets: confident, of a length the labels have, and with the CTC steps
    their image gives (one per character and a blank between repeats)."""
    lo, hi = lengths
    ok = []
    for t, c, n in zip(texts, confs, steps):
        need = len(t) + sum(a == b for a, b in zip(t, t[1:]))
        ok.append(c >= threshold and lo <= len(t) <= hi and need <= n)
    return ok


NOTHING = 1.01  # a confidence floor no reading clears


def precision_floor(texts: Sequence[str], confs: Sequence[float], labels: Sequence[str]) -> float:
    """The lowest confidence at which the readings of the held-out labels at or above it are PRECISION right,
    counted as right / (n + 1) so that a handful of lucky readings does not open the pool; NOTHING if none."""
    order = sorted(zip(confs, texts, labels), key=lambda r: -r[0])
    floor, right = NOTHING, 0
    for n, (c, t, y) in enumerate(order, 1):
        right += t == y
        if right / (n + 1) >= PRECISION:
            floor = c
    return floor


def ramp(progress: float) -> float:
    """The unlabelled loss weight at `progress` (0..1) through the schedule."""
    return WEIGHT * min(1.0, progress / RAMP) if RAMP > 0 else WEIGHT


class Semi:
    """The unlabelled pool of one run, who reads it, and what was used this epoch."""

    def __init__(self, pool: ImageSet, alphabet: Alphabet, lengths: tuple[int, int],
                 readings: Readings | None = None, rule: str = "flex", val_labels: Sequence[str] = ()):
        self.pool, self.alphabet, self.lengths, self.readings = pool, alphabet, lengths, readings
        self.flex = FlexThresholds(len(pool), len(alphabet) + 1, sum(lengths) / 2) if rule != "fixed" else None
        self.rule = rule  # calibrated, rising: flex and a confidence floor, set on the held-out labels or by progress
        self.floor = 0.0
        if rule == "calibrated":  # the fixed readings' floor now; the run's own from its first validation
            self.floor = precision_floor(readings.val_texts, readings.val_confs, val_labels) if readings else NOTHING
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
            confs = [self.flex_conf(c, cc, s, self.floor) for s, (c, cc) in zip(confs, chars)]
        keep = rule_check(texts, confs, steps, self.lengths)
        keep = [k and not self.alphabet.unknown(t) for k, t in zip(keep, texts)]
        pos = [k for k, ok in enumerate(keep) if ok]
        return pos, [texts[k] for k in pos]

    def flex_conf(self, chars: list[int], char_confs: list[float], conf: float, floor: float) -> float:
        """The flex rule as a confidence for rule_check: 1 where every character clears its class's threshold
        and the reading's confidence `conf` reaches `floor`, else 0."""
        assert self.flex is not None
        return 1.0 if conf >= floor and self.flex.clear(chars, char_confs) else 0.0

    def loss(self, net: torch.nn.Module, reader: torch.nn.Module, x: torch.Tensor, widths: np.ndarray,
             idx: list[int], gen: torch.Generator, bf16: bool, memory_format: torch.memory_format) -> torch.Tensor:
        """The unlabelled CTC loss of one batch: the strong views of the images whose readings clear the rule
        against those readings, summed per image (per character) and divided by the whole batch."""
        from .data import ctc_targets

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

    def takes_over(self, own_accuracy: float) -> bool:
        """Whether the run's own EMA, reading `own_accuracy` of the held-out labels, now leads the fixed readings."""
        return self.readings is not None and not self.own_leads and own_accuracy > self.readings.val_accuracy

    def set_progress(self, progress: float) -> None:
        """Where the run is in its schedule (0..1): the rising rule's floor follows it."""
        if self.rule == "rising":
            self.floor = THRESHOLD * min(1.0, progress)

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to read on as this one would: who leads, the flex rule's latest confident
        characters per pool image, the calibrated floor (plain values, for the checkpoint)."""
        return {"own_leads": self.own_leads, "floor": self.floor,
                "latest": self.flex.latest if self.flex else None}

    def resume(self, state: dict[str, Any] | None, val_accuracies: Sequence[float]) -> None:
        """Continue from a checkpoint's state(); from a checkpoint without one, the EMA leads if any earlier
        epoch made it take over."""
        if not state:
            self.own_leads = self.own_leads or any(self.takes_over(a) for a in val_accuracies)
            return
        self.own_leads, self.floor = bool(state["own_leads"]), float(state["floor"])
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
        floor = self.floor  # this epoch's; the next epoch's from these readings
        if self.rule == "calibrated":
            self.floor = precision_floor(texts, confs, val_labels)
        if self.flex:  # each character taken at the reading's geometric-mean confidence (per-character ones unkept)
            confs = [self.flex_conf(self.alphabet.encode(t), [c ** (1 / len(t))] * len(t), c, floor)
                     if t and not self.alphabet.unknown(t) else 0.0 for t, c in zip(texts, confs)]
        clear = rule_check(texts, confs, val_steps, self.lengths)
        right = [ok and t == y for ok, t, y in zip(clear, texts, val_labels)]
        n_clear = sum(clear)
        rec = {"unlabelled_reader": self.reader, "unlabelled_used": self.used / self.drawn if self.drawn else 0.0,
               "unlabelled_val_clear": n_clear / max(1, len(val_labels)),
               "unlabelled_val_right": sum(right) / n_clear if n_clear else None}
        if self.rule in ("calibrated", "rising"):
            rec["unlabelled_floor"] = round(floor, 4)
        self.drawn = self.used = 0
        return rec

    def describe(self) -> str:
        seeded = ""
        if self.readings is not None:
            seeded = (f"; first read by {self.readings.source} ({self.readings.val_accuracy:.1%} of the held-out "
                      f"labels), then by the {OWN} once it reads more")
        rule = (f"characters clearing their class's threshold (up to {THRESHOLD:g})" if self.flex
                else f"confidence >= {THRESHOLD:g}")
        if self.rule == "calibrated":
            rule += f" and confidence at or above the held-out labels' {PRECISION:.0%}-right floor"
        if self.rule == "rising":
            rule += f" and confidence at or above a floor rising from 0 to {THRESHOLD:g} over the run"
        return (f"unlabelled: {len(self.pool)} images; each step's readings with {rule} "
                f"teach their strong view, weight ramping to {WEIGHT:g} over {RAMP:.0%} of the run{seeded}")


def build(cfg: Any, data: Any, d: Any = None) -> Semi | None:
    """The run's unlabelled pool (cfg.unlabelled, less the labelled images) decoded at the run's input, and
    the fixed readings that teach first (cfg.first_reader); None where there are no unlabelled images."""
    from ..data.labels import Sample
    from .data import load_set
    from .unlabelled import unlabelled_images

    labelled = [Sample(p, y) for part in (data.train, data.val) for p, y in zip(part.paths, part.labels)]
    paths = unlabelled_images(list(cfg.unlabelled), labelled + list(data.test))
    if not paths:
        return None
    pool = load_set([Sample(p, "") for p in paths], data.pre, cfg, "unlabelled", d)  # one decoder per machine
    if len(pool) < len(paths):
        log(f"warning: {len(paths) - len(pool)} unlabelled images could not be read and were skipped")
    if not len(pool):
        return None
    labels = list(data.train.labels) + list(data.val.labels)
    lengths = (min(map(len, labels)), max(map(len, labels)))
    readings = first_readings(cfg, data, pool.paths)
    return Semi(pool, data.alphabet, lengths, readings, cfg.semi_rule, data.val.labels)


def first_readings(cfg: Any, data: Any, pool: list[str]) -> Readings | None:
    """The fixed readings that teach before the run's own EMA leads: cfg.first_reader's (a model file), or for
    "auto" ddddocr's zero-shot model limited to the labels' characters where it is installed and reads at
    least ZERO_SHOT_MIN of the held-out labels; None for "none"."""
    choice = cfg.first_reader
    if choice in (None, "none"):
        return None
    fold = (lambda t: t.lower()) if cfg.case == "insensitive" else (lambda t: t)
    val, val_labels = list(data.val.paths), list(data.val.labels)
    if choice in ("auto", "ddddocr"):
        from ..infer import ddddocr_reader

        if not ddddocr_reader.available():
            if choice == "ddddocr":
                raise CaptchaError("first reader ddddocr: not installed (pip install \"captcha-crnn[pretrained]\")")
            return None
        reader = ddddocr_reader.DdddocrReader(data.alphabet.chars, threads=cfg.threads)
        probe = read_with(reader, "ddddocr", [], val, val_labels, fold)
        if probe.val_accuracy < ZERO_SHOT_MIN:
            log(f"unlabelled: ddddocr zero-shot reads {probe.val_accuracy:.1%} of the held-out labels (under "
                f"{ZERO_SHOT_MIN:.0%}): the {OWN} reads the pool from the start")
            return None
        return read_with(reader, "ddddocr", pool, val, val_labels, fold)
    from ..infer.recognizer import Recognizer

    return read_with(Recognizer.load(choice, threads=cfg.threads), choice, pool, val, val_labels, fold)
