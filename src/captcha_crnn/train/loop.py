"""The training loop: CTC loss, AdamW, warm-up + cosine, clipping, early stopping, checkpoints."""

from __future__ import annotations

import json
import os
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
from ..data.dataset import ImageSet, load_samples
from ..data.images import Preprocess, image_size, to_ink
from ..data.labels import LabelRule, Sample, read_samples
from ..data.split import split_items
from ..decode.ctc import decode_batch
from ..errors import CaptchaError
from ..evaluate import Report, score_both
from ..model.crnn import CRNN, preset
from ..model.modelfile import ModelBundle, save_bundle
from ..model.run import log_probs
from .autoconfig import resolve
from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from .config import TrainConfig
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


def log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CaptchaError("--device cuda: no CUDA device is available")
    return name


def choose_preprocess(cfg: TrainConfig, samples: list[Sample]) -> Preprocess:
    """Fixed width when every sampled image has one size, else aspect-preserving with padding."""
    if cfg.width not in ("auto", None, "variable"):
        return Preprocess(height=cfg.height, width=int(cfg.width), channels=cfg.channels)
    if cfg.width == "variable":
        return Preprocess(height=cfg.height, width=None, channels=cfg.channels)
    sizes = set()
    for s in samples[:: max(1, len(samples) // 200)]:
        try:
            sizes.add(image_size(s.path))
        except CaptchaError:
            continue
    max_len = max(len(s.label) for s in samples)
    min_w = 4 * (2 * max_len + 1)  # room for every char and a blank between repeats
    if len(sizes) == 1:
        (w, h), = sizes
        tw = max(min_w, round(w * cfg.height / h))
        return Preprocess(height=cfg.height, width=(tw + 3) // 4 * 4, channels=cfg.channels)
    return Preprocess(height=cfg.height, width=None, channels=cfg.channels, min_width=min_w)


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
    for i, (img, lab) in enumerate(zip(ds.images, ds.labels)):
        t = img.shape[-1] // 4
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


def init_weights(model: CRNN, alphabet: Alphabet, init: str | None) -> str:
    """Warm-start `model` from `init` ("auto": the shipped synthetic model if present); describe what happened."""
    from ..infer.zoo import zoo_path
    from .warmstart import warm_start

    if init in (None, "", "none"):
        return "random (from scratch)"
    source = init
    if init == "auto":
        if zoo_path("synthetic") is None:
            return "random (from scratch; no shipped synthetic model to start from)"
        source = "synthetic"
    try:
        return f"warm start from {source}: " + warm_start(model, alphabet, source)
    except CaptchaError as e:
        if init == "auto":
            return f"random (from scratch; {e})"
        raise


def evaluate_set(model: CRNN, ds: ImageSet, alphabet: Alphabet, device: str) -> tuple[float, Report, list[str]]:
    """(mean CTC loss, report, predictions) of the model on a loaded set."""
    lps = log_probs(model, ds.images, 256, device)
    preds = [alphabet.decode(decode_batch(lp[None])[0].indices) for lp in lps]
    losses = []
    for lp, lab in zip(lps, ds.labels):
        if lab and not alphabet.unknown(lab):
            tgt = torch.tensor(alphabet.encode(lab))
            losses.append(F.ctc_loss(torch.from_numpy(lp)[:, None], tgt[None], [lp.shape[0]], [len(tgt)],
                                     blank=0, reduction="sum", zero_infinity=True).item() / len(tgt))
    return float(np.mean(losses)) if losses else float("nan"), score_both(ds.labels, preds, alphabet.chars), preds


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


def train(data: str, cfg: TrainConfig | None = None, on_epoch: EpochHook | None = None) -> TrainResult:
    """Train a CRNN on a folder or CSV of labelled images; writes model.safetensors and more to cfg.out."""
    cfg = cfg or TrainConfig()
    cfg.data = str(data)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)

    ckpt = load_checkpoint(out / CHECKPOINT) if cfg.resume else None
    tr, va, te, how = load_data(cfg)
    cfg, notes = resolve(cfg, tr)
    if notes:
        log("auto config: " + "; ".join(notes))
    if ckpt:
        pre = Preprocess.from_dict(ckpt["preprocess"])
        alphabet = Alphabet(ckpt["alphabet"])
    else:
        pre = choose_preprocess(cfg, tr)
    log(f"data: {data}: {len(tr)} train, {len(va)} val, {len(te)} test images; {how}")
    log(f"input: height {pre.height}, width {pre.width or 'aspect-preserving, padded'}, "
        f"{'grey' if pre.channels == 1 else 'colour'}")
    train_set = load_samples(tr, pre, "loading train", cfg.progress)
    val_set = load_samples(va, pre, "loading val", cfg.progress)
    if not ckpt:
        alphabet = Alphabet.from_labels(s for s in train_set.labels)
    train_set = usable(train_set, alphabet, "train")
    if len(train_set) == 0:
        raise CaptchaError(f"{data}: no usable training images")
    val_set = usable(val_set, alphabet, "val")
    log(f"alphabet ({len(alphabet)}): {alphabet.chars}")

    mcfg = preset(cfg.preset, num_classes=alphabet.num_classes, in_channels=pre.channels,
                  height=pre.height, backbone=cfg.backbone, rnn=cfg.rnn, dropout=cfg.dropout)
    model = CRNN(mcfg)
    if not ckpt:
        warm = init_weights(model, alphabet, cfg.init)
    model = model.to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = (len(train_set) + cfg.batch_size - 1) // cfg.batch_size
    total_steps = cfg.epochs * steps_per_epoch
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.preset} {cfg.backbone}+{cfg.rnn}, {n_params / 1e6:.2f}M parameters, device {device}")
    if not ckpt:
        log(f"init: {warm}")

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_sequence_accuracy": -1.0, "val_loss": float("inf"), "epoch": 0}
    start_epoch, step, elapsed_before = 0, 0, 0.0
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        elapsed_before = float(ckpt["elapsed"])
        history, best = json.loads(ckpt["history"]), json.loads(ckpt["best"])
        log(f"resumed from {out / CHECKPOINT} after epoch {start_epoch}")

    info = {"training": {"data": str(data), "split": how, "seed": cfg.seed, "train_images": len(train_set),
                         "val_images": len(val_set), "config": cfg.to_dict()}}

    def bundle() -> ModelBundle:
        return ModelBundle(model, alphabet, pre, {**info, "metrics": {"val": best}})

    def checkpoint(epoch: int, elapsed: float) -> None:
        save_checkpoint(out / CHECKPOINT, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(), "epoch": epoch, "step": step, "elapsed": elapsed,
            "history": json.dumps(history), "best": json.dumps(best), "alphabet": alphabet.chars,
            "preprocess": pre.to_dict(), "config": json.dumps(cfg.to_dict()),
        })

    from tqdm import tqdm

    budget = cfg.max_minutes * 60 if cfg.max_minutes else None
    t0 = time.perf_counter() - elapsed_before
    hook_time = 0.0
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", disable=not cfg.progress,
               file=sys.stderr, dynamic_ncols=True)
    use_amp = device == "cuda"
    stop_reason = "epochs done"
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=gen).tolist()
        losses = []
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            u8, widths = train_set.batch(idx)
            x = torch.from_numpy(to_ink(u8))  # (B, C, H, W)
            x = augment(x, float(cfg.augment), gen).to(device)
            targets, target_lens = ctc_targets([train_set.labels[j] for j in idx], alphabet)
            elapsed = time.perf_counter() - t0 - hook_time
            progress = max(step / total_steps, elapsed / budget if budget else 0.0)
            for g in opt.param_groups:
                g["lr"] = lr_at(progress, cfg.lr, cfg.warmup)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                logp = model(x)  # (B, T, C)
            in_lens = CRNN.output_lengths(torch.from_numpy(widths))
            loss = F.ctc_loss(logp.float().transpose(0, 1), targets, in_lens, target_lens,
                              blank=0, reduction="mean", zero_infinity=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
            if budget and time.perf_counter() - t0 - hook_time > budget:
                break
        val_loss, rep, preds = evaluate_set(model, val_set, alphabet, device)
        elapsed = time.perf_counter() - t0 - hook_time
        rec = {"epoch": epoch + 1, "step": step, "time_s": round(elapsed, 2),
               "train_loss": float(np.mean(losses)) if losses else float("nan"), "val_loss": val_loss,
               "val_sequence_accuracy": rep.sequence_accuracy, "val_char_accuracy": rep.char_accuracy,
               "val_cer": rep.cer, "lr": opt.param_groups[0]["lr"]}
        history.append(rec)
        improved = (rep.sequence_accuracy, -val_loss) > (best["val_sequence_accuracy"], -best["val_loss"])
        if improved:
            best = {"val_sequence_accuracy": rep.sequence_accuracy, "val_char_accuracy": rep.char_accuracy,
                    "val_cer": rep.cer, "val_loss": val_loss, "epoch": epoch + 1}
            save_bundle(bundle(), out / "model.safetensors")
        samples = ", ".join(f"{t}->{p}{'' if t == p else ' x'}" for t, p in list(zip(val_set.labels, preds))[:3])
        log(f"epoch {epoch + 1:3d}/{cfg.epochs}  train loss {rec['train_loss']:.4f}  val loss {val_loss:.4f}  "
            f"val acc {rep.sequence_accuracy:6.2%}  CER {rep.cer:.4f}  {elapsed:5.0f}s{' *' if improved else '  '}"
            f"  {samples}")
        if on_epoch:
            h0 = time.perf_counter()
            on_epoch(rec, bundle())
            hook_time += time.perf_counter() - h0
        checkpoint(epoch + 1, elapsed)
        if epoch + 1 - best["epoch"] >= cfg.patience:
            stop_reason = f"early stop: no val improvement for {cfg.patience} epochs"
            break
        if budget and elapsed > budget:
            stop_reason = f"time budget of {cfg.max_minutes} min spent"
            break
    bar.close()
    log(f"{stop_reason}; best val sequence accuracy {best['val_sequence_accuracy']:.2%} at epoch {best['epoch']}")
    return finish(out, cfg, te, pre, alphabet, history, best, info, device)


def finish(out: Path, cfg: TrainConfig, te: list[Sample], pre: Preprocess, alphabet: Alphabet,
           history: list[dict[str, Any]], best: dict[str, Any], info: dict[str, Any], device: str) -> TrainResult:
    """Evaluate the best model on the test split, store metrics in it, write history and curves."""
    from ..model.modelfile import load_bundle
    from ..viz import plot_curves

    model_path = out / "model.safetensors"
    b = load_bundle(model_path, device)
    test_rep = None
    if te:
        test_set = load_samples(te, pre, "loading test", cfg.progress)
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
