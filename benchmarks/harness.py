"""The benchmarks' harness, not a benchmark: the scripts beside it use it (`python benchmarks/student.py
--help`). A Scenario holds labelled images (drawn at random with a seed: `drawn`), an unlabelled pool, a
held-out set, a budget, the case rule and TrainConfig overrides (a script's --set reaches every scenario
through them). `run` trains, reads the held-out images with Recognizer.predict (case-folded where the
scenario is case-blind; a label with characters outside the model's alphabet is a miss, and the row
counts them), times images/s from bytes to text against the shipped captcha_v2 model on the same bytes
(median of 3 passes) and records the provenance: commit ("+changes" when src/ differs), version, date,
precision (from the output's plan.json), load averages. Results: {"benchmark", "command", "machine", "rows"}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captcha_crnn import Recognizer, TrainConfig, train
from captcha_crnn.data.labels import Sample, read_samples, write_csv
from captcha_crnn.data.split import split_items
from captcha_crnn.evaluate import fold

MISSES_LISTED = 20  # a row names up to this many misreadings: [file name, label, reading]
SPEED_IMAGES = 500  # held-out images timed
KEY = ("scenario", "seed", "budget_minutes")  # a new row replaces an earlier one of the same


# a shared dataset: its name, path under --root (a folder, label = file stem, or a labels.csv), budget, case rule
Dataset = namedtuple("Dataset", "name path minutes case", defaults=("sensitive",))
DATASETS = {d.name: d for d in (Dataset("captcha_v2", "captcha_v2", 3.0),
                                Dataset("henan_digits4", "henan_digits4/labels.csv", 5.0),
                                Dataset("generic_varlen", "generic_varlen/labels.csv", 10.0, case="insensitive"),
                                Dataset("securimage", "securimage/labels.csv", 10.0))}


def samples(root: str | Path, dataset: str) -> list[Sample]:
    """A dataset's labelled images in file order."""
    return sorted(read_samples(str(Path(root) / DATASETS[dataset].path)), key=lambda s: s.path)


