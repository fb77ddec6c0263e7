"""How many labelled captchas a style needs: held-out accuracy and reading speed against the number of
labelled images, from scratch, from the pretrained ddddocr backbone, and the default recipe with the rest
of the pool unlabelled (semi-supervised), under the same time budget.

    python benchmarks/learning_curve.py [--datasets captcha_v2 ...] [--sizes 50 100 250 500 1000 all]
        [--starts scratch pretrained student] [--seed 0] [--series semi] [--minutes M] [--set FIELD=VALUE ...]
        [--root ../shared/datasets] [--json benchmarks/results/learning_curve.json] [--plot PNG] [--table JSON]

Per dataset a seeded 10% is held out and given to training as --test-data; of the other 90%, N are drawn
at random with the seed (benchmarks/harness.py: each smaller set is part of every larger one). A point:
``captcha-crnn train POOL --max-minutes M`` with ``--pretrained off`` (scratch), ``--pretrained on --reader
big`` (pretrained) or ``--unlabelled REST`` (student), M the dataset's budget (harness.DATASETS) or
--minutes. Prints a table, writes JSON (a row per point), plots accuracy against labels (log x).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness import DATASETS, Scenario, drawn, held_out, markdown, measure, parse, samples, saved_runs

# --series semi: the student start at the sizes and budgets the semi-supervised issue names
SEMI_SERIES = [("captcha_v2", ["25", "100", "250"], 5.0), ("henan_digits4", ["25", "100", "250"], 5.0),
               ("generic_varlen", ["100", "250"], 10.0), ("securimage", ["100", "250"], 10.0)]
STARTS: dict[str, dict[str, Any]] = {"scratch": {"pretrained": "off"},
                                     "pretrained": {"pretrained": "on", "backbone_weights": "ddddocr", "reader": "big"},
                                     "student": {}}


def points(plan: list[tuple[str, list[str], float]], a: argparse.Namespace, info: dict[str, dict[str, Any]]) -> Any:
    """A Scenario per dataset, size and start (info: each one's dataset, size and start, for its row)."""
    for name, sizes, minutes in plan:
        pool, held = held_out(samples(a.root, name), a.seed)
        sizes = {len(pool) if size == "all" else min(int(size), len(pool)): size for size in reversed(sizes)}
        for n, size in sorted(sizes.items()):  # a size above the pool is the pool: measured once, the first named
            labelled, rest = drawn(pool, n, a.seed)
            for start in a.starts:
                sc = Scenario(f"{name}_{n}_{start}", labelled, held, rest if start == "student" else [], minutes,
                              DATASETS[name].case, a.seed, dict(STARTS[start]), held_as_test=True)
                info[sc.name] = {"dataset": name, "size": size, "start": start}
                yield sc


def starts(rows: list[dict[str, Any]]) -> list[str]:
    """The starts the rows hold, in STARTS' order."""
    return [s for s in STARTS if any(r["start"] == s for r in rows)]


def table(rows: list[dict[str, Any]]) -> str:
    """Per dataset and size, each start's held-out accuracy and images/s."""
    cells = {(r["dataset"], r["labelled"], r["start"]): f"{r['accuracy']:.2%}" + (
        f" ({r['images_per_s']:.0f}/s)" if "images_per_s" in r else "") for r in rows}
    return markdown(["dataset", "labelled images", "budget (min)", *(f"{s} start" for s in starts(rows))], (
        [ds, n, f"{m:g}", *(cells.get((ds, n, s), "-") for s in starts(rows))]
        for ds, n, m in dict.fromkeys((r["dataset"], r["labelled"], r["budget_minutes"]) for r in rows)))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        mine = [r for r in rows if r["dataset"] == name]
        for s in starts(mine):
            ax.plot([r["labelled"] for r in mine if r["start"] == s],
                    [100 * r["accuracy"] for r in mine if r["start"] == s], "o-", label=s)
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["labelled"] for r in mine}), [str(n) for n in sorted({r["labelled"] for r in mine})])
        ax.minorticks_off()
        ax.set(ylim=(0, 101), title=name, xlabel="labelled images", ylabel="held-out sequence accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), help="default: all but securimage (--series: all)")
    ap.add_argument("--series", choices=["semi"], help="semi: the student start, 25/100/250 labels at 5 min "
                    "(captcha_v2, henan_digits4), 100/250 at 10 (generic_varlen, securimage); no --sizes, --starts")
    ap.add_argument("--sizes", nargs="+", default=["50", "100", "250", "500", "1000", "all"])
    ap.add_argument("--starts", nargs="+", choices=list(STARTS), default=["scratch", "pretrained"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=None, help="one budget for every point (default: the dataset's)")
    ap.add_argument("--plot", default="benchmarks/results/learning_curve.png")
    a = parse(ap, "benchmarks/results/learning_curve.json", table)
    a.starts = ["student"] if a.series else a.starts
    plan = [p for p in SEMI_SERIES if p[0] in (a.datasets or DATASETS)] if a.series else [
        (n, a.sizes, a.minutes or DATASETS[n].minutes) for n in a.datasets or list(DATASETS)[:3]]
    info: dict[str, dict[str, Any]] = {}  # rows of sets no longer here go
    rows = measure(points(plan, a, info), a, [r for r in saved_runs(a.json) if r["dataset"] in DATASETS],
                   extra=lambda t, sc: info[sc.name])
    rows.sort(key=lambda r: (list(DATASETS).index(r["dataset"]), r["labelled"]))
    print(table(rows))
    plot(rows, Path(a.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
