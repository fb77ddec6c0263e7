"""The training loop of one stage: AdamW with warm-up + cosine, CTC loss, clipping, a moving average of the
weights (what is validated and saved), validation each epoch, early stopping, the time budget, checkpoints; the
unlabelled loss comes from training/semi.py."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import policy
from ..data.dataset import Prefetcher, bucketed_order
from ..data.images import time_steps
from ..model.crnn import CRNN
from ..model.modelfile import ModelBundle, save_bundle
from ..progress import bar_disable, log
from . import distributed
from .checkpoint import CHECKPOINT, Clock, RunState, rank_state, save_checkpoint, snapshot
from .config import TrainConfig
from .distributed import Dist
from .policy import DEFAULT_EPOCHS, EARLY_STOP_MIN_VAL, LR_FINAL, LR_START, POOL_EPOCH
from .semi import Semi, epoch_note, ramp
from .sets import Data, ctc_targets, evaluate_set, ink_tensor

EpochHook = Callable[[dict[str, Any], ModelBundle], None]
View = tuple[torch.Tensor, np.ndarray]  # ink (B, C, H, W) and widths (B,)
Batch = tuple[list[int], torch.Tensor, np.ndarray, "tuple[list[int], View] | None"]
BUDGET_EPOCHS = 100_000  # with one, and no --epochs: the budget decides


def max_epochs(cfg: TrainConfig, seconds: float | None) -> int:
    """--epochs, else DEFAULT_EPOCHS, or as many as the stage's seconds allow."""
    return cfg.epochs or (BUDGET_EPOCHS if seconds else DEFAULT_EPOCHS)


def lr_at(progress: float, peak: float, warmup: float) -> float:
    """Learning rate at `progress` in [0, 1] of the run (by steps, or by time when a budget is set): linear warm-up
    from LR_START of the peak, then cosine decay to LR_FINAL of it."""
    p = min(max(progress, 0.0), 1.0)
    if p < warmup:
        return peak * (LR_START + (1 - LR_START) * p / warmup)
    q = (p - warmup) / max(1e-9, 1 - warmup)
    return peak * (LR_FINAL + (1 - LR_FINAL) * 0.5 * (1 + math.cos(math.pi * q)))


