"""How many labelled captchas a style needs: held-out accuracy against training-set size, from
scratch, from the pretrained ddddocr backbone, and the default recipe with the rest of the pool as
unlabelled images (semi-supervised, training/semi.py), under the same time budget; with each output
model's reading speed.

    python benchmarks/learning_curve.py [--datasets captcha_v2 henan_digits4 generic_varlen]
        [--sizes 50 100 250 500 1000 all] [--starts scratch pretrained student own] [--seed 0] [--series semi]
        [--minutes-scale 1.0 | --minutes M] [--root ../shared/datasets]
        [--json benchmarks/results/learning_curve.json]
        [--plot benchmarks/results/learning_curve.png]

Per dataset, a seeded 10% is held out (the same images for every size and start). From the other
90%, N are drawn at random with the seed (benchmarks/student.py: drawn; the first N of one seeded
permutation, so each smaller set is part of every larger one; file names sort by label);
training takes its own 10% of them for validation, as ``captcha-crnn train`` does. Each point is
``captcha-crnn train POOL --max-minutes M`` with ``--pretrained off``, ``--pretrained on --reader big``
or, for the student, ``--unlabelled REST`` (the pool's other images), or with nothing unlabelled
``--distil on`` (distil) or ``--distil off`` (labels), with M = 3 (captcha_v2), 5
(henan_digits4) or 10 (generic_varlen, case-blind) minutes times --minutes-scale, or --minutes for
every point; every other setting is the default. Figures are sequence accuracy on the held-out images.

Speed: images/s from the held-out files' bytes to text (benchmarks/student.py: reading_speed), same run.
Prints a Markdown table, writes JSON and draws accuracy against labelled images (log x).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from captcha_crnn.data.labels import Sample, read_samples, write_csv
from captcha_crnn.data.split import split_items
from captcha_crnn.training import TrainConfig, train

sys.path.insert(0, str(Path(__file__).parent))
from datasets import DATASETS, Dataset, machine, parse_value, provenance  # noqa: E402
from student import drawn  # noqa: E402

# beside the shared sets, benchmarks/unseen_style.py's style (student.py's hard_200 images), generated into the run's
# temporary folder: a style the pretrained backbone has never seen
CURVE_SETS = {**DATASETS, "unseen_style": Dataset("unseen_style", "unseen_style/labels.csv", 10.0)}
# --series semi: the rest of the pool unlabelled, semi-supervised, at the budgets the semi-supervised issue names
SEMI_SERIES = [("captcha_v2", ["25", "100", "250"], 5.0), ("henan_digits4", ["25", "100", "250"], 5.0),
               ("generic_varlen", ["100", "250"], 10.0), ("unseen_style", ["100", "250"], 10.0)]

# each start as TrainConfig fields: from scratch, the ddddocr backbone, the project's own (`pretrain`)
# "student": the default recipe with the rest of the pool unlabelled, learnt from throughout training (semi-supervised)
# with nothing unlabelled, the recipe's two ways (--distil): "distil", the teacher first and the student learning
# its per-step readings of the labelled images; "labels", the student on the labels alone first, then the teacher
STARTS: dict[str, dict[str, Any]] = {"scratch": {"pretrained": "off"},
                                     "pretrained": {"pretrained": "on", "backbone_weights": "ddddocr", "reader": "big"},
                                     "own": {"pretrained": "on", "reader": "big"},
                                     "student": {},
                                     "distil": {"distil": "on"},
                                     "labels": {"distil": "off"}}


def point(ds: Dataset, pool: Path, test: Path, start: str, seed: int, minutes: float, tmp: Path,
          overrides: dict[str, Any], unlabelled: Path, speed_images: list[bytes]) -> dict[str, Any]:
    """Train one start on one pool under the budget; score it on the held-out images and time its reading."""
    from student import reading_speed

    extra = {"unlabelled": (str(unlabelled),)} if start == "student" else {}
    cfg = TrainConfig(out=str(tmp / f"{ds.name}-{pool.stem}-{start}"), max_minutes=minutes, seed=seed,
                      case=ds.case, test_data=str(test), progress=False,
                      **{**STARTS[start], **extra, **overrides})
    t0 = time.perf_counter()
    r = train(str(pool), cfg)
    assert r.test is not None
    recipe = r.recipe or {}
    output = (recipe.get("output") or {}).get("reader", "single model")
    used = [e["unlabelled_used"] for e in r.history if "unlabelled_used" in e]  # the output's own run
    kept = {"unlabelled_used_last": used[-1]} if used else {}
    return {"start": start, "sequence_accuracy": r.test.sequence_accuracy, "cer": r.test.cer, "test_n": r.test.n,
            "epochs": len(r.history), "train_minutes": r.history[-1]["time_s"] / 60, "output": output,
            "wall_minutes": (time.perf_counter() - t0) / 60, "val_sequence_accuracy": r.best["val_sequence_accuracy"],
            "images_per_s": round(reading_speed(r.model_path, speed_images), 1), **kept, **provenance()}


def kept_rows(out: Path, series: str, redone: list[str]) -> list[dict[str, Any]]:
    """The rows of an earlier run of `series` in `out` for the datasets not measured again, in its order."""
    if not out.is_file():
        return []
    old = json.loads(out.read_text())
    return [r for r in old["results"] if old.get("series") == series and r["dataset"] not in redone]


def measured_starts(rows: list[dict[str, Any]]) -> list[str]:
    """The starts every row of a run holds, in STARTS' order."""
    return [s for s in STARTS if all(s in r for r in rows)]


