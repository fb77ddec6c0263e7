"""Training throughput of the default recipe and of each speed change on its own, on the shared sets.

    python benchmarks/train_throughput.py [--datasets captcha_v2 henan_digits4 generic_varlen]
        [--variants fp32 bf16 ...] [--accuracy [VARIANT ...]] [--seeds 0 1 2] [--root ../shared/datasets]
        [--json benchmarks/results/train_throughput.json]

This machine is shared, so speeds are taken side by side: every variant builds the run `train` would
build (its data, preprocessing, model and optimiser, training/loop.py: Run) and the variants then
take turns, a few training steps each on the same images, round after round; images/s is the median
over the rounds, for the frozen-backbone steps (the first epochs of the pretrained start) and the
full ones. With --accuracy every variant also trains for a fixed number of epochs per dataset (no
teacher -> student, no early stop, same split and seed) and reports the held-out sequence accuracy.

Variants are flag sets (VARIANTS below); `fp32` is the recipe as it was before bf16, `default` is what
`captcha-crnn train` does now. A run replaces the same dataset and variant in --json, others are kept.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from captcha_crnn.data.dataset import bucketed_order
from captcha_crnn.training import TrainConfig, train
from captcha_crnn.training.loop import Run
from captcha_crnn.training.plan import Plan
from captcha_crnn.training.sets import prepare_data
from captcha_crnn.training.start import build_model, model_config

sys.path.insert(0, str(Path(__file__).parent))
from datasets import DATASETS, common_args, save_runs, saved_runs  # noqa: E402

BATCH, STEPS = 32, 3  # images per step, steps per variant and round
EPOCHS = {"captcha_v2": 8, "henan_digits4": 3, "generic_varlen": 3}  # fixed per dataset: 2 frozen + the rest
BIG = dict(reader="big", pretrained="on")  # the teacher: the pretrained start
SMALL = dict(reader="small", pretrained="off")  # the student's architecture, trained alone
SPEED_ONLY = ("compile", "contiguous")  # flags of how the steps run, not of what `train` builds
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": dict(BIG, precision="fp32", height=64, grey="luma"),
    "bf16": dict(BIG, precision="bf16", height=64, grey="luma"),
    "height32": dict(BIG, precision="fp32", height=32, grey="luma"),
    "contrast": dict(BIG, precision="fp32", height=64, grey="contrast"),
    "threads1": dict(BIG, precision="fp32", height=64, grey="luma", threads=1),
    "threads4": dict(BIG, precision="fp32", height=64, grey="luma", threads=4),
    "compile": dict(BIG, precision="fp32", height=64, grey="luma", compile=True),
    "contiguous": dict(BIG, precision="fp32", height=64, grey="luma", contiguous=True),
    "fast": dict(BIG, precision="bf16", height=32, grey="luma"),
    "height48": dict(BIG, precision="bf16", height=48),  # the default (grey by the data) at 48 rows
    "default": dict(BIG),
    "small_fp32": dict(SMALL, precision="fp32"),
    "small_bf16": dict(SMALL, precision="bf16"),
}


def prepared(dataset: str, variant: str, root: Path, cache: Path) -> Run:
    """The Run that `train` builds for this dataset and variant (data decoded, model initialised)."""
    flags = {k: v for k, v in VARIANTS[variant].items() if k not in ("reader", *SPEED_ONLY)}
    cfg = TrainConfig(data=str(root / DATASETS[dataset].path), out=tempfile.mkdtemp(), seed=0, progress=False,
                      case=DATASETS[dataset].case, cache_dir=str(cache), **flags).validate()
    plan = Plan.resolve(cfg.data, cfg)
    plan.write()  # the split files a recipe's stages read
    stage = next(s for s in plan.stages if s.settings.pretrained == cfg.pretrained)
    cfg = stage.settings
    data = prepare_data(cfg, stage, None)
    model, _ = build_model(cfg, model_config(cfg, data.pre, data.alphabet), data.alphabet, stage.warm_start, False)
    run = Run(cfg, data, model, "cpu", Path(cfg.out))
    if VARIANTS[variant].get("compile"):
        # speed only, the warm-up round pays for compiling; dynamic=True fails in inductor on this model
        # (torch 2.13: "ValueRangeError: Invalid ranges [0:-1]"), so a new batch width recompiles
        run.net = torch.compile(run.net, dynamic=False)
    if VARIANTS[variant].get("contiguous"):  # the convolutions on plain (N, C, H, W) tensors
        run.memory_format = torch.contiguous_format
        run.model.to(memory_format=run.memory_format)
    return run


def step_seconds(run: Run, idx: list[int], frozen: bool, steps: int) -> float:
    """Median seconds of `steps` training steps on the images idx, backbone frozen or not."""
    run.st.epoch = 0 if frozen else run.cfg.freeze_epochs
    run.model.train()
    run.freeze_backbone(run.frozen())
    torch.set_num_threads(run.cfg.threads or os.cpu_count() or 1)
    _, x, widths, _ = run.fetch((idx, None))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run.train_step(idx, x, widths, run.cfg.lr)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speeds(dataset: str, variants: list[str], root: Path, cache: Path, rounds: int) -> dict[str, dict[str, Any]]:
    """images/s per variant (frozen and full steps), the variants taking turns on the same batches."""
    runs = {v: prepared(dataset, v, root, cache) for v in variants}
    first = next(iter(runs.values()))
    rng = random.Random(0)
    shuffled = rng.sample(range(len(first.data.train)), len(first.data.train))
    order = bucketed_order(shuffled, first.data.train.widths().tolist(), BATCH, 0)
    starts = rng.sample(range(0, len(order) - BATCH, BATCH), rounds + 1)
    batches = [order[i : i + BATCH] for i in starts]  # as training groups widths; the first round warms up
    times: dict[str, dict[str, list[float]]] = {v: {"frozen": [], "full": []} for v in variants}
    for r, idx in enumerate(batches):
        for v, run in runs.items():
            kinds = ["full"] + (["frozen"] if run.cfg.pretrained == "on" else [])
            for kind in kinds:
                seconds = step_seconds(run, idx, kind == "frozen", STEPS)
                if r:
                    times[v][kind].append(seconds)
        print(f"{dataset}: round {r}/{rounds}", file=sys.stderr, flush=True)
    out = {}
    for v, run in runs.items():
        rate = {k: BATCH / statistics.median(t) if t else None for k, t in times[v].items()}
        pre = run.data.pre
        out[v] = {"images_per_s": rate["full"], "frozen_images_per_s": rate["frozen"],
                  "input": f"{pre.height}px, {'grey' if pre.channels == 1 else 'colour'}, {pre.grey}",
                  "precision": run.precision, "threads": torch.get_num_threads()}
    return out


ACCURACY_FIELDS = ("epochs", "held_out", "held_out_seeds", "test_n", "train_minutes")  # what accuracy() adds


def accuracy(dataset: str, variant: str, root: Path, cache: Path, seeds: list[int]) -> dict[str, Any]:
    """Held-out sequence accuracy after EPOCHS[dataset] epochs of one model: the median over seeds
    (each its own split and initialisation), every seed's figure beside it."""
    ds = DATASETS[dataset]
    cfg = dict(epochs=EPOCHS[dataset], patience=1000, case=ds.case, progress=False, cache_dir=str(cache),
               **{k: v for k, v in VARIANTS[variant].items() if k not in SPEED_ONLY})
    results = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            r = train(str(root / ds.path), TrainConfig(out=tmp, seed=seed, **cfg))
        if r.test is None:
            raise SystemExit(f"{dataset}: no test images were scored")
        results.append(r)
    held_out = [r.test.sequence_accuracy for r in results]
    last = results[-1]
    return {"epochs": len(last.history), "held_out": statistics.median(held_out),
            "held_out_seeds": dict(zip(map(str, seeds), held_out, strict=True)), "test_n": last.test.n,
            "train_minutes": last.history[-1]["time_s"] / 60, "load_avg": os.getloadavg()}