def make_optimizer(model: CRNN, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices and kernels only (not on biases and norms). A pretrained
    backbone gets groups of its own, at cfg.backbone_lr times the learning rate (`lr_scale`)."""
    parts = [(list(model.parameters()), 1.0, False)]
    if cfg.pretrained == "on":
        mine = {id(p) for p in model.backbone.parameters()}
        parts = [(list(model.backbone.parameters()), cfg.backbone_lr, True),
                 ([p for p in model.parameters() if id(p) not in mine], 1.0, False)]
    groups = []
    for params, scale, backbone in parts:
        for decay in (True, False):
            groups.append({"params": [p for p in params if (p.ndim > 1) == decay], "lr_scale": scale,
                           "weight_decay": cfg.weight_decay if decay else 0.0, "backbone": backbone})
    return torch.optim.AdamW(groups, lr=cfg.lr)


class EMA:
    """An exponential moving average of the weights, what is validated and saved: shadow = decay * shadow +
    (1 - decay) * weights after every step, the decay ramping up from 0 ((1 + step) / (10 + step)) so early
    averages follow the model closely; BatchNorm running statistics are averaged the same way."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for s, m in zip(self.shadow.state_dict().values(), model.state_dict().values()):
            if s.dtype.is_floating_point:
                s.lerp_(m.detach(), 1 - d)
            else:
                s.copy_(m)


class Run:
    """One training run's moving parts; `loop()` trains until a stop condition and returns why it stopped.

    Distributed (d.world > 1): the model is wrapped in DistributedDataParallel, `cfg.batch_size` is
    the global batch (each rank takes its share), every decision that depends on time uses rank 0's
    clock, and only rank 0 writes files.
    """

    def __init__(self, cfg: TrainConfig, data: Data, model: CRNN, device: str, out: Path,
                 seconds: float | None = None, on_epoch: EpochHook | None = None, d: Dist | None = None,
                 semi: Semi | None = None, stops_early: bool = False, setup_s: float = 0.0):
        self.cfg, self.data, self.model, self.device, self.out = cfg, data, model, device, out
        self.semi = semi  # the unlabelled pool and its readers (training/semi.py)
        self.d = d = d or Dist()
        self.on_epoch = on_epoch if d.main else None
        self.memory_format = torch.channels_last  # convolutions train faster so (train_throughput.py: contiguous)
        model.to(memory_format=self.memory_format)
        self.net = distributed.wrap(model, d, device)  # what the training steps run
        self.opt = make_optimizer(model, cfg)
        self.ema = EMA(model, cfg.ema) if cfg.ema else None  # the weights evaluated and saved
        self.order_gen = torch.Generator().manual_seed(cfg.seed)  # epoch permutations, alike on every rank
        self.aug_gen = torch.Generator().manual_seed(cfg.seed * 65_537 + 1 + d.rank)  # augmentation, per rank
        if d.enabled:
            torch.manual_seed(cfg.seed * 65_537 + 1 + d.rank)  # dropout masks differ between ranks
        self.batch_size = -(-cfg.batch_size // d.world)  # per rank
        self.train_widths = data.train.widths().tolist()  # epoch orders group similar widths
        # with unlabelled images an epoch is a pass over them (at one per labelled image a step): the labelled
        # set is cycled within it, so validation and checkpoints come at a pace set by the larger set
        self.passes = max(1, -(-min(len(semi.pool), POOL_EPOCH) // len(data.train))) if semi else 1
        if semi:
            semi.always_forward = d.enabled
        shard_len = -(-len(data.train) * self.passes // d.world)
        self.steps_per_epoch = -(-shard_len // self.batch_size)
        per_rank = -(-len(data.train) // d.world)
        self.label_steps = -(-per_rank // self.batch_size)  # the steps of one pass over the labelled images
        self.epochs = max_epochs(cfg, seconds)
        self.total_steps = self.epochs * self.steps_per_epoch
        # the budget covers the stage's setup (decoding, first readings) too; early stopping ends a stage with a
        # budget only where it hands the time on to a later stage, or reads every held-out image right
        self.seconds = seconds
        self.set_budget(setup_s)
        self.stops_early = stops_early
        self.st = RunState()
        self.skipped = 0  # steps skipped for a non-finite loss or gradient
        self.info = {"training": {"data": cfg.data, "split": data.how, "seed": cfg.seed, "processes": d.world,
                                  "train_images": len(data.train), "val_images": len(data.val),
                                  "precision": cfg.precision, "config": cfg.to_dict()}}

    def set_budget(self, setup_s: float) -> None:
        """The stage's training seconds: its seconds less the `setup_s` its setup took."""
        self.setup_s = setup_s
        self.budget = max(1.0, self.seconds - setup_s) if self.seconds else None

    def now(self) -> float:
        """Training seconds so far, by rank 0's clock on every rank."""
        return distributed.broadcast_float(self.clock.elapsed(), self.d)

    def save(self) -> None:
        """Write the checkpoint atomically (temporary file, fsync, rename); every rank takes part."""
        self.st.elapsed = self.now()
        ranks = distributed.all_gather(rank_state(self), self.d)
        if self.d.main:
            save_checkpoint(self.out / CHECKPOINT, snapshot(self, ranks))
        self.last_save = self.st.elapsed

    def bundle(self) -> ModelBundle:
        info = {**self.info, "metrics": {"val": self.st.best}}
        return ModelBundle(self.kept(), self.data.alphabet, self.data.pre, info)

    def kept(self) -> CRNN:
        """The model that is validated and saved: the weight average when there is one."""
        return self.ema.shadow if self.ema else self.model

    # the loop ------------------------------------------------------------------------------------
    def loop(self) -> str:
        """Train epoch after epoch from the current state; return the reason for stopping."""
        from tqdm import tqdm

        self.clock = Clock(self.st.elapsed)
        self.last_save = self.st.elapsed
        total = self.total_steps if self.epochs < BUDGET_EPOCHS else None  # a budget run: rate, no ETA
        self.bar = tqdm(total=total, initial=self.st.step, desc="training", unit="step",
                        disable=bar_disable(self.cfg.progress and self.d.main), file=sys.stderr, dynamic_ncols=True)
        try:
            while not (reason := self.stop_reason()):
                self.train_epoch()
                self.end_epoch()
        finally:
            self.bar.close()
        return reason

    def progress(self, elapsed: float) -> float:
        """How far through the schedule the run is: by steps, or by time when that is further."""
        return max(self.st.step / self.total_steps, elapsed / self.budget if self.budget else 0.0)

    def stop_reason(self) -> str:
        """Why training should stop now (empty: go on). Checked between epochs, resumed runs included."""
        st, cfg = self.st, self.cfg
        if st.epoch >= self.epochs:
            return "epochs done"
        stops = len(self.data.val) >= EARLY_STOP_MIN_VAL  # a smaller set cannot tell progress from noise
        may = self.stops_early or not self.budget or st.best["val_sequence_accuracy"] >= 1.0
        if stops and may and st.batch == 0 and st.epoch - st.best["epoch"] >= cfg.patience:
            return f"early stop: no val improvement for {cfg.patience} epochs"
        if self.budget and self.now() > self.budget:
            return f"time budget of {self.seconds:.0f} s spent"
        return ""

    def fetch(self, job: tuple[list[int], list[int] | None]) -> Batch:
        """A batch as the model takes it (runs in the loader thread): indices, float ink (B, C, H, W), widths,
        and with unlabelled images a batch of them."""
        idx, uidx = job
        x, widths = ink_tensor(self.data.train, idx)  # (B, C, H, W) float ink from the cache, (B,)
        unl = (uidx, self.semi.fetch(uidx)) if self.semi and uidx is not None else None
        return idx, x.pin_memory() if self.device.startswith("cuda") else x, widths, unl

    def jobs(self, mine: list[int]) -> Any:
        """This epoch's batches left: training indices, and unlabelled ones seeded by seed, epoch and batch."""
        bs, st = self.batch_size, self.st
        seed = (self.cfg.seed * 1_000_003 + st.epoch) * 64 + self.d.rank
        for b in range(st.batch, self.steps_per_epoch):
            uidx = self.semi.draw(seed, b, bs) if self.semi else None
            yield mine[b * bs : (b + 1) * bs], uidx

    def train_epoch(self) -> None:
        """Train on epoch `st.epoch` from batch `st.batch`; checkpoint every cfg.checkpoint_minutes.

        Batches are read and converted in a background thread a few steps ahead of the model.
        """
        st = self.st
        self.model.train()
        self.freeze_backbone(self.frozen())
        if st.order is None:
            order = [i for _ in range(self.passes)
                     for i in torch.randperm(len(self.data.train), generator=self.order_gen).tolist()]
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.order_gen))
            st.order = bucketed_order(order, self.train_widths, self.batch_size * self.d.world, seed)
        mine = distributed.shard(st.order, self.d.rank, self.d.world)
        every = self.cfg.checkpoint_minutes * 60 if self.cfg.checkpoint_minutes else None
        loader = Prefetcher(self.fetch, self.jobs(mine))
        t0, images = time.perf_counter(), 0
        try:
            for b, (idx, x, widths, unl) in enumerate(loader, start=st.batch):
                elapsed = self.now()
                if self.budget and elapsed > self.budget:
                    break
                if every and elapsed - self.last_save >= every:
                    self.save()  # mid-epoch: the permutation and batch index come along
                progress = self.progress(elapsed)
                loss = self.train_step(idx, x, widths, lr_at(progress, self.cfg.lr, self.cfg.warmup), unl,
                                       ramp(progress))
                st.batch, st.step, images = b + 1, st.step + 1, images + len(idx)
                if np.isfinite(loss):
                    st.losses.append(loss)
                self.bar.update(1)
                self.bar.set_postfix(epoch=st.epoch + 1, loss=f"{loss:.3f}",
                                     lr=f"{self.opt.param_groups[0]['lr']:.1e}")
        finally:
            loader.close()
        self.speed = {"train_s": time.perf_counter() - t0, "images": images,
                      "loader_wait_s": loader.wait_s, "loader_busy_s": loader.busy_s}

    def frozen(self) -> bool:
        """Whether the pretrained backbone stays fixed now: for the first cfg.freeze_epochs passes over the
        labelled images (an epoch with unlabelled images holds several)."""
        return self.cfg.pretrained == "on" and self.st.step < self.cfg.freeze_epochs * self.label_steps

    def freeze_backbone(self, frozen: bool) -> None:
        """No gradients through a frozen backbone (its learning rate is 0 as well, which is what a
        distributed run relies on: DDP fixes the trained parameters when it wraps the model)."""
        if not self.d.enabled:
            for p in self.model.backbone.parameters():
                p.requires_grad_(not frozen)

    def train_step(self, idx: list[int], x: torch.Tensor, widths: np.ndarray, lr: float,
                   unl: tuple[list[int], View] | None = None, unl_weight: float = 0.0) -> float:
        """One optimizer step on the training images `idx` (ink x (B, C, H, W)); returns the mean loss: CTC, plus
        with unlabelled images `unl` their loss (training/semi.py) at `unl_weight`."""
        ds, alphabet = self.data.train, self.data.alphabet
        x = x.to(self.device, non_blocking=True)
        x = policy(x, self.cfg.augment, self.aug_gen).contiguous(memory_format=self.memory_format)
        targets, target_lens = ctc_targets([ds.labels[j] for j in idx], alphabet)
        frozen = self.frozen()
        self.freeze_backbone(frozen)
        for g in self.opt.param_groups:
            g["lr"] = 0.0 if frozen and g.get("backbone") else lr * g.get("lr_scale", 1.0)
        bf16 = self.cfg.precision == "bf16"  # the plan's; autocast: bf16 matrix products, fp32 weights and loss
        buffers = [b.clone() for b in self.model.buffers()]  # BatchNorm statistics, put back if this step is skipped
        with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            logp = self.net(x)  # (B, T, classes)
        in_lens = CRNN.output_lengths(widths)
        loss = F.ctc_loss(logp.float().transpose(0, 1), targets, in_lens, target_lens,
                          blank=0, reduction="mean", zero_infinity=True)
        if self.semi and unl is not None and unl_weight > 0:
            uidx, (xu, uw) = unl
            xu = xu.to(self.device, non_blocking=True)
            loss = loss + unl_weight * self.semi.loss(self.net, self.kept(), xu, uw, uidx, self.aug_gen, bf16,
                                                      self.memory_format)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP: gradients averaged over the ranks here
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        if not torch.isfinite(norm):  # one bad batch must not turn every weight into NaN: skip its step
            for b, old in zip(self.model.buffers(), buffers):
                b.copy_(old)
            self.skipped += 1
            if self.skipped in (1, 10, 100):
                log(f"warning: {self.skipped} training step(s) skipped so far: non-finite loss or gradient")
            return float("nan")
        self.opt.step()
        if self.ema:
            self.ema.update(self.model, self.st.step)
        return loss.item()

    def end_epoch(self) -> None:
        """Validate, record, keep the best model, call the hook, checkpoint at the epoch boundary."""
        st, data = self.st, self.data
        distributed.average_buffers(self.kept(), self.d)
        val_loss, rep, preds, confs = evaluate_set(self.kept(), data.val, data.alphabet, self.device, self.d)
        elapsed = self.now()
        sp = self.speed
        loss_sum, n, images = distributed.all_sum([float(np.sum(st.losses)), float(len(st.losses)), sp["images"]],
                                                  self.d)
        rec = {"epoch": st.epoch + 1, "step": st.step, "time_s": round(elapsed, 2),
               "train_loss": loss_sum / n if n else float("nan"), "val_loss": val_loss,
               "val_sequence_accuracy": rep.sequence_accuracy, "val_char_accuracy": rep.char_accuracy,
               "val_cer": rep.cer, "lr": self.opt.param_groups[0]["lr"],
               # throughput of this epoch's training steps (all processes), and rank 0's loader:
               # busy = time spent reading batches, wait = the part of it the model waited for
               "train_images": int(images), "train_s": round(sp["train_s"], 3),
               "images_per_s": round(images / sp["train_s"], 1) if sp["train_s"] else 0.0,
               "loader_busy_s": round(sp["loader_busy_s"], 3), "loader_wait_s": round(sp["loader_wait_s"], 3)}
        if self.semi:
            rec.update(self.semi.end_epoch(data.val.labels, preds, confs, rep.sequence_accuracy,
                                           time_steps(data.val.widths()).tolist()))
        st.history.append(rec)
        improved = (rep.sequence_accuracy, -val_loss) > (st.best["val_sequence_accuracy"], -st.best["val_loss"])
        if improved:
            st.best = {"val_sequence_accuracy": rep.sequence_accuracy, "val_char_accuracy": rep.char_accuracy,
                       "val_cer": rep.cer, "val_loss": val_loss, "epoch": st.epoch + 1}
            if self.d.main:
                save_bundle(self.bundle(), self.out / "model.safetensors")
        shown = ", ".join(f"{t}->{p}{'' if t == p else ' x'}" for t, p in list(zip(data.val.labels, preds))[:3])
        of = self.epochs if self.epochs < BUDGET_EPOCHS else "-"
        log(f"epoch {st.epoch + 1:3d}/{of}  train loss {rec['train_loss']:.4f}  "
            f"val loss {val_loss:.4f}  val acc {rep.sequence_accuracy:6.2%}  CER {rep.cer:.4f}  "
            f"{elapsed:5.0f}s{' *' if improved else '  '}  {shown}" + epoch_note(rec))
        if self.on_epoch:
            h0 = time.perf_counter()
            self.on_epoch(rec, self.bundle())
            self.clock.pause(time.perf_counter() - h0)
        st.epoch, st.batch, st.order, st.losses = st.epoch + 1, 0, None, []
        self.save()