def drawn(items: list[Sample], n: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """n items drawn at random (seeded) and the rest, both in file order."""
    pick = set(random.Random(seed).sample(range(len(items)), len(items))[:n])
    return [s for i, s in enumerate(items) if i in pick], [s for i, s in enumerate(items) if i not in pick]


def held_out(items: list[Sample], seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """A seeded 90% pool and 10% held out, both in file order (labelled subsets are drawn from the pool)."""
    pool, _, held = split_items(items, seed, 0.0, 0.1)
    return pool, held


@dataclass
class Scenario:
    name: str
    labelled: list[Sample]
    held: list[Sample]  # never trained on (with held_as_test, training scores them too)
    unlabelled: list[Sample] = field(default_factory=list)
    minutes: float | None = 5.0
    case: str = "sensitive"
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (--set)
    held_as_test: bool = False  # `held` is train's --test-data: it splits no test set off the labels
    data: str | None = None  # the folder or CSV `labelled` came from, trained on as it is


def whole(root: str | Path, dataset: str, seed: int, minutes: float | None) -> Scenario:
    """A dataset as it is, all labelled, scored on the test split `train` makes with the seed (10%, from 300)."""
    every, ds = samples(root, dataset), DATASETS[dataset]
    return Scenario(dataset, every, split_items(every, seed, 0.1, 0.1)[2], [], minutes, ds.case, seed,
                    data=str(Path(root) / ds.path))


# a run's row, its TrainResult and the output's reading of each held-out image (folded as the scenario compares)
Trained = namedtuple("Trained", "row result readings")


def read(model: str | Path | Recognizer, held: list[Sample], case: str) -> tuple[dict[str, Any], list[str | None]]:
    """Sequence accuracy on `held`, the misreadings, how many labels are outside the alphabet; each reading."""
    rec = model if isinstance(model, Recognizer) else Recognizer.load(model)
    blind = case == "insensitive"
    reads = [None if getattr(p, "text", None) is None else fold(p.text, blind)
             for p in rec.predict([s.path for s in held], errors="return")]
    truths = [fold(s.label, blind) for s in held]
    misses = [[Path(s.path).name, s.label, r or "(unreadable)"] for s, t, r in zip(held, truths, reads) if r != t]
    return {"accuracy": (len(held) - len(misses)) / len(held), "misses": misses[:MISSES_LISTED],
            "outside_alphabet": sum(bool(set(t) - set(fold(rec.alphabet.chars, blind))) for t in truths)}, reads


def speeds(model: str | Path, held: list[Sample], repeats: int = 3) -> dict[str, Any]:
    """Images/s from bytes to text (median of `repeats` passes) of the model and the shipped captcha_v2 model."""
    images, rates = [Path(s.path).read_bytes() for s in held[:SPEED_IMAGES]], {}
    for name in (model, "captcha_v2"):
        rec, passes = Recognizer.load(name), []
        rec.predict(images[:64])
        for _ in range(repeats):
            t0 = time.perf_counter()
            rec.predict(images)
            passes.append(len(images) / (time.perf_counter() - t0))
        rates[name] = statistics.median(passes)
    return {"images_per_s": round(rates[model], 1), "shipped_captcha_v2_images_per_s": round(rates["captcha_v2"], 1),
            "speed_ratio": round(rates[model] / rates["captcha_v2"], 3)}


def precision(out: Path) -> str | None:
    """The arithmetic the run trained with: every "precision" key of its plan.json, whatever the layout."""
    plan = Path(out) / "plan.json"
    found = re.findall(r'"precision"\s*:\s*"(\w+)"', plan.read_text()) if plan.is_file() else []
    return "/".join(dict.fromkeys(p for p in found if p != "auto")) or None  # auto: what was asked


def run(sc: Scenario, tmp: str | Path, speed: bool = True, on_epoch: Callable | None = None) -> Trained:
    """Train the scenario into tmp/<name>-<seed>, read its held-out images and time it (with `speed`)."""
    load_before, out = os.getloadavg(), Path(tmp) / f"{sc.name}-{sc.seed}"
    extra: dict[str, Any] = {"test_data": str(write_csv(sc.held, f"{out}-held.csv"))} if sc.held_as_test else {}
    if sc.unlabelled:
        Path(f"{out}-unlabelled").mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(sc.unlabelled):
            Path(f"{out}-unlabelled/{i:05d}{Path(s.path).suffix}").symlink_to(Path(s.path).resolve())
        extra["unlabelled"] = (f"{out}-unlabelled",)
    cfg = TrainConfig(**{"out": str(out), "max_minutes": sc.minutes, "seed": sc.seed, "case": sc.case,
                         "progress": False, **extra, **sc.overrides})
    t0 = time.perf_counter()
    r = train(sc.data or str(write_csv(sc.labelled, f"{out}-labelled.csv")), cfg, on_epoch=on_epoch)
    wall = time.perf_counter() - t0
    scores, reads = read(r.model_path, sc.held, sc.case)
    output = (r.recipe or {}).get("output", {})
    row = {"scenario": sc.name, "seed": sc.seed, "labelled": len(sc.labelled), "unlabelled": len(sc.unlabelled),
           "held_out": len(sc.held), "budget_minutes": cfg.max_minutes, "wall_minutes": round(wall / 60, 2), **scores,
           "reader": output.get("reader", "single model"), "why": output.get("why"), "epochs": len(r.history),
           "train_minutes": r.history[-1]["time_s"] / 60 if r.history else None, "overrides": dict(sc.overrides),
           "precision": precision(r.out), **(speeds(r.model_path, sc.held) if speed else {})}
    used = [e["unlabelled_used"] for e in r.history if "unlabelled_used" in e]
    if used:  # the output's last epoch: the share of unlabelled images whose readings taught, and who read them
        row.update(unlabelled_used_last=used[-1], unlabelled_reader_last=r.history[-1].get("unlabelled_reader"))
    if r.recipe:
        t, teacher = r.recipe["teacher"], Path(r.out) / "teacher.safetensors"
        row.update(teacher_val=t["val"], student_val=r.recipe["student"]["val"], val_n=t["val_n"])
        if teacher.is_file():
            t_scores = read(teacher, sc.held, sc.case)[0]
            row.update(teacher_accuracy=t_scores["accuracy"], teacher_misses=t_scores["misses"])
    row.update(provenance(), load_average_before=load_before, load_average_after=os.getloadavg())
    return Trained(row, r, reads)


def provenance() -> dict[str, Any]:
    """The code a figure was measured with, and when: commit (+changes where src/ differs), version, date."""
    from captcha_crnn.version import __version__

    git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True,  # noqa: E731
                                       cwd=Path(__file__).parent).stdout.strip()
    changes = "+changes" if git("status", "--porcelain", "--", "../src") else ""
    return {"commit": (git("rev-parse", "--short", "HEAD") or "unknown") + changes, "captcha_crnn": __version__,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def machine() -> dict[str, Any]:
    """The CPU (model, cores, whether it computes bf16), the platform, Python, and the code."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    return {"cpu": model[1] if model else platform.processor(), "cores": os.cpu_count(),
            "bf16": bool(re.search(r"^flags\s*:.*\b(avx512_bf16|amx_bf16)\b", info, re.M)),
            "platform": platform.platform(), "python": platform.python_version(), **provenance()}


def rows_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a results file ("runs" in train_throughput.json's older layout)."""
    return data["rows"] if "rows" in data else data["runs"]


def saved_runs(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an earlier results file (a benchmark keeps those its new runs do not replace), or []."""
    return rows_of(json.loads(Path(path).read_text())) if Path(path).is_file() else []


def save_runs(path: str | Path, rows: list[dict[str, Any]], **extra: Any) -> None:
    """Write the results layout: the benchmark, the command that ran, the machine, extra, the rows."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"benchmark": Path(sys.argv[0]).stem, "command": shlex.join(["python", *sys.argv]),
                                      "machine": machine(), **extra, "rows": rows}, indent=1))


