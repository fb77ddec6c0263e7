"""Train the default model on captcha_v2 for several seeds; time to 95/98/99% test accuracy.

    python benchmarks/train_captcha_v2.py [--data ../shared/datasets/captcha_v2] [--seeds 0 1 2]
        [--set key=value ...]   # TrainConfig overrides, for comparing settings
        [--keep DIR]            # keep the models (DIR/seed0/model.safetensors: the held-out model
                                # benchmarks/inference.py scores accuracy with)

Each run uses the default `captcha-crnn train` settings and the seeded 80/10/10 split of that seed.
After every epoch the current model is scored on the held-out test split (time spent scoring is
not counted as training time). Prints a table and writes JSON (default bench_out/train_captcha_v2.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from captcha_crnn.data.dataset import load_samples
from captcha_crnn.training import TrainConfig, train
from captcha_crnn.training.data import load_data
from captcha_crnn.training.validate import evaluate_set

sys.path.insert(0, str(Path(__file__).parent))
from datasets import parse_value  # noqa: E402

THRESHOLDS = (0.95, 0.98, 0.99)


def run_seed(data: str, seed: int, overrides: dict, keep: str | None = None) -> dict:
    _, _, test, _ = load_data(TrainConfig(data=data, seed=seed, **overrides))  # the split train() will make
    cache: dict = {}
    curve: list[dict] = []

    def on_epoch(rec: dict, bundle) -> None:
        if "set" not in cache:
            cache["set"] = load_samples(test, bundle.preprocess, progress=False)
        device = str(next(bundle.model.parameters()).device)
        _, rep, _, _ = evaluate_set(bundle.model, cache["set"], bundle.alphabet, device)
        acc = rep.sequence_accuracy
        curve.append({"epoch": rec["epoch"], "time_s": rec["time_s"], "test_sequence_accuracy": acc,
                      "val_sequence_accuracy": rec["val_sequence_accuracy"]})

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(keep) / f"seed{seed}") if keep else tmp
        cfg = TrainConfig(out=out, seed=seed, progress=False, **overrides)
        t0 = time.perf_counter()
        r = train(data, cfg, on_epoch=on_epoch)
        wall = time.perf_counter() - t0
    reached = {}
    for th in THRESHOLDS:
        hit = next((c for c in curve if c["test_sequence_accuracy"] >= th), None)
        reached[f"time_to_{int(th * 100)}"] = hit["time_s"] if hit else None
        reached[f"epoch_to_{int(th * 100)}"] = hit["epoch"] if hit else None
    return {"seed": seed, "test_sequence_accuracy": r.test.sequence_accuracy, "test_cer": r.test.cer,
            "test_n": r.test.n, "epochs": len(r.history), "train_time_s": r.history[-1]["time_s"],
            "wall_s": round(wall, 1), "best_epoch": r.best["epoch"], **reached, "curve": curve}


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/captcha_v2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides")
    ap.add_argument("--json", default="bench_out/train_captcha_v2.json")
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep each seed's run folder in DIR/seed<N>")
    a = ap.parse_args()
    overrides = {k: parse_value(v) for k, v in (s.split("=", 1) for s in a.set)}
    runs = []
    for seed in a.seeds:
        r = run_seed(a.data, seed, overrides, a.keep)
        runs.append(r)
        print(f"seed {seed}: test {r['test_sequence_accuracy']:.2%} in {r['train_time_s']:.0f}s "
              f"({r['epochs']} epochs); to 95/98/99%: {fmt(r['time_to_95'])}/{fmt(r['time_to_98'])}/"
              f"{fmt(r['time_to_99'])} s", flush=True)

    def med(key: str):
        vals = [r[key] for r in runs if r[key] is not None]
        return statistics.median(vals) if len(vals) == len(runs) else None

    cols = ["seed", "test_sequence_accuracy", "test_n", "epochs", "train_time_s", "time_to_95", "time_to_98",
            "time_to_99"]
    head = "| " + " | ".join(cols) + " |"
    print("\n" + head + "\n|" + "---|" * len(cols))
    for r in runs:
        vals = [f"{r['test_sequence_accuracy']:.2%}" if c == "test_sequence_accuracy" else fmt(r[c]) for c in cols]
        print("| " + " | ".join(vals) + " |")
    summary = {c: med(c) for c in cols[1:]}
    print("| median | " + " | ".join(
        f"{summary[c]:.2%}" if c == "test_sequence_accuracy" and summary[c] is not None else fmt(summary[c])
        for c in cols[1:]) + " |")
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": a.data, "overrides": overrides, "median": summary, "runs": runs}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
