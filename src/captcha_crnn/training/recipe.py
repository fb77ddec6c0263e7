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
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import CaptchaError
from ..files import atomic_write
from .checkpoint import CHECKPOINT
from .config import TrainConfig
from .log import log
from .loop import EpochHook, TrainResult
from .plan import Plan, Stage
from .policy import LAST_MIN_SHARE, OUTPUT_MARGIN
from .stage import train_single, train_stage

STAGES = "stages.json"


def train(data: str, cfg: TrainConfig | None = None, on_epoch: EpochHook | None = None) -> TrainResult:
    """Train a reader on a folder or CSV of labelled images; writes model.safetensors and more to cfg.out.

    The plan (training/plan.py: Plan.resolve) settles every decision first and is printed, and written to
    cfg.out/plan.json. With the pretrained start at hand (the default from 50 labelled images) it trains the
    pretrained teacher, then the small student, both learning from cfg.unlabelled (and, for a `captcha-crnn
    label` folder's labels.csv, the folder's unanswered images) as they train, and keeps the student when it
    reads the held-out labels as well (cfg.reader: auto), or as asked (small, big). Otherwise, and under
    torchrun, one model is trained (training/stage.py: train_model), learning from the unlabelled images too.
    """
    t0 = time.perf_counter()
    plan = Plan.resolve(data, cfg or TrainConfig())
    if len(plan.stages) == 1:
        return train_single(plan, on_epoch, t0)
    return Recipe(plan, on_epoch).run()


def copy(src: str | Path, dst: Path) -> None:
    """Copy a file atomically: a killed run never leaves half a model under the output's name."""
    atomic_write(dst, lambda f: f.write(Path(src).read_bytes()))


class Recipe:
    """The stages of one teacher -> student plan, and the record of those already done."""

    def __init__(self, plan: Plan, on_epoch: EpochHook | None):
        self.plan, self.cfg, self.on_epoch = plan, plan.asked, on_epoch
        self.out = Path(self.cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / STAGES
        self.done: dict[str, Any] = json.loads(path.read_text()) if self.cfg.resume and path.is_file() else {}
        first = plan.stages[0].name
        if self.cfg.resume and not path.is_file() and not (self.out / first / CHECKPOINT).is_file():
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

    def run(self) -> TrainResult:
        """Write the split (and the pool's list), print and write the plan, train each stage, choose."""
        self.plan.write()
        summaries = {}
        for i, stage in enumerate(self.plan.stages, 1):
            summaries[stage.name] = self.stage(stage, i, i == len(self.plan.stages))
        return self.choose(summaries["teacher"], summaries["student"])

    def budget(self, stage: Stage, last: bool) -> float | None:
        """Minutes for a stage: its share of the budget, or the last stage what is left of it."""
        total = self.cfg.max_minutes
        if not total:
            return None
        if not last:
            return total * (stage.share or 1.0)
        return max(total - self.elapsed_min(), total * LAST_MIN_SHARE)

    def stage(self, stage: Stage, number: int, last: bool) -> dict[str, Any]:
        """Train the teacher or the student in OUT/<name> (resumed from its checkpoint where there is one)."""
        name, stages = stage.name, len(self.plan.stages)
        if name in self.done:
            log(f"stage {number}/{stages} {name}: done in an earlier run ({self.done[name]['val']:.2%} held out)")
            return self.done[name]
        minutes = self.budget(stage, last)
        log(f"stage {number}/{stages} {name}: {stage.what}" + (f", {minutes:.2f} min" if minutes else ""))
        t0 = time.perf_counter()
        cfg = stage.run_settings(minutes, self.cfg.resume and (Path(stage.settings.out) / CHECKPOINT).is_file())
        r = train_stage(self.plan, stage, cfg, self.on_epoch, t0=t0)
        self.results[name] = r
        summary = {"model": str(r.model_path), "val": r.best["val_sequence_accuracy"],
                   "val_n": self.plan.split[1], "epochs": len(r.history), "minutes": round(self.elapsed_min(), 2),
                   "test": r.test.sequence_accuracy if r.test else None}
        self.record(name, summary)
        return summary

    def choose(self, teacher: dict[str, Any], student: dict[str, Any]) -> TrainResult:
        """The student when it reads the held-out labels as well as the teacher (within one image or 0.5
        points) or --reader small asks for it, else the teacher; the other is kept beside it."""
        t, s, n = teacher["val"], student["val"], max(1, teacher["val_n"])
        margin = max(1 / n, OUTPUT_MARGIN)
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
