"""The teacher's readings of unlabelled images, and which of them to trust.

A reading is kept when its confidence clears a threshold chosen on the held-out labelled images: the
lowest confidence at which the held-out readings at or above it are at least TARGET_PRECISION right,
and there are at least MIN_CLEARING of them, or half of the held-out readings where there are fewer than
twice that (a precision measured on one or two readings says nothing).
Only the order of the confidences matters to that choice, so a monotonic calibration (temperature
scaling) would keep the same readings. Where no threshold reaches the precision, none is kept: the
student then learns from the labels alone and self-training cannot make the result worse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.label_store import LABELS, STATE, LabelStore
from ..data.labels import Sample, list_images
from ..errors import CaptchaError
from .config import TrainConfig
from .log import log

TARGET_PRECISION = 0.99  # share of kept held-out readings that must be right
# Held-out readings a threshold must rest on (half of them where fewer than 20 are held out, as with 50
# labels). On the hard style of benchmarks/student.py a teacher reading 4 of 40 validation images set its
# threshold on the one reading that cleared it, and its kept readings left the student below the teacher alone.
MIN_CLEARING = 10


@dataclass
class PseudoLabels:
    """What stage 2 kept and how the threshold was chosen."""

    threshold: float | None  # None: no threshold reached TARGET_PRECISION on the held-out images
    precision: float | None  # of the held-out readings at or above the threshold
    held_out: int  # held-out images the threshold was chosen on
    held_out_kept: int  # of them, at or above the threshold
    teacher_accuracy: float  # the teacher's held-out sequence accuracy
    read: int  # unlabelled images read
    kept: list[tuple[str, str]] = field(default_factory=list)  # (absolute path, reading)

    def describe(self) -> str:
        if self.threshold is None:
            return (f"kept none of {self.read} readings: no confidence threshold has {clearing_needed(self.held_out)} "
                    f"or more of the teacher's {self.held_out} held-out readings above it, {TARGET_PRECISION:.0%} of "
                    f"them right (it reads {self.teacher_accuracy:.1%} of them); the student learns from the labels "
                    "alone")
        share = len(self.kept) / self.read if self.read else 0.0
        return (f"threshold {self.threshold:.4f}: kept {len(self.kept)} of {self.read} readings ({share:.1%}); "
                f"held out, {self.held_out_kept} of {self.held_out} readings clear it and {self.precision:.1%} "
                f"of those are right (teacher: {self.teacher_accuracy:.1%} of all)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PseudoLabels:
        return cls(**{**d, "kept": [tuple(k) for k in d["kept"]]})


def clearing_needed(n: int, min_clearing: int = MIN_CLEARING) -> int:
    """How many of `n` held-out readings a threshold must have at or above it."""
    return min(min_clearing, (n + 1) // 2)


def choose_threshold(confidences: list[float], correct: list[bool], target: float = TARGET_PRECISION,
                     min_clearing: int = MIN_CLEARING) -> tuple[float | None, float | None, int]:
    """(threshold, precision at it, readings at or above it): the lowest confidence whose readings at or
    above it are at least `target` right and at least `min_clearing` (or half of all readings, where that is
    fewer); (None, None, 0) where no confidence is."""
    ranked = sorted(zip(confidences, correct), key=lambda t: -t[0])
    best: tuple[float | None, float | None, int] = (None, None, 0)
    right, least = 0, clearing_needed(len(ranked), min_clearing)
    for k, (conf, ok) in enumerate(ranked, start=1):
        right += ok
        last_of_tie = k == len(ranked) or ranked[k][0] < conf  # a threshold keeps all of a tie or none
        if last_of_tie and k >= least and right / k >= target:
            best = (conf, right / k, k)
    return best


def unlabelled_images(paths: list[str], exclude: list[Sample]) -> list[str]:
    """Absolute paths of the images under `paths` (folders, files, globs), less the labelled ones."""
    if not paths:
        return []
    labelled = {str(Path(s.path).resolve()) for s in exclude}
    found = {str(p.resolve()) for p in list_images(paths)}
    return sorted(found - labelled)


def label_folder_unlabelled(data: str) -> list[str]:
    """For the labels.csv of a `captcha-crnn label` folder (labels.state.json beside it), that folder's
    images without an answer (nor marked unreadable); else []."""
    path = Path(data)
    folder = path if path.is_dir() else path.parent
    if not ((folder / STATE).is_file() and (path.is_dir() or path.name == LABELS)):
        return []
    store = LabelStore(folder)
    answers = store.read()
    return [str(store.path(n).resolve()) for n in store.names
            if n not in answers.labels and n not in answers.unreadable]


def _plausible(lengths: set[int], alphabet: set[str]) -> Any:
    lo, hi = min(lengths), max(lengths)
    return lambda text: lo <= len(text) <= hi and set(text) <= alphabet


def pseudo_label(model: str, train: list[Sample], val: list[Sample], images: list[str],
                 cfg: TrainConfig) -> PseudoLabels:
    """Read `val` with the teacher `model` to choose the threshold, then read `images` and keep the readings
    that clear it (and have a length and characters the labels have)."""
    from tqdm import tqdm

    from ..infer.recognizer import Recognizer

    rec = Recognizer.load(model, threads=cfg.threads)
    fold = (lambda t: t.lower()) if cfg.case == "insensitive" else (lambda t: t)
    val_preds = rec.predict([s.path for s in val], errors="return")
    scored = [(p.confidence, fold(p.text) == fold(s.label)) for p, s in zip(val_preds, val)
              if not isinstance(p, CaptchaError)]
    accuracy = sum(ok for _, ok in scored) / max(1, len(scored))
    threshold, precision, n_kept = choose_threshold([c for c, _ in scored], [ok for _, ok in scored])
    result = PseudoLabels(threshold, precision, len(scored), n_kept, accuracy, len(images))
    if threshold is None or not images:
        return result
    ok = _plausible({len(s.label) for s in train + val}, {c for s in train + val for c in s.label})
    chunk = 512
    bar = tqdm(total=len(images), desc="reading unlabelled", unit="img", disable=not cfg.progress)
    unreadable = 0
    for i in range(0, len(images), chunk):
        part = images[i:i + chunk]
        for path, p in zip(part, rec.predict(part, errors="return")):
            if isinstance(p, CaptchaError):
                unreadable += 1
            elif p.confidence >= threshold and ok(fold(p.text)):
                result.kept.append((path, fold(p.text)))
        bar.update(len(part))
    bar.close()
    if unreadable:
        log(f"warning: {unreadable} unlabelled images could not be read and were skipped")
    return result
