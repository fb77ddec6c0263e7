"""The default recipe, teacher -> student: the pretrained model fine-tuned on the labels (the teacher),
then the small from-scratch model (the student), which reads about ten times faster. With unlabelled
images both learn from them throughout training (training/semi.py): the teacher from its own weight
average's confident readings (first from ddddocr's zero-shot readings where those read the held-out
labels well), the student from the teacher's readings until its own weight average reads the held-out
labels better. The output is the student when it reads the held-out labels as well as the teacher.

Without unlabelled images the student either learns from the labels and, through distillation
(training/distil.py), from the teacher's per-step readings of the same augmented images, after the
teacher; or from the labels alone: then it trains first and stops once its validation curve has
flattened for PLATEAU_EPOCHS epochs, and the teacher takes the rest of the budget (on generic_varlen
the small model levels off near 40% while the teacher still rises). `--distil` says which.

One time budget covers every stage; `stages.json` in the output folder records each finished stage,
so `--resume` continues at the stage (and, through its checkpoint, the batch) where a run stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..data.labels import Sample, write_csv
from ..errors import CaptchaError
from ..files import atomic_write
from .checkpoint import CHECKPOINT
from .config import TrainConfig
from .data import EARLY_STOP_MIN_VAL, load_data
from .log import log
from .loop import EpochHook, TrainResult, train_model
from .start import resolve_start
from .unlabelled import label_folder_unlabelled, unlabelled_images, write_list

STAGES = "stages.json"
TEACHER_SHARE = 0.4  # of the time budget (benchmarks/learning_curve.py); the student takes what is left
LABELS_ONLY_STUDENT_SHARE = 0.5  # the student's most, trained first, when there is nothing unlabelled
PLATEAU_EPOCHS = 3  # the student's patience when it trains first: the time it saves goes to the teacher
DISTIL_AUTO = False  # no better output anywhere on the learning curve (learning_curve_distil.json)
LAST_MIN_SHARE = 0.3  # the last stage's budget when the stages before it overran theirs


def train(data: str, cfg: TrainConfig | None = None, on_epoch: EpochHook | None = None) -> TrainResult:
    """Train a reader on a folder or CSV of labelled images; writes model.safetensors and more to cfg.out.

    With the pretrained start at hand (the default from 50 labelled images), trains the pretrained
    teacher, then the small student, both learning from cfg.unlabelled (and, for a `captcha-crnn label`
    folder's labels.csv, the folder's unanswered images) as they train, and keeps the student when it
    reads the held-out labels as well (cfg.reader: auto), or as asked (small, big). Otherwise, and under
    torchrun, one model is trained (training/loop.py: train_model), learning from the unlabelled images too.
    """
    cfg = replace(cfg or TrainConfig(), data=str(data))
    if cfg.reader == "big" or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        why_single = "--reader big" if cfg.reader == "big" else "a distributed run trains one model"
        images = all_unlabelled(cfg, [])  # train_model leaves out the labelled ones
    else:
        tr, va, te, how = load_data(cfg)
        changes, _ = resolve_start(cfg, len(tr) + len(va) + len(te))
        images = all_unlabelled(cfg, tr + va + te)
        if changes["pretrained"] == "on":
            return Recipe(cfg, Split(tr, va, te, how), images, on_epoch).run()
        why_single = "the start is the small model itself"
    if cfg.distil == "on":
        log(f"--distil on: not used ({why_single}; there is no teacher to learn from)")
    pool = (write_list(images, Path(cfg.out) / "unlabelled.txt"),) if images else ()
    return train_model(data, replace(cfg, unlabelled=pool), on_epoch)


def all_unlabelled(cfg: TrainConfig, labelled: list[Sample]) -> list[str]:
    """cfg.unlabelled's images and, for a `captcha-crnn label` folder, its images without an answer."""
    images = unlabelled_images(list(cfg.unlabelled), exclude=labelled)
    extra = label_folder_unlabelled(cfg.data)
    if extra:
        log(f"label folder: {len(extra)} images without an answer are used as unlabelled")
    return sorted(set(images) | set(extra))


@dataclass
class Split:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    how: str


