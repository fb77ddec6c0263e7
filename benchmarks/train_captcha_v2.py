"""Train the default model on captcha_v2 for several seeds; time to 95/98/99% held-out accuracy.

    python benchmarks/train_captcha_v2.py [--seeds 0 1 2] [--set FIELD=VALUE ...] [--root ../shared/datasets]
        [--keep DIR] [--json bench_out/train_captcha_v2.json] [--table JSON]

Each seed: the default `captcha-crnn train` on its seeded 80/10/10 split (benchmarks/harness.py); after
every epoch the model reads the test split (not counted as training time). --keep DIR keeps the runs
(DIR/captcha_v2-0/model.safetensors: the held-out model benchmarks/inference.py scores accuracy with).
Prints a table with the median and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from harness import Scenario, markdown, measure, parse, read, whole

from captcha_crnn import Recognizer

THRESHOLDS = (95, 98, 99)
COLS = ("accuracy", "held_out", "epochs", "train_minutes", "time_to_95", "time_to_98", "time_to_99")


def table(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any, col: str) -> str:
        return "-" if v is None else f"{v:.2%}" if col == "accuracy" else f"{v:.1f}" if isinstance(v, float) else str(v)

    middle = {c: statistics.median(v) if len(v := [r[c] for r in rows if r.get(c) is not None]) == len(rows) else None
              for c in COLS}
    return markdown(["seed", *COLS], [[r["seed"], *(cell(r.get(c), c) for c in COLS)] for r in rows] +
                    [["median", *(cell(middle[c], c) for c in COLS)]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep each seed's run folder in DIR/captcha_v2-<seed>")
    a = parse(ap, "bench_out/train_captcha_v2.json", table)
    curves: dict[int, list[dict[str, Any]]] = {}

    def hook(sc: Scenario) -> Any:  # after each epoch (not counted as training time): the held-out accuracy
        curves[sc.seed] = []
        return lambda rec, bundle: curves[sc.seed].append(
            {"epoch": rec["epoch"], "time_s": rec["time_s"], "val_sequence_accuracy": rec["val_sequence_accuracy"],
             "test_sequence_accuracy": read(Recognizer(bundle), sc.held, sc.case)[0]["accuracy"]})

    def reached(t: Any, sc: Scenario) -> dict[str, Any]:
        hit = {th: next((c for c in curves[sc.seed] if c["test_sequence_accuracy"] >= th / 100), {})
               for th in THRESHOLDS}
        return {"curve": curves[sc.seed], **{f"time_to_{th}": hit[th].get("time_s") for th in THRESHOLDS},
                **{f"epoch_to_{th}": hit[th].get("epoch") for th in THRESHOLDS}}

    todo = (whole(a.root, "captcha_v2", s, None) for s in a.seeds)
    print(table(measure(todo, a, [], extra=reached, keep=a.keep, hook=hook)))


if __name__ == "__main__":
    main()
