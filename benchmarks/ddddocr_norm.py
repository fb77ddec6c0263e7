"""Which input normalisation the ddddocr model reads best with, zero-shot (no training).

ddddocr 1.6.1 feeds grey / 255 ("pixel"); the alternative is (grey / 255 - 0.5) / 0.5
("centered"). The pretrained backbone's `input_norm` is chosen from this measurement. Needs the
`pretrained` extra. Prints a table and writes JSON.

    python benchmarks/ddddocr_norm.py [--limit 300] [--json benchmarks/results/ddddocr_norm.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from datasets import DATASETS, ddddocr_reader
from harness import provenance, samples, save_runs

from captcha_crnn.evaluate import fold, score

NORMS = {"pixel": lambda x: x, "centered": lambda x: (x - 0.5) / 0.5}


class Normalised:
    """An onnxruntime session whose input (grey / 255, as ddddocr prepares it) is remapped first."""

    def __init__(self, session: Any, fn: Any):
        self.session, self.fn = session, fn

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def run(self, names: Any, feed: dict[str, Any]) -> Any:
        return self.session.run(names, {k: self.fn(v) for k, v in feed.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="../shared/datasets")
    ap.add_argument("--limit", type=int, default=300, help="images per set (the first in path order)")
    ap.add_argument("--json", default="benchmarks/results/ddddocr_norm.json")
    a = ap.parse_args()
    rows = []
    for ds in DATASETS.values():
        first = samples(a.root, ds.name)[: a.limit]
        row: dict[str, Any] = {"set": ds.name, "n": len(first)}
        for norm, fn in NORMS.items():
            ocr = ddddocr_reader("".join(sorted({c for s in first for c in fold(s.label, ds.case == "insensitive")})))
            ocr.ocr_engine.session = Normalised(ocr.ocr_engine.session, fn)
            preds = [ocr.classification(Path(s.path).read_bytes()) for s in first]
            rep = score([s.label for s in first], preds, case_insensitive=ds.case == "insensitive")
            row[norm] = rep.sequence_accuracy
        rows.append({**row, **provenance()})
    print("| set | n | pixel (grey / 255) | centered ((grey / 255 - 0.5) / 0.5) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['n']} | {r['pixel']:.2%} | {r['centered']:.2%} |")
    save_runs(a.json, rows)


if __name__ == "__main__":
    main()