def base_variant(variant: str) -> str:
    """The variant a speed-up is taken against: fp32, or small_fp32 for the small model."""
    return "small_fp32" if variant.startswith("small") else "fp32"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per dataset and variant; the speed-up is against base_variant() of the same
    dataset, measured side by side in the same run (stored with the row)."""
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    lines = ["| dataset | variant | input | images/s | frozen images/s | speed-up | held-out after epochs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        up = f"{r['speed_up']:.2f}x" if r.get("speed_up") else "-"
        seeds = len(r.get("held_out_seeds") or [0])
        acc = "-" if r.get("held_out") is None else (
            f"{r['held_out']:.2%} ({r['epochs']}" + (f", median of {seeds} seeds)" if seeds > 1 else ")"))
        lines.append(f"| {r['dataset']} | {r['variant']} | {r['input']}, {r['precision']} | "
                     f"{fmt(r['images_per_s'], '.0f')} | {fmt(r['frozen_images_per_s'], '.0f')} | {up} | {acc} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=list(EPOCHS), default=list(EPOCHS))
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--rounds", type=int, default=7, help="turns each variant takes at the speed measurement")
    ap.add_argument("--accuracy", nargs="*", metavar="VARIANT",
                    help="also train these variants (none named: every one) for EPOCHS epochs")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="accuracy: the median over these seeds (split and initialisation)")
    ap.add_argument("--cache", default="bench_out/throughput_cache", help="decoded images, shared by the runs")
    common_args(ap, "benchmarks/results/train_throughput.json")
    a = ap.parse_args()
    if a.table:
        print(table(saved_runs(a.table)))
        return
    rows = saved_runs(a.json)
    root, cache = Path(a.root), Path(a.cache)
    for dataset in a.datasets:
        stamp = time.strftime("%Y-%m-%d %H:%M")
        measured = speeds(dataset, a.variants, root, cache, a.rounds)
        for variant, speed in measured.items():
            old = next((x for x in rows if (x["dataset"], x["variant"]) == (dataset, variant)), {})
            kept = {k: old[k] for k in ACCURACY_FIELDS if k in old}  # the accuracy of an earlier run, if not re-run
            b = measured.get(base_variant(variant))
            row = {**kept, "dataset": dataset, "variant": variant, "flags": VARIANTS[variant], **speed,
                   "speed_up": b and speed["images_per_s"] / b["images_per_s"], "speed_run": stamp,
                   "load_avg": os.getloadavg()}
            if a.accuracy is not None and (not a.accuracy or variant in a.accuracy):
                row.update(accuracy(dataset, variant, root, cache, a.seeds))
                print(f"{dataset} {variant}: held-out {row['held_out']:.2%}", file=sys.stderr, flush=True)
            rows = [x for x in rows if (x["dataset"], x["variant"]) != (dataset, variant)] + [row]
            save_runs(a.json, rows, epochs=EPOCHS)
    print(table(rows))


if __name__ == "__main__":
    main()