def setting(item: str) -> tuple[str, Any]:
    """A --set FIELD=VALUE: the value a number, none/true/false, or the text."""
    name, _, v = item.partition("=")
    try:
        return name, json.loads(v.lower() if v.lower() in ("true", "false") else v)
    except ValueError:
        return name, None if v.lower() == "none" else v


def common_args(ap: argparse.ArgumentParser, json_default: str) -> None:
    """--root (the shared datasets), --json (results, kept across runs), --table (print a saved one), --set."""
    ap.add_argument("--root", default="../shared/datasets", help="folder holding the datasets")
    ap.add_argument("--json", default=json_default)
    ap.add_argument("--table", metavar="JSON", help="print the table of this results file and exit")
    ap.add_argument("--set", nargs="*", default=[], type=setting, metavar="FIELD=VALUE",
                    help="TrainConfig fields for every scenario, e.g. augment=strong (trials; tables use defaults)")


def parse(ap: argparse.ArgumentParser, json_default: str, table: Callable[[Any], str]) -> argparse.Namespace:
    """The arguments, with common_args'; --table JSON prints table(its rows) and exits."""
    common_args(ap, json_default)
    a = ap.parse_args()
    if a.table:
        sys.exit(print(table(saved_runs(a.table))))
    return a


def markdown(head: list[str], rows: Iterable[list[Any]]) -> str:
    """A Markdown table."""
    line = lambda cells: "| " + " | ".join(map(str, cells)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "---|" * len(head), *map(line, rows)])


def measure(scenarios: Iterable[Scenario], a: argparse.Namespace, rows: list[dict[str, Any]] | None = None,
            extra: Callable[[Trained, Scenario], dict[str, Any]] | None = None, keep: str | None = None,
            hook: Callable[[Scenario], Callable] | None = None) -> list[dict[str, Any]]:
    """Run each scenario with --set's overrides (in `keep`, else a temporary folder), add extra(trained, scenario)
    to its row; after each write --json: `rows` (default: the file's) less those of the same KEY, then the new."""
    rows = saved_runs(a.json) if rows is None else rows
    with tempfile.TemporaryDirectory() as tmp:
        for sc in scenarios:
            sc.overrides = {**sc.overrides, **dict(a.set)}
            t = run(sc, keep or tmp, on_epoch=hook(sc) if hook else None)
            row = {**t.row, **(extra(t, sc) if extra else {})}
            rows = [r for r in rows if [r[k] for k in KEY] != [row[k] for k in KEY]] + [row]
            save_runs(a.json, rows)
            print(f"{sc.name} seed {sc.seed}: {row['accuracy']:.2%} held out; in {a.json}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    print(__doc__)
