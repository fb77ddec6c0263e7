"""Train with the default settings on each shared dataset under a time budget; compare with ddddocr.

    python benchmarks/datasets.py [--datasets captcha_v2 henan_digits4 generic_varlen securimage] [--seed 0]
        [--minutes-scale 1.0] [--keep DIR] [--set FIELD=VALUE ...] [--root ../shared/datasets]
        [--json benchmarks/results/datasets.json] [--table JSON]

Each dataset: ``captcha-crnn train DATA --max-minutes M`` (M: harness.DATASETS, times --minutes-scale;
generic_varlen case-blind) on the default seeded split. Its test split, never trained on, is read by the
output (benchmarks/harness.py: accuracy, speed against the shipped captcha_v2 model) and by ddddocr
zero-shot (``set_ranges`` to the model's alphabet; the file's bytes, and with ``png_fix=True``).
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import harness
from harness import DATASETS, Scenario, Trained, markdown, measure, parse, whole

from captcha_crnn.data.labels import Sample
from captcha_crnn.evaluate import score
from captcha_crnn.model.format import read_metadata

common_args, save_runs, saved_runs = harness.common_args, harness.save_runs, harness.saved_runs  # train_throughput.py


def ddddocr_scores(test: list[Sample], alphabet: str, case: str) -> dict[str, Any]:
    """ddddocr's zero-shot figures on the test images (its bundled model restricted to `alphabet`), from the file
    bytes and with png_fix."""
    import ddddocr

    ocr, out = ddddocr.DdddOcr(show_ad=False), {}
    ocr.set_ranges(alphabet)
    for name, png_fix in (("ddddocr", False), ("ddddocr_png_fix", True)):
        preds, t0 = [], time.perf_counter()
        for s in test:
            try:
                preds.append(ocr.classification(Path(s.path).read_bytes(), png_fix=png_fix))
            except Exception as e:  # noqa: BLE001 - a miss
                print(f"{name}: {s.path}: {e}", file=sys.stderr)
                preds.append("")
        rep = score([s.label for s in test], preds, case_insensitive=case == "insensitive")
        out[name] = {"sequence_accuracy": rep.sequence_accuracy, "cer": rep.cer, "n": rep.n,
                     "ms_per_image": 1000 * (time.perf_counter() - t0) / max(1, len(test))}
    return out


def describe(t: Trained, sc: Scenario) -> dict[str, Any]:
    """The dataset's labels, the output model's alphabet and input, and ddddocr on the same images."""
    labels = [s.label.lower() if sc.case == "insensitive" else s.label for s in sc.labelled]
    meta = read_metadata(t.result.model_path)
    return {"dataset": sc.name, "case": sc.case, "images": len(labels), "length_min": min(map(len, labels)),
            "length_max": max(map(len, labels)), "alphabet_size": len(set("".join(labels))),
            "model_alphabet": meta["alphabet"], "preprocess": meta["preprocess"],
            **ddddocr_scores(sc.held, meta["alphabet"], sc.case)}


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per dataset."""
    return markdown(["dataset", "images", "lengths", "alphabet", "train min", "test n", "sequence accuracy", "images/s",
                     "ddddocr"], ([r["dataset"] + (" (case-blind)" if r["case"] == "insensitive" else ""), r["images"],
                                   f"{r['length_min']}-{r['length_max']}", r["alphabet_size"],
                                   f"{r['train_minutes']:.1f}", r["held_out"], f"{r['accuracy']:.2%}",
                                   f"{r['images_per_s']:.0f}",
                                   f"{r['ddddocr']['sequence_accuracy']:.2%}"] for r in rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, init and augmentation")
    ap.add_argument("--minutes-scale", type=float, default=1.0, help="multiply every time budget (smoke tests)")
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep each run's outputs in DIR/<dataset>-<seed>")
    a = parse(ap, "benchmarks/results/datasets.json", table)
    todo = (whole(a.root, name, a.seed, DATASETS[name].minutes * a.minutes_scale) for name in a.datasets)
    print(table(measure(todo, a, extra=describe, keep=a.keep)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
