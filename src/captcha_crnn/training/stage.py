"""One stage of a training plan (training/plan.py): its data, its model, the loop, and the files it leaves
(model.safetensors with the test figures and the plan in its metadata, history.json, curves.png)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..data.alphabet import Alphabet
from ..data.images import Preprocess
from ..data.labels import Sample
from ..model.modelfile import save_bundle
from . import distributed
from .build import build_model, pick_device
from .checkpoint import CHECKPOINT, remove_stale_temporaries, restore, shared_checkpoint
from .config import TrainConfig
from .data import load_set, prepare_data
from .distributed import Dist
from .log import log
from .loop import EpochHook, Run, TrainResult
from .plan import Plan, Stage
from .semi import build as build_semi
from .validate import evaluate_set


def train_model(data: str, cfg: TrainConfig | None = None, on_epoch: EpochHook | None = None) -> TrainResult:
    """Train one CRNN on a folder or CSV of labelled images; writes model.safetensors and more to cfg.out.

    With cfg.resume, continues from cfg.out/checkpoint.pt, mid-epoch if that is where it was written,
    with the same split, weights, optimizer, schedule position, time spent and random states.
    Launched by torchrun (RANK, WORLD_SIZE, ... in the environment), trains data-parallel across the
    processes; only rank 0 logs, writes files and calls `on_epoch`.
    """
    t0 = time.perf_counter()
    return train_single(Plan.resolve(data, cfg or TrainConfig(), single=True), on_epoch, t0)


def train_single(plan: Plan, on_epoch: EpochHook | None = None, t0: float | None = None) -> TrainResult:
    """Train the one stage of a one-model plan, data-parallel when launched by torchrun."""
    stage = plan.stages[0]
    d, device = distributed.setup(pick_device(stage.settings.device))
    try:
        if d.main:
            plan.write()
        distributed.barrier(d)  # the pool's list file is written before any rank reads it
        return train_stage(plan, stage, stage.settings, on_epoch, d, device, t0)
    finally:
        distributed.shutdown(d)


def train_stage(plan: Plan, stage: Stage, cfg: TrainConfig, on_epoch: EpochHook | None, d: Dist | None = None,
                device: str | None = None, t0: float | None = None) -> TrainResult:
    """Train `stage` of `plan` with the settings `cfg` (the stage's, with its minutes); the time budget counts
    from t0 (default now), so decoding and the first readings are spent from it too."""
    t0 = time.perf_counter() if t0 is None else t0
    d = d or Dist()
    device = device or pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads or distributed.threads_per_process(d))
    torch.manual_seed(cfg.seed)
    ckpt = shared_checkpoint(out / CHECKPOINT, d) if cfg.resume else None
    if ckpt and d.main:
        remove_stale_temporaries(out)
    data_ = prepare_data(cfg, ckpt, d)
    model, init = build_model(cfg, data_, warm=ckpt is None)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.preset} {cfg.backbone}+{cfg.rnn}, {n_params / 1e6:.2f}M parameters, device {device}"
        + (f", {d.world} processes (global batch {cfg.batch_size})" if d.enabled else ""))
    log(f"init: {init}")
    semi = build_semi(cfg, data_, d)
    if semi:
        log(semi.describe())
        if cfg.masked_minutes > 0 and ckpt is None:
            from .masked_pretrain import masked_pretrain

            masked_pretrain(model.to(device), semi.pool, 60 * cfg.masked_minutes, device, cfg.seed)
    run = Run(cfg, data_, model.to(device), device, out, on_epoch, d, semi, hands_on=stage.hands_on,
              setup_s=time.perf_counter() - t0)
    run.info["training"]["plan"] = plan.to_dict()
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
        result = finish(out, cfg, data_.test, data_.pre, data_.alphabet, st.history, st.best, run.info, device)
    distributed.barrier(d)  # the other ranks return once the model file is final
    return result


def finish(out: Path, cfg: TrainConfig, te: list[Sample], pre: Preprocess, alphabet: Alphabet,
           history: list[dict[str, Any]], best: dict[str, Any], info: dict[str, Any], device: str) -> TrainResult:
    """Evaluate the best model on the test split, store metrics in it, write history and curves."""
    from ..model.modelfile import load_bundle
    from ..viz import plot_curves

    model_path = out / "model.safetensors"
    b = load_bundle(model_path, device)
    test_rep = None
    if te:
        test_set = load_set(te, pre, cfg, "test")
        if len(test_set):
            _, test_rep, _, _ = evaluate_set(b.model, test_set, alphabet, device)
            log("test: " + f"n={test_rep.n}  sequence accuracy {test_rep.sequence_accuracy:.2%}  "
                f"CER {test_rep.cer:.4f}")
    metrics = {"val": best}
    if test_rep:
        metrics["test"] = {k: v for k, v in test_rep.to_dict().items() if k != "confusions"}
    b.info = {**info, "metrics": metrics, "history_epochs": len(history)}
    save_bundle(b, model_path)
    (out / "history.json").write_text(json.dumps({"history": history, "best": best, "metrics": metrics}, indent=1))
    plot_curves(history, out / "curves.png")
    log(f"wrote {model_path}, {out / CHECKPOINT}, {out / 'history.json'}, {out / 'curves.png'}")
    return TrainResult(out, model_path, history, best, test_rep, cfg.to_dict())