def copy(src: str | Path, dst: Path) -> None:
    """Copy a file atomically: a killed run never leaves half a model under the output's name."""
    atomic_write(dst, lambda f: f.write(Path(src).read_bytes()))


class Recipe:
    """The stages of one teacher -> student run, and the record of those already done."""

    def __init__(self, cfg: TrainConfig, split: Split, unlabelled: list[str], on_epoch: EpochHook | None):
        self.cfg, self.split, self.unlabelled, self.on_epoch = cfg, split, unlabelled, on_epoch
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / STAGES
        self.done: dict[str, Any] = json.loads(path.read_text()) if cfg.resume and path.is_file() else {}
        asked = cfg.distil == "on" or (cfg.distil == "auto" and DISTIL_AUTO)
        self.distil = bool(self.done.get("distil", asked))  # a resumed run keeps the order it began in
        if self.distil != asked and cfg.distil != "auto":
            log(f"--distil {cfg.distil}: this run began {'with' if self.distil else 'without'} distillation "
                "and goes on as it began")
        first = "teacher" if unlabelled or self.distil else "student"
        if cfg.resume and not path.is_file() and not (self.out / first / CHECKPOINT).is_file():
            raise CaptchaError(f"{self.out / first / CHECKPOINT}: no checkpoint to resume from")
        self.t0 = time.perf_counter() - self.done.get("seconds", 0.0)
        self.results: dict[str, TrainResult] = {}

    def elapsed_min(self) -> float:
        return (time.perf_counter() - self.t0) / 60

    def record(self, stage: str, value: dict[str, Any]) -> None:
        self.done[stage] = value
        self.done["seconds"] = time.perf_counter() - self.t0
        text = json.dumps(self.done, indent=1)
        atomic_write(self.out / STAGES, lambda f: f.write(text.encode()))

    # stages ----------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        sp = self.split
        folder = self.out / "split"
        files = {name: write_csv(part, folder / f"{name}.csv")
                 for name, part in (("train", sp.train), ("val", sp.val), ("test", sp.test)) if part}
        images = self.unlabelled
        n = len(sp.train) + len(sp.val) + len(sp.test)
        log(f"recipe: teacher -> student on {n} labelled images ({len(sp.train)} train, {len(sp.val)} held out for "
            f"validation and the threshold, {len(sp.test)} test) and {len(images)} unlabelled; {sp.how}")
        if not images:
            self.record("distil", self.distil)  # before the first stage: --resume follows the same order
            if self.distil:  # the student learns the teacher's readings of the labelled images
                teacher = self.stage("teacher", 1, 2, files["train"], files, {"reader": "big"}, TEACHER_SHARE)
                student = self.stage("student", 2, 2, files["train"], files,
                                     {**STUDENT, "teacher": teacher["model"]}, None)
            else:  # the student learns from the labels alone: it goes first, the teacher takes the rest
                student = self.stage("student", 1, 2, files["train"], files,
                                     {**STUDENT, "patience": min(self.cfg.patience, PLATEAU_EPOCHS)},
                                     LABELS_ONLY_STUDENT_SHARE)
                teacher = self.stage("teacher", 2, 2, files["train"], files, {"reader": "big"}, None)
            return self.choose(teacher, student)
        if self.cfg.distil == "on":
            log("--distil on: not used (with unlabelled images the student learns the teacher's readings of them)")
        pool = {"unlabelled": (write_list(images, folder / "unlabelled.txt"),)}
        teacher = self.stage("teacher", 1, 2, files["train"], files, {"reader": "big", **pool}, TEACHER_SHARE)
        student = self.stage("student", 2, 2, files["train"], files,
                             {**STUDENT, **pool, "first_reader": teacher["model"]}, None)
        return self.choose(teacher, student)

    def budget(self, share: float | None) -> float | None:
        """Minutes for a stage: `share` of the budget, or (None) what is left of it."""
        total = self.cfg.max_minutes
        if not total:
            return None
        if share is not None:
            return total * share
        return max(total - self.elapsed_min(), total * LAST_MIN_SHARE)

    def stage(self, name: str, number: int, stages: int, data: Path, files: dict[str, Path],
              changes: dict[str, Any], share: float | None) -> dict[str, Any]:
        """Train the teacher or the student in OUT/<name> (resumed from its checkpoint where there is one)."""
        if name in self.done:
            log(f"stage {number}/{stages} {name}: done in an earlier run ({self.done[name]['val']:.2%} held out)")
            return self.done[name]
        minutes = self.budget(share)
        out = self.out / name
        pool = changes.get("unlabelled", ())
        if name == "teacher":
            what = "the pretrained start fine-tuned on the labels" + (" and the unlabelled images" if pool else "")
        elif pool:
            what = "the small model on the labels and the unlabelled images, read first by the teacher"
        elif changes.get("teacher"):
            what = "the small model on the labels and the teacher's per-step readings of them"
        elif len(self.split.val) >= EARLY_STOP_MIN_VAL:  # only then can its early stop tell a level curve
            what = f"the small model on the labels, until its curve levels off ({changes['patience']} epochs)"
        else:
            what = "the small model on the labels"
        log(f"stage {number}/{stages} {name}: {what}" + (f", {minutes:.1f} min" if minutes else ""))
        test = str(files["test"]) if "test" in files else None
        # one cache for every stage (keyed by the files and the preprocessing): the distilled student's teacher
        # reads the training images at the teacher's input size, decoded once by the teacher's stage
        cache = self.cfg.cache_dir or str(self.out / "cache")
        cfg = replace(self.cfg, out=str(out), max_minutes=minutes, val_data=str(files["val"]), test_data=test,
                      val=None, test=None if test else 0.0, label_regex=None, label_sep=None,
                      cache_dir=cache, **{"unlabelled": (), "first_reader": self.cfg.first_reader, **changes},
                      resume=self.cfg.resume and (out / CHECKPOINT).is_file())
        r = train_model(str(data), cfg, self.on_epoch)
        self.results[name] = r
        summary = {"model": str(r.model_path), "val": r.best["val_sequence_accuracy"],
                   "val_n": len(self.split.val), "epochs": len(r.history), "minutes": round(self.elapsed_min(), 2),
                   "test": r.test.sequence_accuracy if r.test else None}
        self.record(name, summary)
        return summary

    def choose(self, teacher: dict[str, Any], student: dict[str, Any]) -> TrainResult:
        """The student when it reads the held-out labels as well as the teacher (within one image or 0.5
        points) or --reader small asks for it, else the teacher; the other is kept beside it."""
        t, s, n = teacher["val"], student["val"], max(1, teacher["val_n"])
        margin = max(1 / n, 0.005)
        if self.cfg.reader == "small":
            pick, why = "student", "--reader small"
        elif s >= t - margin:
            pick, why = "student", (f"it reads {s:.2%} of the {n} held-out images, the teacher {t:.2%} "
                                    f"(no more than one image or 0.5 points fewer), at the small model's speed")
        else:
            pick, why = "teacher", (f"the student reads {s:.2%} of the {n} held-out images, the teacher {t:.2%}, "
                                    "more than one image or 0.5 points better")
        other = "teacher" if pick == "student" else "student"
        chosen = self.done[pick]
        out = self.out / "model.safetensors"
        copy(chosen["model"], out)
        copy(self.done[other]["model"], self.out / f"{other}.safetensors")
        for name in ("history.json", "curves.png"):
            src = Path(chosen["model"]).parent / name
            if src.is_file():
                copy(src, self.out / name)
        self.record("output", {"reader": pick, "why": why})
        log(f"output: the {pick} ({why}); {out}, the {other} in {self.out / (other + '.safetensors')}")
        return self.result(pick, out)

    def result(self, pick: str, model: Path) -> TrainResult:
        r = self.results.get(pick)
        if r is None:  # trained by an earlier run: its history and figures from its folder
            h = json.loads((Path(self.done[pick]["model"]).parent / "history.json").read_text())
            r = TrainResult(self.out, model, h["history"], h["best"], None)
        return replace(r, out=self.out, model_path=model, recipe={k: v for k, v in self.done.items()
                                                                  if k != "seconds"})


# the student: the small from-scratch model (the shipped models' architecture), its own input settings
STUDENT: dict[str, Any] = {"pretrained": "off", "backbone": "auto", "backbone_weights": "auto", "preset": "auto",
                           "height": "auto", "channels": "auto", "init": "auto", "reader": "big"}
