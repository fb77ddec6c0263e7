"""train(): the plan's stages run in order, each in OUT/<stage> (one model: OUT itself), then the output is chosen.

The default recipe, teacher -> student: the pretrained model fine-tuned on the labels (the teacher), and the small
from-scratch model (the student), which reads about ten times faster. With unlabelled images the teacher trains
first and the student's pool is read first by the teacher (training/semi.py); with none the student trains first,
until its curve levels off, and the teacher takes the rest of the budget. The output is the student where it reads
the held-out labels as well as the teacher.

One time budget covers the run, counted from the call: each stage ends by the planned end of its seconds (its setup
included), so time one stage leaves or overruns moves to the next. `stages.json` records each finished stage, so
`--resume` continues at the stage (and, through its checkpoint, the batch) where a run stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import CaptchaError
from ..evaluate import PRECISION, Report, sure_threshold
from ..files import atomic_write, copy_file
from ..model.modelfile import ModelBundle, load_bundle, save_bundle
from ..progress import log
from . import distributed
from .checkpoint import CHECKPOINT, remove_stale_temporaries, restore, shared_checkpoint
from .config import TrainConfig
from .distributed import Dist
from .loop import EpochHook, Run
from .plan import Plan, Stage, pick_device
from .policy import LAST_STAGE_FLOOR, OUTPUT_MARGIN
from .semi import build_semi
from .sets import evaluate_set, load_set, prepare_data
from .start import build_model, model_config

STAGES = "stages.json"


@dataclass
class TrainResult:
    """What a run produced: paths, the best validation figures and the test report."""

    out: Path
    model_path: Path
    history: list[dict[str, Any]]
    best: dict[str, Any]
    test: Report | None
    config: dict[str, Any] = field(default_factory=dict)
    rank: int = 0  # in a distributed run, the process's rank (only rank 0 evaluates the test split)
    recipe: dict[str, Any] | None = None  # teacher -> student: each stage's figures and the output's choice


def train(data: str, cfg: TrainConfig | None = None, on_epoch: EpochHook | None = None) -> TrainResult:
    """Train a reader on a folder or CSV of labelled images; writes model.safetensors and more to cfg.out.

    The plan (training/plan.py) settles every decision first, prints it and writes cfg.out/plan.json. With the
    pretrained start at hand (the default from 50 labelled images) the teacher and the student train and the
    output is chosen between them (cfg.reader); otherwise, and under torchrun (data-parallel across its
    processes; only rank 0 logs, writes files and calls `on_epoch`), one model trains. Both learn from
    cfg.unlabelled's images (and a `captcha-crnn label` folder's unanswered ones) as they train. With cfg.resume
    the run continues from its checkpoints, mid-epoch where that is where it stopped.
    """
    t0 = time.perf_counter()
    plan = Plan.resolve(data, cfg or TrainConfig())
    if len(plan.stages) > 1:
        return Recipe(plan, on_epoch, t0).run()
    stage = plan.stages[0]  # one model, data-parallel when launched by torchrun
    d, device = distributed.setup(pick_device(stage.settings.device))
    try:
        if d.main:
            plan.write()
        distributed.barrier(d)  # the pool's list file is written before any rank reads it
        return run_stage(plan, stage, stage.seconds, stage.settings.resume, on_epoch, d, device, t0)
    finally:
        distributed.shutdown(d)


class Recipe:
    """The stages of one teacher -> student plan, and the record of those already done."""

    def __init__(self, plan: Plan, on_epoch: EpochHook | None, t0: float):
        self.plan, self.cfg, self.on_epoch = plan, plan.asked, on_epoch
        self.out = Path(self.cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / STAGES
        self.done: dict[str, Any] = json.loads(path.read_text()) if self.cfg.resume and path.is_file() else {}
        first = plan.stages[0].name
        if self.cfg.resume and not path.is_file() and not (self.out / first / CHECKPOINT).is_file():
            raise CaptchaError(f"{self.out / first / CHECKPOINT}: no checkpoint to resume from")
        self.t0 = t0 - self.done.get("seconds", 0.0)
        self.results: dict[str, TrainResult] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def record(self, stage: str, value: dict[str, Any]) -> None:
        self.done[stage] = value
        self.done["seconds"] = self.elapsed()
        text = json.dumps(self.done, indent=1)
        atomic_write(self.out / STAGES, lambda f: f.write(text.encode()))

    def run(self) -> TrainResult:
        """Write the split (and the pool's list), print and write the plan, train each stage, choose."""
        self.plan.write()
        planned_end = 0.0
        for i, stage in enumerate(self.plan.stages, 1):
            planned_end += stage.seconds or 0.0
            self.stage(stage, i, planned_end)
        return self.choose(self.done["teacher"], self.done["student"])

    def budget(self, planned_end: float, last: bool) -> float | None:
        """A stage's seconds: to the planned end of its share, so that what the stages before it left or overran
        moves to it (plan.HAND_ON); the last keeps at least LAST_STAGE_FLOOR of the budget."""
        if not self.cfg.max_minutes:
            return None
        left = planned_end - self.elapsed()
        return max(left, LAST_STAGE_FLOOR * self.cfg.max_minutes * 60) if last else max(left, 1.0)

    def stage(self, stage: Stage, number: int, planned_end: float) -> None:
        """Train the teacher or the student in OUT/<name> (resumed from its checkpoint where there is one)."""
        name, stages = stage.name, len(self.plan.stages)
        if name in self.done:
            log(f"stage {number}/{stages} {name}: done in an earlier run ({self.done[name]['val']:.2%} held out)")
            return
        seconds = self.budget(planned_end, number == stages)
        handed = f" ({seconds - stage.seconds:+.0f} s handed on)" if seconds and stage.seconds else ""
        log(f"stage {number}/{stages} {name}: {stage.what}" + (f", {seconds:.0f} s{handed}" if seconds else ""))
        resume = self.cfg.resume and (Path(stage.settings.out) / CHECKPOINT).is_file()
        r = run_stage(self.plan, stage, seconds, resume, self.on_epoch)
        self.results[name] = r
        self.record(name, {"model": str(r.model_path), "val": r.best["val_sequence_accuracy"],
                           "val_n": self.plan.split[1], "epochs": len(r.history),
                           "minutes": round(self.elapsed() / 60, 2),
                           "test": r.test.sequence_accuracy if r.test else None})

    def choose(self, teacher: dict[str, Any], student: dict[str, Any]) -> TrainResult:
        """The student when it reads the held-out labels as well as the teacher (within one image or
        OUTPUT_MARGIN) or --reader small asks for it, else the teacher; the other is kept beside it."""
        t, s, n = teacher["val"], student["val"], max(1, teacher["val_n"])
        margin = max(1 / n, OUTPUT_MARGIN)
        within = f"one image or {OUTPUT_MARGIN:.1%}"
        if self.cfg.reader == "small":
            pick, why = "student", "--reader small"
        elif s >= t - margin:
            pick, why = "student", (f"it reads {s:.2%} of the {n} held-out images, the teacher {t:.2%} "
                                    f"(no more than {within} fewer), at the small model's speed")
        else:
            pick, why = "teacher", (f"the student reads {s:.2%} of the {n} held-out images, the teacher {t:.2%}, "
                                    f"more than {within} better")
        other = "teacher" if pick == "student" else "student"
        chosen = self.done[pick]
        out = self.out / "model.safetensors"
        copy_file(chosen["model"], out)
        copy_file(self.done[other]["model"], self.out / f"{other}.safetensors")
        for name in ("history.json", "curves.png"):
            src = Path(chosen["model"]).parent / name
            if src.is_file():
                copy_file(src, self.out / name)
        self.record("output", {"reader": pick, "why": why})
        log(f"output: the {pick} ({why}); {out}, the {other} in {self.out / (other + '.safetensors')}")
        r = self.results.get(pick)
        if r is None:  # trained by an earlier run: its history and figures from its folder
            h = json.loads((Path(chosen["model"]).parent / "history.json").read_text())
            r = TrainResult(self.out, out, h["history"], h["best"], None)
        return replace(r, out=self.out, model_path=out,
                       recipe={k: v for k, v in self.done.items() if k != "seconds"})


def run_stage(plan: Plan, stage: Stage, seconds: float | None, resume: bool, on_epoch: EpochHook | None,
              d: Dist | None = None, device: str | None = None, t0: float | None = None) -> TrainResult:
    """Train `stage` of `plan` for `seconds` (counted from t0, default now, so decoding and the first readings are
    spent from it too): its data, its model, its pool, the loop, then its files."""
    t0 = time.perf_counter() if t0 is None else t0
    cfg, d = stage.settings, d or Dist()
    device = device or pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads or distributed.threads_per_process(d))
    torch.manual_seed(cfg.seed)
    ckpt = shared_checkpoint(out / CHECKPOINT, d) if resume else None
    if ckpt and d.main:
        remove_stale_temporaries(out)
    data = prepare_data(cfg, stage, ckpt, d)
    model, init = build_model(cfg, model_config(cfg, data.pre, data.alphabet), data.alphabet, stage.warm_start,
                              resume=ckpt is not None)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.preset} {cfg.backbone}+{cfg.rnn}, {n_params / 1e6:.2f}M parameters, device {device}"
        + (f", {d.world} processes (global batch {cfg.batch_size})" if d.enabled else ""))
    log(f"init: {init}")
    semi = build_semi(cfg, stage, plan, data, d)
    if semi:
        log(semi.describe())
    run = Run(cfg, data, model.to(device), device, out, seconds, on_epoch, d, semi, stage.stops_early,
              setup_s=time.perf_counter() - t0)
    run.info["training"]["plan"] = plan.to_dict()
    if semi and semi.readings is not None and not ckpt:
        semi.first_lead(evaluate_set(run.kept(), data.val, data.alphabet, device, d)[1].sequence_accuracy)
    if ckpt:
        restore(run, ckpt)
        if semi:
            semi.resume(json.loads(ckpt["semi"]) if "semi" in ckpt else None,
                        [h["val_sequence_accuracy"] for h in run.st.history])
    reason = run.loop()
    st = run.st
    log(f"{reason}; best val sequence accuracy {st.best['val_sequence_accuracy']:.2%} at epoch {st.best['epoch']}")
    result = TrainResult(out, out / "model.safetensors", st.history, st.best, None, cfg.to_dict(), d.rank)
    if d.main:
        result = finish(out, cfg, data, st.history, st.best, run.info, device)
    distributed.barrier(d)  # the other ranks return once the model file is final
    return result


