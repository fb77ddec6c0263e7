"""The training loop: CTC loss, AdamW, warm-up + cosine, clipping, early stopping, checkpoints."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.alphabet import Alphabet
from ..data.augment import augment
from ..data.dataset import DiskImages, ImageSet, Prefetcher, bucketed_order, cached_samples, load_samples, width_batches
from ..data.images import Preprocess, image_size, time_steps, to_ink
from ..data.labels import LabelRule, Sample, read_samples
from ..data.split import split_items
from ..decode.ctc import greedy_decode_batch
from ..errors import CaptchaError
from ..evaluate import Report, score_both
from ..model.backbones import NATIVE_NORM
from ..model.crnn import CRNN, preset
from ..model.modelfile import ModelBundle, save_bundle
from . import distributed
from .autoconfig import resolve
from .checkpoint import CHECKPOINT, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .config import TrainConfig
from .distributed import Dist
from .ema import EMA
from .schedule import lr_at

EpochHook = Callable[[dict[str, Any], ModelBundle], None]


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


_LOG = {"on": True}  # off in the non-zero ranks of a distributed run: one process speaks


def log(msg: str) -> None:
    if not _LOG["on"]:
        return
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CaptchaError("--device cuda: no CUDA device is available")
    return name


CHAR_PIXELS = 24  # input width per character the auto height aims for (6 CTC frames)
HEIGHTS = (32, 48, 64)  # the auto height's choices, smallest first


def choose_height(cfg: TrainConfig, sizes: set[tuple[int, int]], max_len: int) -> int:
    """cfg.height, or for "auto" the smallest of HEIGHTS at which the median image gives every
    character of the longest label CHAR_PIXELS of width (a taller input resizes less, so small
    characters keep their strokes), never above the images' own height; 32 for cropped images
    (the crop already cuts them to the text's height) or when no size is known."""
    if cfg.height != "auto":
        return int(cfg.height)
    if cfg.crop is True or not sizes:
        return HEIGHTS[0]
    ws, hs = zip(*sizes)
    w, h = float(np.median(ws)), float(np.median(hs))
    for height in HEIGHTS:
        if height > max(h, HEIGHTS[0]):
            break
        if w * height / h >= CHAR_PIXELS * max_len:
            return height
    return max([HEIGHTS[0]] + [x for x in HEIGHTS if x <= h])


def choose_preprocess(cfg: TrainConfig, samples: list[Sample]) -> Preprocess:
    """Input height (choose_height); fixed width when every sampled image has one size (and no
    cropping), else aspect-preserving with padding."""
    crop = cfg.crop is True  # resolved by autoconfig; "auto" left unresolved means no crop
    sizes = set()
    if cfg.height == "auto" or cfg.width in ("auto", None):  # only the auto choices look at the images
        for s in samples[:: max(1, len(samples) // 200)]:
            try:
                sizes.add(image_size(s.path))
            except CaptchaError:
                continue
    max_len = max(len(s.label) for s in samples)
    height = choose_height(cfg, sizes, max_len)
    if cfg.width not in ("auto", None, "variable"):
        return Preprocess(height=height, width=int(cfg.width), channels=cfg.channels, crop=crop)
    if cfg.width == "variable":
        return Preprocess(height=height, width=None, channels=cfg.channels, crop=crop)
    min_w = 4 * (2 * max_len + 1)  # room for every char and a blank between repeats
    if len(sizes) == 1 and not crop:  # cropped boxes differ in size: keep their aspect ratio
        (w, h), = sizes
        tw = max(min_w, round(w * height / h))
        return Preprocess(height=height, width=(tw + 3) // 4 * 4, channels=cfg.channels)
    return Preprocess(height=height, width=None, channels=cfg.channels, min_width=min_w, crop=crop)


def ctc_targets(labels: list[str], alphabet: Alphabet) -> tuple[torch.Tensor, torch.Tensor]:
    enc = [alphabet.encode(s) for s in labels]
    flat = torch.tensor([i for e in enc for i in e], dtype=torch.long)
    return flat, torch.tensor([len(e) for e in enc], dtype=torch.long)


def min_frames(label: str) -> int:
    """Frames CTC needs for a label: one per char plus a blank between repeated chars."""
    return len(label) + sum(a == b for a, b in zip(label, label[1:]))


def usable(ds: ImageSet, alphabet: Alphabet, name: str) -> ImageSet:
    """Drop (and report) samples that cannot be trained on: empty, unknown chars, too long."""
    keep, dropped = [], []
    for i, (t, lab) in enumerate(zip(time_steps(ds.widths()).tolist(), ds.labels)):
        if not lab:
            dropped.append(f"{ds.paths[i]}: empty label")
        elif alphabet.unknown(lab):
            dropped.append(f"{ds.paths[i]}: label {lab!r} has characters outside the alphabet")
        elif min_frames(lab) > t:
            dropped.append(f"{ds.paths[i]}: label {lab!r} too long for the image width ({t} steps)")
        else:
            keep.append(i)
    for d in dropped[:5]:
        log(f"warning: {name}: skipped {d}")
    if len(dropped) > 5:
        log(f"warning: {name}: skipped {len(dropped)} samples in all")
    out = ds.subset(keep)
    out.skipped = ds.skipped + dropped
    return out


def init_weights(model: CRNN, alphabet: Alphabet, init: str | None, pretrained: str = "off") -> str:
    """Initialise `model`: from the `init` model when one is named, else from the pretrained backbone
    (`pretrained` "on"), else from the shipped synthetic model (init "auto") when present;
    describe what happened."""
    from ..infer.zoo import zoo_path
    from .pretrained import load_pretrained
    from .warmstart import warm_start

    if init not in (None, "", "none", "auto"):
        return f"warm start from {init}: " + warm_start(model, alphabet, init)
    if pretrained == "on":
        return "pretrained " + load_pretrained(model) + "; new RNN and head"
    if init in (None, "", "none"):
        return "random (from scratch)"
    if zoo_path("synthetic") is None:
        return "random (from scratch; no shipped synthetic model to start from)"
    try:
        return "warm start from synthetic: " + warm_start(model, alphabet, "synthetic")
    except CaptchaError as e:
        return f"random (from scratch; {e})"


@torch.inference_mode()
def read_set(model: CRNN, ds: ImageSet, alphabet: Alphabet, device: str,
             batch_size: int = 64) -> tuple[list[float], list[str]]:
    """Per image: CTC loss per character (nan where the label cannot be scored) and the greedy reading.

    Batched by width: one forward, one greedy decode and one CTC loss call per batch.
    """
    model.eval()
    losses, preds = [float("nan")] * len(ds), [""] * len(ds)
    for idx in width_batches(ds.widths().tolist(), batch_size):
        u8, widths = ds.batch(idx)  # (B, C, H, W) uint8, (B,)
        lp = model(torch.from_numpy(to_ink(u8)).to(device)).float().cpu()  # (B, T, classes)
        lens = CRNN.output_lengths(widths)  # (B,) valid frames
        for i, d in zip(idx, greedy_decode_batch(lp.numpy(), lens.tolist())):
            preds[i] = alphabet.decode(d.indices)
        ok = [k for k, i in enumerate(idx) if ds.labels[i] and not alphabet.unknown(ds.labels[i])]
        if ok:
            targets, target_lens = ctc_targets([ds.labels[idx[k]] for k in ok], alphabet)
            nll = F.ctc_loss(lp[ok].transpose(0, 1), targets, lens[ok], target_lens, blank=0,
                             reduction="none", zero_infinity=True)  # (B',) summed over each label
            for k, v in zip(ok, (nll / target_lens).tolist()):
                losses[idx[k]] = v
    return losses, preds


def evaluate_set(model: CRNN, ds: ImageSet, alphabet: Alphabet, device: str,
                 d: Dist | None = None) -> tuple[float, Report, list[str]]:
    """(mean CTC loss, report, predictions) of the model on a loaded set.

    In a distributed run each rank reads every world-th image and all ranks get the same figures.
    """
    d = d or Dist()
    idx = list(range(d.rank, len(ds), d.world))
    losses, preds = read_set(model, ds.subset(idx) if d.enabled else ds, alphabet, device)
    if d.enabled:
        parts = distributed.all_gather((idx, losses, preds), d)
        losses, preds = [float("nan")] * len(ds), [""] * len(ds)
        for part_idx, part_losses, part_preds in parts:
            for i, loss, pred in zip(part_idx, part_losses, part_preds):
                losses[i], preds[i] = loss, pred
    scored = [v for v in losses if not np.isnan(v)]
    return float(np.mean(scored)) if scored else float("nan"), score_both(ds.labels, preds, alphabet.chars), preds


def load_data(cfg: TrainConfig) -> tuple[list[Sample], list[Sample], list[Sample], str]:
    rule = LabelRule(cfg.label_regex, cfg.label_sep) if (cfg.label_regex or cfg.label_sep) else None
    samples = read_samples(cfg.data, rule)
    samples = sorted(samples, key=lambda s: s.path)
    val_frac = 0.0 if cfg.val_data else cfg.val
    test_frac = 0.0 if cfg.test_data else cfg.test
    tr, va, te = split_items(samples, cfg.seed, val_frac, test_frac)
    if cfg.val_data:
        va = read_samples(cfg.val_data, rule)
    if cfg.test_data:
        te = read_samples(cfg.test_data, rule)
    if not va:
        raise CaptchaError(f"{cfg.data}: too few images for a validation split ({len(samples)})")
    if cfg.case == "insensitive":
        tr, va, te = ([replace(s, label=s.label.lower()) for s in part] for part in (tr, va, te))
    elif cfg.case != "sensitive":
        raise CaptchaError(f"--case must be sensitive or insensitive, not {cfg.case!r}")
    how = f"seeded split (seed {cfg.seed}, val {val_frac:.0%}, test {test_frac:.0%})"
    if cfg.val_data or cfg.test_data:
        how += f"; val from {cfg.val_data or 'split'}, test from {cfg.test_data or 'split'}"
    return tr, va, te, how


@dataclass
class Data:
    """The loaded sets of a run and how their pixels and labels are encoded."""

    train: ImageSet
    val: ImageSet
    test: list[Sample]
    pre: Preprocess
    alphabet: Alphabet
    how: str


def load_set(samples: list[Sample], pre: Preprocess, cfg: TrainConfig, name: str, d: Dist | None = None) -> ImageSet:
    """Decoded images of `samples`: through the on-disk cache (cfg.cache_dir, default OUT/cache), built by
    the first process on each machine and reused when it exists; or held in memory (cache_dir "memory")."""
    d = d or Dist()
    threads = cfg.threads or distributed.threads_per_process(Dist(local_world=1))
    if cfg.cache_dir == "memory":
        return load_samples(samples, pre, f"loading {name}", cfg.progress, threads)
    root = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out) / "cache"
    t0 = time.perf_counter()
    ds = cached_samples(samples, pre, root, f"decoding {name}", cfg.progress, threads, build=d.local_rank == 0)
    if isinstance(ds.images, DiskImages):
        mb = int(ds.images.widths.sum()) * pre.channels * pre.height / 1e6
        log(f"decoded {name} images: {len(ds)} ({mb:.1f} MB) in {ds.images.folder} ({time.perf_counter() - t0:.1f}s)")
    return ds


def prepare_data(cfg: TrainConfig, ckpt: dict[str, Any] | None, d: Dist | None = None) -> tuple[TrainConfig, Data]:
    """Split, resolve the auto settings, decode the train and val images; a checkpoint fixes the encoding."""
    tr, va, te, how = load_data(cfg)
    cfg, notes = resolve(cfg, tr)
    if notes:
        log("auto config: " + "; ".join(notes))
    pre = Preprocess.from_dict(ckpt["preprocess"]) if ckpt else choose_preprocess(cfg, tr)
    log(f"data: {cfg.data}: {len(tr)} train, {len(va)} val, {len(te)} test images; {how}")
    log(f"input: height {pre.height}, width {pre.width or 'aspect-preserving, padded'}, "
        f"{'grey' if pre.channels == 1 else 'colour'}")
    train_set = load_set(tr, pre, cfg, "train", d)
    val_set = load_set(va, pre, cfg, "val", d)
    alphabet = Alphabet(ckpt["alphabet"]) if ckpt else Alphabet.from_labels(train_set.labels)
    train_set = usable(train_set, alphabet, "train")
    if len(train_set) == 0:
        raise CaptchaError(f"{cfg.data}: no usable training images")
    val_set = usable(val_set, alphabet, "val")
    log(f"alphabet ({len(alphabet)}): {alphabet.chars}")
    return cfg, Data(train_set, val_set, te, pre, alphabet, how)


def build_model(cfg: TrainConfig, data: Data, warm: bool) -> tuple[CRNN, str]:
    """The CRNN for this data, initialised when `warm` (not when resuming); with a description of its init."""
    mcfg = preset(cfg.preset, num_classes=data.alphabet.num_classes, in_channels=data.pre.channels,
                  height=data.pre.height, backbone=cfg.backbone, rnn=cfg.rnn, dropout=cfg.dropout,
                  input_norm=NATIVE_NORM.get(cfg.backbone, "ink"))
    model = CRNN(mcfg)
    return model, init_weights(model, data.alphabet, cfg.init, cfg.pretrained) if warm else "from the checkpoint"


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


class Run:
    """One training run's moving parts; `loop()` trains until a stop condition and returns why it stopped.

    Distributed (d.world > 1): the model is wrapped in DistributedDataParallel, `cfg.batch_size` is
    the global batch (each rank takes its share), every decision that depends on time uses rank 0's
    clock, and only rank 0 writes files.
    """

    def __init__(self, cfg: TrainConfig, data: Data, model: CRNN, device: str, out: Path,
                 on_epoch: EpochHook | None = None, d: Dist | None = None):
        self.cfg, self.data, self.model, self.device, self.out = cfg, data, model, device, out
        self.d = d = d or Dist()
        self.on_epoch = on_epoch if d.main else None
        self.net = distributed.wrap(model, d, device)  # what the training steps run
        self.opt = make_optimizer(model, cfg)
        self.ema = EMA(model, cfg.ema) if cfg.ema else None  # the weights evaluated and saved
        self.order_gen = torch.Generator().manual_seed(cfg.seed)  # epoch permutations, alike on every rank
        self.aug_gen = torch.Generator().manual_seed(cfg.seed * 65_537 + 1 + d.rank)  # augmentation, per rank
        if d.enabled:
            torch.manual_seed(cfg.seed * 65_537 + 1 + d.rank)  # dropout masks differ between ranks
        self.batch_size = -(-cfg.batch_size // d.world)  # per rank
        self.train_widths = data.train.widths().tolist()  # epoch orders group similar widths
        shard_len = -(-len(data.train) // d.world)
        self.steps_per_epoch = -(-shard_len // self.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        self.st = RunState()
        self.info = {"training": {"data": cfg.data, "split": data.how, "seed": cfg.seed,
                                  "train_images": len(data.train), "val_images": len(data.val),
                                  "processes": d.world, "config": cfg.to_dict()}}

    def now(self) -> float:
        """Training seconds so far, by rank 0's clock on every rank."""
        return distributed.broadcast_float(self.clock.elapsed(), self.d)

    # checkpoints ---------------------------------------------------------------------------------
    def rank_state(self) -> dict[str, Any]:
        """What differs between ranks: random states, and the weight average's BatchNorm statistics
        (each rank's follow its own shard)."""
        buffers = {}
        if self.ema and self.d.enabled:
            buffers = {k: b.detach().cpu().clone() for k, b in self.kept().named_buffers() if b.is_floating_point()}
        return {"rng": rng_state(self.aug_gen, self.device), "buffers": buffers}

    def state_dict(self, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything needed to continue exactly here (tensors and plain values only); ranks: rank_state()s."""
        st = self.st
        return {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            **({"ema": self.ema.state_dict()} if self.ema else {}),
            "generator": self.order_gen.get_state(), "world_size": self.d.world,
            "rng": [r["rng"] for r in ranks], "rank_buffers": [r["buffers"] for r in ranks],
            "epoch": st.epoch, "batch": st.batch, "step": st.step, "elapsed": st.elapsed,
            "order": torch.tensor(st.order if st.order is not None else [], dtype=torch.long),
            "losses": list(st.losses), "history": json.dumps(st.history), "best": json.dumps(st.best),
            "alphabet": self.data.alphabet.chars, "preprocess": self.data.pre.to_dict(),
            "config": json.dumps(self.cfg.to_dict()),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint written by state_dict (or by an epoch-only older version)."""
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        if self.ema:
            self.ema.load_state_dict(ckpt.get("ema", ckpt["model"]))
        self.order_gen.set_state(ckpt["generator"])
        same_layout = int(ckpt.get("world_size", 1)) == self.d.world
        if "rng" in ckpt and same_layout:
            set_rng_state(ckpt["rng"][self.d.rank], self.aug_gen, self.device)
            mine = ckpt.get("rank_buffers", [{}] * self.d.world)[self.d.rank]
            for k, b in self.kept().named_buffers():
                if k in mine:
                    b.copy_(mine[k])
        elif "rng" not in ckpt:  # older checkpoints: one generator for order and augmentation, at epoch ends
            self.aug_gen.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["torch_rng"])
        batch = int(ckpt.get("batch", 0))
        order = ckpt["order"].tolist() if "order" in ckpt and ckpt["order"].numel() else None
        if order is not None and len(order) != len(self.data.train):
            log("warning: the training set changed since the checkpoint; restarting its epoch")
            batch, order = 0, None
        if batch and not same_layout:
            log(f"warning: the checkpoint was written by {ckpt['world_size']} processes, this run has "
                f"{self.d.world}; restarting its epoch")
            batch = 0
        self.st = RunState(epoch=int(ckpt["epoch"]), batch=batch, step=int(ckpt["step"]), order=order,
                           losses=[float(v) for v in ckpt.get("losses", [])] if batch else [],
                           elapsed=float(ckpt["elapsed"]), history=json.loads(ckpt["history"]),
                           best=json.loads(ckpt["best"]))
        where = f"epoch {self.st.epoch + 1}, batch {batch}" if batch else f"the end of epoch {self.st.epoch}"
        log(f"resumed from {self.out / CHECKPOINT} at {where} (step {self.st.step})")

    def save(self) -> None:
        """Write the checkpoint atomically (temporary file, fsync, rename); every rank takes part."""
        self.st.elapsed = self.now()
        ranks = distributed.all_gather(self.rank_state(), self.d)
        if self.d.main:
            save_checkpoint(self.out / CHECKPOINT, self.state_dict(ranks))
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
        self.bar = tqdm(total=self.total_steps, initial=self.st.step, desc="training", unit="step",
                        disable=not (self.cfg.progress and self.d.main), file=sys.stderr, dynamic_ncols=True)
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
        if st.epoch >= cfg.epochs:
            return "epochs done"
        if st.batch == 0 and st.epoch - st.best["epoch"] >= cfg.patience:
            return f"early stop: no val improvement for {cfg.patience} epochs"
        if self.budget and self.now() > self.budget:
            return f"time budget of {cfg.max_minutes} min spent"
        return ""

    def fetch(self, idx: list[int]) -> tuple[list[int], torch.Tensor, np.ndarray]:
        """A batch as the model takes it (runs in the loader thread): indices, float ink (B, C, H, W), widths."""
        u8, widths = self.data.train.batch(idx)  # (B, C, H, W) uint8 from the cache, (B,)
        x = torch.from_numpy(to_ink(u8))  # (B, C, H, W) float ink
        return idx, x.pin_memory() if self.device.startswith("cuda") else x, widths

    def train_epoch(self) -> None:
        """Train on epoch `st.epoch` from batch `st.batch`; checkpoint every cfg.checkpoint_minutes.

        Batches are read and converted in a background thread a few steps ahead of the model.
        """
        st = self.st
        self.model.train()
        self.freeze_backbone(self.frozen())
        if st.order is None:
            order = torch.randperm(len(self.data.train), generator=self.order_gen).tolist()
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.order_gen))
            st.order = bucketed_order(order, self.train_widths, self.batch_size * self.d.world, seed)
        mine = distributed.shard(st.order, self.d.rank, self.d.world)
        bs, every = self.batch_size, self.cfg.checkpoint_minutes * 60 if self.cfg.checkpoint_minutes else None
        loader = Prefetcher(self.fetch, (mine[b * bs : (b + 1) * bs] for b in range(st.batch, self.steps_per_epoch)))
        t0, images = time.perf_counter(), 0
        try:
            for b, (idx, x, widths) in enumerate(loader, start=st.batch):
                elapsed = self.now()
                if self.budget and elapsed > self.budget:
                    break
                if every and elapsed - self.last_save >= every:
                    self.save()  # mid-epoch: the permutation and batch index come along
                loss = self.train_step(idx, x, widths, lr_at(self.progress(elapsed), self.cfg.lr, self.cfg.warmup))
                st.batch, st.step, images = b + 1, st.step + 1, images + len(idx)
                st.losses.append(loss)
                self.bar.update(1)
                self.bar.set_postfix(epoch=st.epoch + 1, loss=f"{loss:.3f}",
                                     lr=f"{self.opt.param_groups[0]['lr']:.1e}")
        finally:
            loader.close()
        self.speed = {"train_s": time.perf_counter() - t0, "images": images,
                      "loader_wait_s": loader.wait_s, "loader_busy_s": loader.busy_s}

    def frozen(self) -> bool:
        """Whether the pretrained backbone stays fixed this epoch (the first cfg.freeze_epochs)."""
        return self.cfg.pretrained == "on" and self.st.epoch < self.cfg.freeze_epochs

    def freeze_backbone(self, frozen: bool) -> None:
        """No gradients through a frozen backbone (its learning rate is 0 as well, which is what a
        distributed run relies on: DDP fixes the trained parameters when it wraps the model)."""
        if not self.d.enabled:
            for p in self.model.backbone.parameters():
                p.requires_grad_(not frozen)

    def train_step(self, idx: list[int], x: torch.Tensor, widths: np.ndarray, lr: float) -> float:
        """One optimizer step on the training images `idx` (ink x (B, C, H, W)); returns the mean CTC loss."""
        ds, alphabet = self.data.train, self.data.alphabet
        x = x.to(self.device, non_blocking=True)
        x = augment(x, float(self.cfg.augment), self.aug_gen)
        targets, target_lens = ctc_targets([ds.labels[j] for j in idx], alphabet)
        frozen = self.frozen()
        for g in self.opt.param_groups:
            g["lr"] = 0.0 if frozen and g.get("backbone") else lr * g.get("lr_scale", 1.0)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.device.startswith("cuda")):
            logp = self.net(x)  # (B, T, classes)
        in_lens = CRNN.output_lengths(widths)
        loss = F.ctc_loss(logp.float().transpose(0, 1), targets, in_lens, target_lens,
                          blank=0, reduction="mean", zero_infinity=True)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP: gradients averaged over the ranks here
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        self.opt.step()
        if self.ema:
            self.ema.update(self.model, self.st.step)
        return loss.item()

    def end_epoch(self) -> None:
        """Validate, record, keep the best model, call the hook, checkpoint at the epoch boundary."""
        st, data = self.st, self.data
        distributed.average_buffers(self.kept(), self.d)
        val_loss, rep, preds = evaluate_set(self.kept(), data.val, data.alphabet, self.device, self.d)
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
        st.history.append(rec)
        improved = (rep.sequence_accuracy, -val_loss) > (st.best["val_sequence_accuracy"], -st.best["val_loss"])
        if improved:
            st.best = {"val_sequence_accuracy": rep.sequence_accuracy, "val_char_accuracy": rep.char_accuracy,
                       "val_cer": rep.cer, "val_loss": val_loss, "epoch": st.epoch + 1}
            if self.d.main:
                save_bundle(self.bundle(), self.out / "model.safetensors")
        shown = ", ".join(f"{t}->{p}{'' if t == p else ' x'}" for t, p in list(zip(data.val.labels, preds))[:3])
        log(f"epoch {st.epoch + 1:3d}/{self.cfg.epochs}  train loss {rec['train_loss']:.4f}  "
            f"val loss {val_loss:.4f}  val acc {rep.sequence_accuracy:6.2%}  CER {rep.cer:.4f}  "
            f"{elapsed:5.0f}s{' *' if improved else '  '}  {shown}")
        if self.on_epoch:
            h0 = time.perf_counter()
            self.on_epoch(rec, self.bundle())
            self.clock.pause(time.perf_counter() - h0)
        st.epoch, st.batch, st.order, st.losses = st.epoch + 1, 0, None, []
        self.save()


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


def train(data: str, cfg: TrainConfig | None = None, on_epoch: EpochHook | None = None) -> TrainResult:
    """Train a CRNN on a folder or CSV of labelled images; writes model.safetensors and more to cfg.out.

    With cfg.resume, continues from cfg.out/checkpoint.pt, mid-epoch if that is where it was written,
    with the same split, weights, optimizer, schedule position, time spent and random states.
    Launched by torchrun (RANK, WORLD_SIZE, ... in the environment), trains data-parallel across the
    processes; only rank 0 logs, writes files and calls `on_epoch`.
    """
    cfg = cfg or TrainConfig()
    cfg.data = str(data)
    d, device = distributed.setup(pick_device(cfg.device))
    _LOG["on"] = d.main
    try:
        return _train(cfg, device, d, on_epoch)
    finally:
        _LOG["on"] = True
        distributed.shutdown(d)


def _train(cfg: TrainConfig, device: str, d: Dist, on_epoch: EpochHook | None) -> TrainResult:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads or distributed.threads_per_process(d))
    torch.manual_seed(cfg.seed)
    if not d.main:
        cfg = replace(cfg, progress=False)

    ckpt = shared_checkpoint(out / CHECKPOINT, d) if cfg.resume else None
    if ckpt and d.main:
        remove_stale_temporaries(out)
    cfg, data_ = prepare_data(cfg, ckpt, d)
    model, init = build_model(cfg, data_, warm=ckpt is None)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.preset} {cfg.backbone}+{cfg.rnn}, {n_params / 1e6:.2f}M parameters, device {device}"
        + (f", {d.world} processes (global batch {cfg.batch_size})" if d.enabled else ""))
    log(f"init: {init}")
    run = Run(cfg, data_, model.to(device), device, out, on_epoch, d)
    if ckpt:
        run.load_state_dict(ckpt)
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
            _, test_rep, _ = evaluate_set(b.model, test_set, alphabet, device)
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
