"""Where a run stands, and its resumable checkpoint: position (epoch, batch within it, the epoch's
permutation, step, training seconds), history, random states, weights, optimizer and data encoding,
shared by every rank and written atomically (temporary file, fsync, rename, fsync of the folder).
A process killed at any moment leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CaptchaError
from ..files import atomic_write
from ..progress import log
from . import distributed
from .distributed import Dist

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save a dict of tensors and plain values (loadable with weights_only=True), atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()), durable=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CaptchaError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CaptchaError(f"{path}: checkpoint is damaged ({e})") from None


def remove_stale_temporaries(out: str | Path) -> list[Path]:
    """Delete temporary files a killed run left behind in `out` (atomic writes in progress); return them."""
    stale = [p for name in (CHECKPOINT, "model.safetensors") for p in Path(out).glob(f".{name}.*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def rng_state(aug_gen: torch.Generator, device: str) -> dict[str, torch.Tensor]:
    """This process's random states: augmentation, torch's global generator (dropout), CUDA's."""
    state = {"aug": aug_gen.get_state(), "torch": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], aug_gen: torch.Generator, device: str) -> None:
    """Restore what rng_state saved."""
    aug_gen.set_state(state["aug"])
    torch.set_rng_state(state["torch"])
    if device.startswith("cuda") and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class RunState:
    """Where a run stands: with the weights, optimizer and random states, what a checkpoint holds."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done within epoch `epoch` (0 at an epoch boundary)
    step: int = 0  # optimizer steps taken
    order: list[int] | None = None  # epoch `epoch`'s permutation of the training set, once drawn
    losses: list[float] = field(default_factory=list)  # epoch `epoch`'s batch losses so far
    elapsed: float = 0.0  # training seconds (schedule, budget) when this state was taken
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(
        default_factory=lambda: {"val_sequence_accuracy": -1.0, "val_loss": float("inf"), "epoch": 0})


class Clock:
    """Training seconds: wall time since the run first started, less time spent in epoch hooks."""

    def __init__(self, before: float = 0.0):
        self.t0 = time.perf_counter() - before

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def pause(self, seconds: float) -> None:
        self.t0 += seconds


def shared_checkpoint(path: Path, d: Dist) -> dict[str, Any]:
    """Rank 0 reads the checkpoint and hands it to every rank (no shared file system needed)."""
    ckpt: dict[str, Any] | str = {}
    if d.main:
        try:
            ckpt = load_checkpoint(path)
        except CaptchaError as e:
            ckpt = str(e)
    ckpt = distributed.broadcast_object(ckpt, d)
    if isinstance(ckpt, str):
        raise CaptchaError(ckpt)
    return ckpt


def rank_state(run: Any) -> dict[str, Any]:
    """What differs between ranks: random states, and the weight average's BatchNorm statistics
    (each rank's follow its own shard)."""
    buffers = {}
    if run.ema and run.d.enabled:
        buffers = {k: b.detach().cpu().clone() for k, b in run.kept().named_buffers() if b.is_floating_point()}
    return {"rng": rng_state(run.aug_gen, run.device), "buffers": buffers}

def snapshot(run: Any, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything needed to continue the run (loop.Run) exactly here (tensors and plain values only);
    ranks: every rank's rank_state()."""
    st = run.st
    return {
        "model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
        **({"ema": run.ema.shadow.state_dict()} if run.ema else {}),
        "generator": run.order_gen.get_state(), "world_size": run.d.world,
        "rng": [r["rng"] for r in ranks], "rank_buffers": [r["buffers"] for r in ranks],
        "epoch": st.epoch, "batch": st.batch, "step": st.step, "elapsed": st.elapsed,
        "order": torch.tensor(st.order if st.order is not None else [], dtype=torch.long),
        "losses": list(st.losses), "history": json.dumps(st.history), "best": json.dumps(st.best),
        "alphabet": run.data.alphabet.chars, "preprocess": run.data.pre.to_dict(),
        "config": json.dumps(run.cfg.to_dict()), "setup_s": run.setup_s,
        **({"semi": json.dumps(run.semi.state())} if run.semi else {}),
    }

def restore(run: Any, ckpt: dict[str, Any]) -> None:
    """Put the run (loop.Run) where a checkpoint written by snapshot left it."""
    run.model.load_state_dict(ckpt["model"])
    run.opt.load_state_dict(ckpt["optimizer"])
    if run.ema:
        run.ema.shadow.load_state_dict(ckpt.get("ema", ckpt["model"]))
    run.order_gen.set_state(ckpt["generator"])
    same_layout = int(ckpt.get("world_size", 1)) == run.d.world
    if "rng" in ckpt and same_layout:
        set_rng_state(ckpt["rng"][run.d.rank], run.aug_gen, run.device)
        mine = ckpt.get("rank_buffers", [{}] * run.d.world)[run.d.rank]
        for k, b in run.kept().named_buffers():
            if k in mine:
                b.copy_(mine[k])
    batch = int(ckpt.get("batch", 0))
    order = ckpt["order"].tolist() if "order" in ckpt and ckpt["order"].numel() else None
    if order is not None and len(order) != len(run.data.train) * run.passes:
        log("warning: the training set changed since the checkpoint; restarting its epoch")
        batch, order = 0, None
    if batch and not same_layout:
        log(f"warning: the checkpoint was written by {ckpt['world_size']} processes, this run has "
            f"{run.d.world}; restarting its epoch")
        batch = 0
    if "setup_s" in ckpt:  # the budget keeps the first start's setup, not this resume's as well
        run.set_budget(float(ckpt["setup_s"]))
    run.st = RunState(epoch=int(ckpt["epoch"]), batch=batch, step=int(ckpt["step"]), order=order,
                       losses=[float(v) for v in ckpt.get("losses", [])] if batch else [],
                       elapsed=float(ckpt["elapsed"]), history=json.loads(ckpt["history"]),
                       best=json.loads(ckpt["best"]))
    where = f"epoch {run.st.epoch + 1}, batch {batch}" if batch else f"the end of epoch {run.st.epoch}"
    log(f"resumed from {run.out / CHECKPOINT} at {where} (step {run.st.step})")