def link_folder(samples: list[Sample], folder: Path) -> Path:
    """A folder of links to the images of `samples` (the --unlabelled images of the student series)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(samples):
        (folder / f"{i:05d}{Path(s.path).suffix}").symlink_to(Path(s.path).resolve())
    return folder


def run_dataset(ds: Dataset, root: Path, sizes: list[str], starts: list[str], seed: int, minutes: float,
                tmp: Path, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    if ds.name == "unseen_style":
        from student import hard_style

        hard_style(tmp)  # 2500 images in tmp/hard
        root, ds = tmp, Dataset(ds.name, "hard/labels.csv", ds.minutes, ds.case)
    samples = sorted(read_samples(str(root / ds.path)), key=lambda s: s.path)
    pool, _, held = split_items(samples, seed, 0.0, 0.1)  # both in file order, which sorts by label
    test = write_csv(held, tmp / f"{ds.name}-test.csv")
    speed = [Path(s.path).read_bytes() for s in held[:300]]
    rows: list[dict[str, Any]] = []
    for size in sizes:
        n = len(pool) if size == "all" else min(int(size), len(pool))
        if any(r["labelled"] == n for r in rows):  # a size above the pool is the pool: measured once
            continue
        labelled, rest = drawn(pool, n, seed)  # at random, as a user's labels would be
        csv_path = write_csv(labelled, tmp / f"{ds.name}-{n}.csv")
        unlabelled = link_folder(rest, tmp / f"{ds.name}-{n}-unlabelled") if "student" in starts else tmp
        row: dict[str, Any] = {"dataset": ds.name, "labelled": n, "size": size, "budget_minutes": minutes,
                               "unlabelled": len(pool) - n if "student" in starts else 0}
        for start in starts:
            row[start] = point(ds, csv_path, test, start, seed, minutes, tmp, overrides, unlabelled, speed)
            p = row[start]
            print(f"{ds.name} n={n} {start}: {p['sequence_accuracy']:.2%} ({p['epochs']} epochs, "
                  f"{p['train_minutes']:.1f} min, {p['output']}, {p['images_per_s']:.0f} images/s)",
                  file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], starts: list[str]) -> str:
    cols = ["dataset", "labelled images", "budget (min)"] + [f"{s} start" for s in starts]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [r["dataset"], str(r["labelled"]), f"{r['budget_minutes']:g}"]
        vals += [f"{r[s]['sequence_accuracy']:.2%} ({r[s]['images_per_s']:.0f}/s)" if "images_per_s" in r[s]
                 else f"{r[s]['sequence_accuracy']:.2%}" for s in starts]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], starts: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        mine = [r for r in rows if r["dataset"] == name]
        for s in starts:
            ax.plot([r["labelled"] for r in mine], [100 * r[s]["sequence_accuracy"] for r in mine], "o-", label=s)
        ax.set_xscale("log")
        ax.set_xticks([r["labelled"] for r in mine], [str(r["labelled"]) for r in mine])
        ax.minorticks_off()
        ax.set_ylim(0, 101)
        ax.set_title(name)
        ax.set_xlabel("labelled images")
        ax.set_ylabel("held-out sequence accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=list(CURVE_SETS), default=list(DATASETS))
    ap.add_argument("--series", choices=["semi"], default=None,
                    help="semi: the student start with the rest of the pool unlabelled, 25/100/250 labels on "
                         "captcha_v2 and henan_digits4 at 5 minutes, 100/250 on generic_varlen and unseen_style at 10 "
                         "(instead of --sizes, --starts and --minutes; --datasets picks some of them, and the "
                         "--json file's rows of the others are kept)")
    ap.add_argument("--sizes", nargs="+", default=["50", "100", "250", "500", "1000", "all"])
    ap.add_argument("--starts", nargs="+", choices=list(STARTS), default=["scratch", "pretrained"])
    ap.add_argument("--own-weights", default=None, metavar="FILE", help="the own start's backbone file")
    ap.add_argument("--root", default="../shared/datasets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes-scale", type=float, default=1.0)
    ap.add_argument("--minutes", type=float, default=None,
                    help="one time budget for every point, instead of each dataset's budget times --minutes-scale")
    ap.add_argument("--replot", default=None, metavar="JSON", help="only redraw the plot and table of an earlier run")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="TrainConfig overrides for every point, e.g. epochs=200 (trials; the table uses defaults)")
    ap.add_argument("--json", default="benchmarks/results/learning_curve.json")
    ap.add_argument("--plot", default="benchmarks/results/learning_curve.png")
    a = ap.parse_args()
    if a.replot:
        rows = json.loads(Path(a.replot).read_text())["results"]
        held = measured_starts(rows)
        print(table(rows, held))
        plot(rows, held, Path(a.plot))
        return 0
    overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in a.set)}
    if "own" in a.starts and not a.own_weights:
        ap.error("--starts own needs --own-weights FILE (a backbone from `captcha-crnn pretrain`)")
    if a.own_weights:
        STARTS["own"]["backbone_weights"] = str(Path(a.own_weights).resolve())
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = SEMI_SERIES if a.series else [(n, a.sizes, a.minutes or CURVE_SETS[n].minutes * a.minutes_scale)
                                         for n in a.datasets]
    if a.series:
        a.starts = ["student"]
        if "--datasets" in sys.argv:
            plan = [p for p in plan if p[0] in a.datasets]
            rows = kept_rows(out, a.series, [p[0] for p in plan])
    with tempfile.TemporaryDirectory() as tmp:
        for name, sizes, minutes in plan:
            rows += run_dataset(CURVE_SETS[name], Path(a.root), sizes, a.starts, a.seed, minutes, Path(tmp), overrides)
            if a.series:  # kept rows and new ones in the series' order
                rows.sort(key=lambda r: [n for n, _, _ in SEMI_SERIES].index(r["dataset"]))
            report = {"seed": a.seed, "series": a.series, "minutes_scale": a.minutes_scale, "minutes": a.minutes,
                      "overrides": overrides,
                      "machine": machine(),
                      "load_average_before": load_before, "load_average_after": os.getloadavg(), "results": rows}
            out.write_text(json.dumps(report, indent=1))  # after every dataset: a long run keeps what it did
    print(table(rows, a.starts))
    plot(rows, a.starts, Path(a.plot))
    print(f"\nwrote {out} and {a.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
