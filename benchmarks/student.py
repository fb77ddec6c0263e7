"""Teacher -> student: the default `train` on few labels and unlabelled images, held-out accuracy and the
output model's reading speed against the shipped captcha_v2 model, in the same run.

    python benchmarks/student.py [--scenarios v2_100_unlabelled v2_all v2_100 hard_200 henan_50]
        [--seeds 0 1 2] [--root ../shared/datasets] [--json benchmarks/results/student.json]

Scenarios (each the default `captcha-crnn train` with --max-minutes; held-out images never labelled).
Labelled subsets are drawn at random with the run's seed, as a user's labels would be (file names sort by
label: the first 25 captcha_v2 files all start with 2):
- v2_25_unlabelled: captcha_v2, 25 labelled, the other 911 as --unlabelled, 5 min; scored on those 911
  (their labels are never read).
- v2_100_unlabelled: captcha_v2, 100 labelled, the other 836 as --unlabelled, 5 min; scored on those 836.
- v2_all: captcha_v2, all 936 labelled, 3 min, one run per --seeds; scored on the seed's test split.
- v2_100: captcha_v2, 100 labelled, nothing unlabelled, 3 min; scored on the other 836.
- hard_200: benchmarks/unseen_style.py's style (6 case-sensitive characters of 62, lens, noisy colour),
  200 labelled and 1800 unlabelled, 10 min; scored on 500 more images of it.
- henan_50: henan_digits4, 50 labelled drawn at random with the seed from the seed-0 pool and the rest of the
  pool unlabelled, 5 min, one run per --seeds; scored on the seed-0 10% test split (benchmarks/learning_curve.py's).
- generic_250: generic_varlen, 250 labelled drawn at random (seed 0) from the seed-0 pool (case-blind) and the
  rest of the pool unlabelled, 10 min; scored on its test split.
- generic_all (only when named; benchmarks/time_curve.py measures this set): generic_varlen, the seed-0 pool
  labelled (case-blind), 10 min; scored on its test split.

Speed: images/s from file bytes to text (Recognizer.predict, default engine), median of 3 passes over
the held-out images, for the output model and the shipped captcha_v2 model on the same bytes.
Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from captcha_crnn import Recognizer
from captcha_crnn.data.labels import Sample, read_samples, write_csv
from captcha_crnn.data.split import split_items
from captcha_crnn.evaluate import fold
from captcha_crnn.training import TrainConfig, train

sys.path.insert(0, str(Path(__file__).parent))
from datasets import machine, parse_value, provenance  # noqa: E402


def reading_speed(model: str | Path, images: list[bytes], repeats: int = 3) -> float:
    """Images per second from bytes to text: the median of `repeats` passes after a warm-up."""
    rec = Recognizer.load(model)
    rec.predict(images[:64])
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rec.predict(images)
        rates.append(len(images) / (time.perf_counter() - t0))
    return statistics.median(rates)


MISSES_LISTED = 20  # a row names up to this many misreadings (file, label, reading)


def accuracy(model: str | Path, held: list[Sample], case: str) -> tuple[float, list[list[str]]]:
    """Sequence accuracy on `held` and the misreadings as [file name, label, reading]."""
    blind = case == "insensitive"
    preds = Recognizer.load(model).predict([s.path for s in held], errors="return")
    misses = [[Path(s.path).name, s.label, getattr(p, "text", "(unreadable)")] for p, s in zip(preds, held)
              if getattr(p, "text", None) is None or fold(p.text, blind) != fold(s.label, blind)]
    return (len(held) - len(misses)) / len(held), misses


OVERRIDES: dict[str, Any] = {}  # TrainConfig fields for every run (--set; trials, not the table's defaults)


def run(name: str, labelled: list[Sample], unlabelled: list[Sample], held: list[Sample], minutes: float,
        seed: int, tmp: Path, case: str = "sensitive") -> dict[str, Any]:
    """Train the default recipe, score the output on `held`, time it and the shipped model."""
    data = write_csv(labelled, tmp / f"{name}-{seed}-labelled.csv")
    unl = tmp / f"{name}-{seed}-unlabelled"
    unl.mkdir(exist_ok=True)
    for s in unlabelled:
        link = unl / (Path(s.path).parent.name + "_" + Path(s.path).name)
        if not link.exists():
            link.symlink_to(Path(s.path).resolve())
    cfg = TrainConfig(out=str(tmp / f"{name}-{seed}"), max_minutes=minutes, seed=seed, case=case,
                      unlabelled=(str(unl),) if unlabelled else (), progress=False, **OVERRIDES)
    t0 = time.perf_counter()
    r = train(str(data), cfg)
    wall = time.perf_counter() - t0
    recipe = r.recipe or {}
    sample = [Path(s.path).read_bytes() for s in held[:500]]
    out_speed = reading_speed(r.model_path, sample)
    peer_speed = reading_speed("captcha_v2", sample)
    acc, misses = accuracy(r.model_path, held, case)
    row = {"scenario": name, "seed": seed, "labelled": len(labelled), "unlabelled": len(unlabelled),
           "held_out": len(held), "budget_minutes": minutes, "wall_minutes": round(wall / 60, 2),
           "accuracy": acc, "misses": misses[:MISSES_LISTED],
           "reader": recipe.get("output", {}).get("reader", "single model"),
           "why": recipe.get("output", {}).get("why"),
           "images_per_s": round(out_speed, 1), "shipped_captcha_v2_images_per_s": round(peer_speed, 1),
           "speed_ratio": round(out_speed / peer_speed, 3), "overrides": dict(OVERRIDES), **provenance()}
    used = [e["unlabelled_used"] for e in r.history if "unlabelled_used" in e]
    if used:  # the output's last epoch: the share of unlabelled images whose readings taught, and who read them
        row.update(unlabelled_used_last=used[-1], unlabelled_reader_last=r.history[-1]["unlabelled_reader"])
    if recipe:
        t = recipe["teacher"]
        other = Path(r.out) / "teacher.safetensors"
        row.update(teacher_val=t["val"], student_val=recipe["student"]["val"], val_n=t["val_n"])
        if other.is_file():
            t_acc, t_misses = accuracy(other, held, case)
            row.update(teacher_accuracy=t_acc, teacher_misses=t_misses[:MISSES_LISTED])
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def v2(root: Path) -> list[Sample]:
    return sorted(read_samples(str(root / "captcha_v2")), key=lambda s: s.path)


def drawn(samples: list[Sample], n: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """n samples drawn at random (seeded) and the rest, both in file order."""
    order = random.Random(seed).sample(range(len(samples)), len(samples))
    pick = set(order[:n])
    return ([s for i, s in enumerate(samples) if i in pick], [s for i, s in enumerate(samples) if i not in pick])


def pool_split(root: Path, path: str, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """benchmarks/learning_curve.py's split: a seeded 90% pool and 10% held out, both in file order (labelled
    subsets are drawn from the pool with `drawn`)."""
    samples = sorted(read_samples(str(root / path)), key=lambda s: s.path)
    pool, _, held = split_items(samples, seed, 0.0, 0.1)
    return pool, held


def hard_style(tmp: Path) -> tuple[list[Sample], list[Sample], list[Sample]]:
    from unseen_style import generate

    folder = tmp / "hard"
    if not (folder / "labels.csv").is_file():
        generate(folder, 2500, seed=7)
    s = sorted(read_samples(str(folder / "labels.csv")), key=lambda x: int(Path(x.path).stem))
    return s[:200], s[200:2000], s[2000:]


def scenario(name: str, root: Path, seeds: list[int], tmp: Path) -> list[dict[str, Any]]:
    if name in ("v2_25_unlabelled", "v2_100_unlabelled"):
        rows = []
        for seed in seeds:
            lab, rest = drawn(v2(root), 25 if name.startswith("v2_25") else 100, seed)
            rows.append(run(name, lab, rest, rest, 5.0, seed, tmp))
        return rows
    if name == "v2_100":
        lab, rest = drawn(v2(root), 100, 0)
        return [run(name, lab, [], rest, 3.0, 0, tmp)]
    if name == "v2_all":
        rows = []
        for seed in seeds:
            _, _, test = split_items(v2(root), seed, 0.1, 0.1)  # the test split `train` makes for this seed
            rows.append(run(name, v2(root), [], test, 3.0, seed, tmp))
        return rows
    if name == "hard_200":
        lab, unl, held = hard_style(tmp)
        return [run(name, lab, unl, held, 10.0, 0, tmp)]
    if name == "henan_50":
        pool, held = pool_split(root, "henan_digits4/labels.csv")
        return [run(name, *drawn(pool, 50, seed), held, 5.0, seed, tmp) for seed in seeds]
    if name == "generic_250":
        pool, held = pool_split(root, "generic_varlen/labels.csv")
        return [run(name, *drawn(pool, 250, 0), held, 10.0, 0, tmp, case="insensitive")]
    if name == "generic_all":
        pool, held = pool_split(root, "generic_varlen/labels.csv")
        return [run(name, pool, [], held, 10.0, 0, tmp, case="insensitive")]
    raise SystemExit(f"unknown scenario {name}")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | labelled | unlabelled | budget | held-out accuracy | output | its teacher | unlabelled used "
             "(last epoch) | images/s (output / shipped captcha_v2) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = f"{r['unlabelled_used_last']:.0%}" if "unlabelled_used_last" in r else "-"
        teacher = f"{r['teacher_accuracy']:.2%}" if "teacher_accuracy" in r else "-"
        lines.append(f"| {r['scenario']} (seed {r['seed']}) | {r['labelled']} | {r['unlabelled']} | "
                     f"{r['budget_minutes']:g} min | {r['accuracy']:.2%} (n={r['held_out']}) | {r['reader']} | "
                     f"{teacher} | {kept} | {r['images_per_s']:.0f} / {r['shipped_captcha_v2_images_per_s']:.0f} "
                     f"({r['speed_ratio']:.2f}x) |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", default=["v2_25_unlabelled", "v2_100_unlabelled", "v2_all", "v2_100",
                                                       "hard_200", "henan_50", "generic_250"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--root", default="../shared/datasets")
    ap.add_argument("--json", default="benchmarks/results/student.json")
    ap.add_argument("--table", default=None, metavar="JSON", help="only print the table of an earlier run")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="TrainConfig overrides for every run, e.g. augment=strong (trials; the table uses defaults)")
    a = ap.parse_args()
    OVERRIDES.update({k: parse_value(v) for k, v in (item.split("=", 1) for item in a.set)})
    if a.table:
        print(table(json.loads(Path(a.table).read_text())["results"]))
        return 0
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text())["results"] if out.is_file() else []
    rows = list(old)  # rows not re-run (another scenario or seed) stay, each with the commit that measured it
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.scenarios:
            new = scenario(name, Path(a.root), a.seeds, Path(tmp))
            again = {(r["scenario"], r["seed"]) for r in new}
            rows = [r for r in rows if (r["scenario"], r["seed"]) not in again] + new
            out.write_text(json.dumps({"machine": machine(), "load_average_before": load_before,
                                       "load_average_after": os.getloadavg(), "results": rows}, indent=1))
    print(table(rows))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
