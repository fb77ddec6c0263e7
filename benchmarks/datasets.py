"""Train with the default settings on each shared dataset under a time budget; compare with ddddocr.

    python benchmarks/datasets.py [--datasets captcha_v2 henan_digits4 generic_varlen] [--seed 0]
        [--minutes-scale 1.0] [--root ../shared/datasets] [--keep DIR] [--set FIELD=VALUE ...]
        [--json benchmarks/results/datasets.json]

Each dataset trains as ``captcha-crnn train DATA --max-minutes M`` would (TrainConfig defaults:
automatic colour, input size, model size and augmentation, warm start from the shipped `synthetic`
model, at most 30 epochs, early stopping), with M = 3 (captcha_v2), 5 (henan_digits4) or 10
(generic_varlen) minutes times --minutes-scale. generic_varlen trains with ``--case insensitive``:
its labels are lower case and glyph case in its images does not follow them.

Split: the default seeded split of ``captcha-crnn train`` (seed --seed): 10% held out for test;
of the other 90%, 10 points are the validation set that picks the best epoch and stops early, 80
points are trained on. Every figure in the table is on the held-out test images, which training
never sees: sequence accuracy and CER of the best epoch's model (greedy decoding), and ddddocr's
zero-shot sequence accuracy (its bundled model, ``set_ranges`` to the dataset's alphabet, the image
file's bytes as given; the JSON also has ddddocr with ``png_fix=True``, its own compositing of
transparent PNGs onto white). Comparisons are case-blind where the training is (generic_varlen).

Prints a table and writes JSON (default benchmarks/results/datasets.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captcha_crnn.data.labels import Sample, read_samples
from captcha_crnn.evaluate import score
from captcha_crnn.model.modelfile import read_metadata
from captcha_crnn.training import TrainConfig, train
from captcha_crnn.training.data import load_data


def parse_value(v: str) -> Any:
    """A --set value: an int, a float, none/true/false, or the text."""
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(v.lower(), v)


@dataclass(frozen=True)
class Dataset:
    """A shared dataset: where its labels are, its time budget and how labels compare."""

    name: str
    path: str  # relative to --root: a folder (label = file stem) or a labels.csv
    minutes: float
    case: str = "sensitive"


DATASETS = {
    "captcha_v2": Dataset("captcha_v2", "captcha_v2", 3.0),
    "henan_digits4": Dataset("henan_digits4", "henan_digits4/labels.csv", 5.0),
    "generic_varlen": Dataset("generic_varlen", "generic_varlen/labels.csv", 10.0, case="insensitive"),
}


def describe_labels(samples: list[Sample], case: str) -> dict[str, Any]:
    """Image count, label lengths and alphabet of a whole dataset (labels folded as training folds them)."""
    labels = [s.label.lower() if case == "insensitive" else s.label for s in samples]
    lengths = [len(s) for s in labels]
    chars = "".join(sorted(set("".join(labels))))
    return {"images": len(labels), "length_min": min(lengths), "length_max": max(lengths),
            "alphabet": chars, "alphabet_size": len(chars)}


def ddddocr_reader(alphabet: str) -> Any:
    """ddddocr's bundled model restricted to `alphabet`."""
    import ddddocr

    ocr = ddddocr.DdddOcr(show_ad=False)
    ocr.set_ranges(alphabet)
    return ocr


def ddddocr_scores(test: list[Sample], alphabet: str, case: str) -> dict[str, Any]:
    """ddddocr's zero-shot figures on the test images, from the file bytes and with png_fix."""
    ocr = ddddocr_reader(alphabet)
    truths = [s.label for s in test]
    out: dict[str, Any] = {}
    for key, png_fix in (("ddddocr", False), ("ddddocr_png_fix", True)):
        preds, t0 = [], time.perf_counter()
        for s in test:
            try:
                preds.append(ocr.classification(Path(s.path).read_bytes(), png_fix=png_fix))
            except Exception as e:  # noqa: BLE001 - an image ddddocr cannot read counts as a miss
                print(f"{key}: {s.path}: {e}", file=sys.stderr)
                preds.append("")
        rep = score(truths, preds, case_insensitive=case == "insensitive")
        out[key] = {"sequence_accuracy": rep.sequence_accuracy, "cer": rep.cer, "n": rep.n,
                    "ms_per_image": 1000 * (time.perf_counter() - t0) / max(1, len(test))}
    return out