def finish(out: Path, cfg: TrainConfig, data: Any, history: list[dict[str, Any]], best: dict[str, Any],
           info: dict[str, Any], device: str) -> TrainResult:
    """Evaluate the best model on the test split, store metrics in it, write history and curves."""
    from ..viz import plot_curves

    model_path = out / "model.safetensors"
    b: ModelBundle = load_bundle(model_path, device)
    test_rep = None
    if data.test:
        test_set = load_set(data.test, data.pre, cfg, "test")
        if len(test_set):
            _, test_rep, _, _ = evaluate_set(b.model, test_set, data.alphabet, device)
            log("test: " + f"n={test_rep.n}  sequence accuracy {test_rep.sequence_accuracy:.2%}  "
                f"CER {test_rep.cer:.4f}")
    _, _, preds, confs = evaluate_set(b.model, data.val, data.alphabet, device)  # the unsure threshold
    metrics = {"val": {**best, "sure": {"threshold": sure_threshold(data.val.labels, preds, confs, PRECISION),
                                        "precision": PRECISION, "n": len(data.val)}}}
    if test_rep:
        metrics["test"] = {k: v for k, v in test_rep.to_dict().items() if k != "confusions"}
    b.info = {**info, "metrics": metrics, "history_epochs": len(history)}
    save_bundle(b, model_path)
    (out / "history.json").write_text(json.dumps({"history": history, "best": best, "metrics": metrics}, indent=1))
    plot_curves(history, out / "curves.png")
    log(f"wrote {model_path}, {out / CHECKPOINT}, {out / 'history.json'}, {out / 'curves.png'}")
    return TrainResult(out, model_path, history, best, test_rep, cfg.to_dict())