def run_dataset(ds: Dataset, root: Path, seed: int, scale: float, keep: Path | None,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on one dataset with the default settings (plus `overrides`) under its budget; score ours
    and ddddocr."""
    data = str(root / ds.path)
    minutes = ds.minutes * scale
    cfg = dict(seed=seed, max_minutes=minutes, case=ds.case, progress=False, **(overrides or {}))
    samples = read_samples(data)
    _, _, test, how = load_data(TrainConfig(data=data, **cfg))  # the split train() makes
    print(f"{ds.name}: {len(samples)} images, training for up to {minutes:g} min; {how}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        out = keep / ds.name if keep else Path(tmp)
        t0 = time.perf_counter()
        r = train(data, TrainConfig(out=str(out), **cfg))
        wall = time.perf_counter() - t0
        meta = read_metadata(r.model_path)
    if r.test is None:
        raise SystemExit(f"{ds.name}: no test images were scored")
    model_alphabet = meta["alphabet"]
    return {
        "dataset": ds.name, "data": data, "case": ds.case, "budget_minutes": minutes, "split": how,
        **describe_labels(samples, ds.case),
        "train_minutes": r.history[-1]["time_s"] / 60, "wall_minutes": wall / 60, "epochs": len(r.history),
        "best_epoch": r.best["epoch"], "val_sequence_accuracy": r.best["val_sequence_accuracy"],
        "test_n": r.test.n, "sequence_accuracy": r.test.sequence_accuracy, "cer": r.test.cer,
        "char_accuracy": r.test.char_accuracy, "model_alphabet": model_alphabet,
        "preprocess": meta["preprocess"], "config": meta["training"]["config"],
        **ddddocr_scores(test, model_alphabet, ds.case),
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), **provenance()}


def provenance() -> dict[str, Any]:
    """The code a figure was measured with: the commit (with "+changes" when src/ differs from it) and version."""
    import subprocess

    from captcha_crnn.version import __version__

    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent)
        return r.stdout.strip() if r.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "../src"):
        commit += "+changes"
    return {"commit": commit, "captcha_crnn": __version__}


def model_provenance(path: str | Path) -> dict[str, Any]:
    """What shapes a model file's figures: its sha256, input height and channels, backbone."""
    import hashlib

    from captcha_crnn.model.format import parse_metadata, read_metadata

    spec = parse_metadata(read_metadata(path), str(path))
    return {"model_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "model_height": spec.preprocess.height, "model_channels": spec.preprocess.channels,
            "model_backbone": spec.arch.backbone}


def common_args(ap: argparse.ArgumentParser, json_default: str) -> None:
    """--root (the shared datasets), --json (results, kept across runs), --table (print a saved one)."""
    ap.add_argument("--root", default="../shared/datasets", help="folder holding the datasets")
    ap.add_argument("--json", default=json_default)
    ap.add_argument("--table", help="print the table of this JSON and exit")


def saved_runs(path: str | Path) -> list[dict[str, Any]]:
    """The runs in an earlier --json file (a benchmark keeps those its new runs do not replace), or []."""
    p = Path(path)
    return json.loads(p.read_text())["runs"] if p.is_file() else []


def save_runs(path: str | Path, runs: list[dict[str, Any]], **extra: Any) -> None:
    """Write {"machine", extra..., "runs"} as JSON to path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"machine": machine(), **extra, "runs": runs}, indent=1))


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per dataset."""
    cols = ["dataset", "images", "lengths", "alphabet", "train min", "test n", "sequence accuracy", "CER",
            "ddddocr"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [r["dataset"] + (" (case-blind)" if r["case"] == "insensitive" else ""), str(r["images"]),
                f"{r['length_min']}-{r['length_max']}", str(r["alphabet_size"]), f"{r['train_minutes']:.1f}",
                str(r["test_n"]), f"{r['sequence_accuracy']:.2%}", f"{r['cer']:.4f}",
                f"{r['ddddocr']['sequence_accuracy']:.2%}"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--root", default="../shared/datasets", help="folder holding the datasets")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, init and augmentation")
    ap.add_argument("--minutes-scale", type=float, default=1.0, help="multiply every time budget (smoke tests)")
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep each run's outputs in DIR/<dataset>")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="TrainConfig fields instead of the defaults, e.g. backbone_weights=FILE")
    ap.add_argument("--json", default="benchmarks/results/datasets.json")
    a = ap.parse_args()
    overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in a.set)}
    keep = Path(a.keep) if a.keep else None
    load_before = os.getloadavg()
    rows = []
    for name in a.datasets:
        r = run_dataset(DATASETS[name], Path(a.root), a.seed, a.minutes_scale, keep, overrides)
        rows.append(r)
        print(f"{name}: test {r['sequence_accuracy']:.2%} (ddddocr {r['ddddocr']['sequence_accuracy']:.2%})",
              file=sys.stderr, flush=True)
    print(table(rows))
    report = {"seed": a.seed, "minutes_scale": a.minutes_scale, "overrides": overrides, "machine": machine(),
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "results": rows}
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
