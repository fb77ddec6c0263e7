"""The README's result tables and docs/benchmarks.md, generated from the benchmarks' JSON.

    python scripts/bench_tables.py            # rewrite both
    python scripts/bench_tables.py --check    # exit 1 naming what is stale (tests/test_bench_tables.py runs it)

README.md: each block between `<!-- bench:NAME -->` and `<!-- /bench -->` is TOPICS[NAME]: the command
that wrote its JSON, then a short table of the headline rows. A topic whose JSON is not in
benchmarks/results/ is left as it is, with a warning (its block holds a "not measured yet" line).
docs/benchmarks.md: between `<!-- bench:detail -->` and `<!-- /bench -->`, a section per JSON file in
benchmarks/results/: the command, the run's settings (machine, load averages, seeds, budget, dates) and
every row: the writing script's own `table()` where it has one (TABLES), then every field.

A JSON file's script is benchmarks/<longest prefix of its name>.py (learning_curve_student.json:
learning_curve.py). Scripts are imported only for their table functions; importing one runs nothing.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
README = ROOT / "README.md"
DOC = ROOT / "docs" / "benchmarks.md"
BLOCK = re.compile(r"(<!-- bench:([\w-]+) -->\n)(.*?)(<!-- /bench -->)", re.S)
DETAIL = "detail"  # the block name in docs/benchmarks.md

# How the JSON files that do not record their "command" were made (benchmarks/harness.py's layout records it;
# formatted with the data); others: their script's usage line.
COMMANDS = {
    "serve_load.json": "python benchmarks/serve_load.py --soak 300 --out benchmarks/results/serve_load.json",
    "train_throughput.json": "python benchmarks/train_throughput.py",
}


# ------------------------------------------------------------------ shared helpers


def bench(name: str) -> Any:
    """benchmarks/<name>.py as a module (its imports only; it has a __main__ guard)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def fmt(v: Any) -> str:
    """A JSON value in a table cell."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, list):
        return " ".join(map(fmt, v)) if not any(isinstance(x, (dict, list)) for x in v) else f"({len(v)} entries)"
    return str(v).replace("|", "\\|").replace("\n", " ")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def md(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "---|" * len(head), *map(line, rows)])


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k: v})
    return out


def records(data: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the run's settings, its rows): the first list of dicts, a dict of such lists, or the dicts of data."""
    if isinstance(data, list):
        return {}, data
    if "rows" in data:  # benchmarks/harness.py's layout
        return {k: v for k, v in data.items() if k != "rows"}, data["rows"]
    for k, v in data.items():
        rest = {a: b for a, b in data.items() if a != k}
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            return rest, v
        if isinstance(v, dict) and v and all(isinstance(x, list) for x in v.values()):
            return rest, [{k: name, **r} for name, rs in v.items() for r in rs]
    parts = {k: v for k, v in data.items() if isinstance(v, dict)}
    return {k: v for k, v in data.items() if k not in parts}, [{"part": k, **v} for k, v in parts.items()]


def script_of(json_name: str) -> str:
    """The benchmark that writes a JSON file: the longest script name its name starts with."""
    stem = json_name.removesuffix(".json")
    names = [p.stem for p in BENCH.glob("*.py") if stem == p.stem or stem.startswith(p.stem + "_")]
    return max(names, key=len, default="")


def docstring(script: str) -> str:
    """benchmarks/<script>.py's docstring, read without importing it ("" when there is none)."""
    path = BENCH / f"{script}.py"
    return (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "") if script and path.is_file() else ""


def command(json_name: str, data: Any) -> str:
    """The command that wrote a JSON file (its "command", COMMANDS, else its script's usage line)."""
    if isinstance(data, dict) and "command" in data:
        return data["command"]
    if json_name in COMMANDS:
        return COMMANDS[json_name].format(data)
    return next((ln.strip() for ln in docstring(script_of(json_name)).splitlines() if ln.strip().startswith("python ")),
                "?")


def anchor(json_name: str) -> str:
    """The link to a JSON file's section of docs/benchmarks.md, from the README."""
    return f"[{json_name}](docs/benchmarks.md#{json_name.replace('.', '').lower()})"


# ------------------------------------------------------------------ README topics: one short table each


def rows_of(data: Any) -> list[dict[str, Any]]:
    """A results file's rows, whatever its layout (benchmarks/harness.py: rows_of)."""
    return bench("harness").rows_of(data)


def median_per(rows: list[dict[str, Any]], key: str, by: str) -> list[dict[str, Any]]:
    """Per value of key, the run whose `by` is the median of its seeds (the lower middle of an even count)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    return [sorted(g, key=lambda r: r[by])[(len(g) - 1) // 2] for g in groups.values()]


def starts(rows: list[dict[str, Any]]) -> list[str]:
    """The starts the rows of a learning_curve.json hold, in the script's order."""
    return bench("learning_curve").starts(rows)


def student(d: dict) -> str:
    return bench("student").table(median_per(rows_of(d), "scenario", "accuracy"))


def curve(d: dict) -> str:
    """Labelled images across, datasets down; each cell every start's accuracy (and images/s)."""
    rows, names = rows_of(d), starts(rows_of(d))
    sizes = list(dict.fromkeys(r["size"] for r in rows))

    def cell(ds: str, size: str) -> str:
        mine = sorted((r for r in rows if (r["dataset"], r["size"]) == (ds, size)),
                      key=lambda r: names.index(r["start"]))
        acc = " / ".join(pct(r["accuracy"]) + (f" ({r['images_per_s']:.0f}/s)" if "images_per_s" in r else "")
                         for r in mine)
        return "-" if not mine else acc + ("" if str(mine[0]["labelled"]) == size else f" ({mine[0]['labelled']})")

    budgets = {r["dataset"]: r["budget_minutes"] for r in rows}
    label = (lambda ds: f"{ds} ({budgets[ds]:g} min)") if len(set(budgets.values())) > 1 else (lambda ds: ds)
    return md([f"labelled images: {' / '.join(names)}", *sizes], [[label(ds), *(cell(ds, s) for s in sizes)]
                                                                  for ds in budgets])


def inference(pretrained: dict, scratch: dict) -> str:
    """The fp32 ONNX engine of each model, and ddddocr (int8 and the rest: docs/benchmarks.md)."""
    body = [[("ddddocr (same run)" if r["engine"] == "ddddocr" else f"{name}, {r['engine']}"),
             pct(r["accuracy"]), f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p99']:.2f}",
             f"{r['throughput_ips']:.0f}", f"{r['model_size_mb']:.1f}"]
            for name, rep in (("pretrained start (ddddocr backbone)", pretrained),
                              ("shipped `captcha_v2` (from scratch)", scratch))
            for r in rows_of(rep) if r["engine"] in ("onnx", "ddddocr") and "error" not in r]
    return md(["model, engine", "held-out accuracy", "p50 ms", "p99 ms", "images/s", "size MB"], body)


def labelling(*runs: dict) -> str:
    """Pairs of JSON (pre-fill run, file-order run) per dataset: corrections to 95% and the last round."""
    body = []
    for pre, order in zip(runs[::2], runs[1::2]):  # their last rounds
        p, o = ([r for r in rows_of(d) if r["strategy"] == k][-1] for d, k in ((pre, "prefill"), (order, "order")))
        c95 = order["summary"]["order"]["corrections_to_95"]
        body.append([pre["dataset"], fmt(pre["summary"]["prefill"]["corrections_to_95"]),
                     fmt(c95) if c95 is not None else f"not in {o['labelled']}",
                     f"{p['labelled']}, {p['corrections']}, {pct(p['accuracy'])}",
                     f"{o['labelled']}, {pct(o['accuracy'])}"])
    return md(["dataset", "corrections to 95% held-out: pre-fill", "file order",
               "last round, pre-fill: labelled, corrections, held-out", "file order: labelled, held-out"], body)


def serve_load(d: dict) -> str:
    """A row per level of clients, and the soak's."""
    soak = d.get("soak")
    levels = rows_of(d) + ([{**soak, "clients": f"{soak['clients']} ({soak['seconds']:g} s soak)"}] if soak else [])
    body = [[str(r["clients"]), fmt(r["requests_per_s"]), fmt(r["p50_ms"]), fmt(r["p99_ms"]), fmt(r["max_ms"]),
             str(r["errors"]), fmt(r.get("mean_batch"))] for r in levels]
    table = md(["clients", "requests/s", "p50 ms", "p99 ms", "max ms", "errors", "mean batch"], body)
    return table + (f"\n\nSoak: server memory {soak['rss_start_mb']} -> {soak['rss_end_mb']} MB." if soak else "")


def train_throughput(d: dict) -> str:
    """Per dataset, the recipe before (fp32, the speed-ups' base) and now (`default`; bf16 where no run of
    the default is there)."""
    rows: list[dict[str, Any]] = []
    for ds in dict.fromkeys(r["dataset"] for r in rows_of(d)):
        runs = {r["variant"]: r for r in rows_of(d) if r["dataset"] == ds}
        rows += [runs[v] for v in ("fp32", "default" if "default" in runs else "bf16") if v in runs]
    return bench("train_throughput").table(rows)


def time_curve(d: dict) -> str:
    return bench("time_curve").table(rows_of(d))


def models() -> str:
    try:
        from captcha_crnn.model.zoo import format_cards, zoo_cards
    except ImportError:  # run without the package installed: the checkout's src/
        sys.path.insert(0, str(ROOT / "src"))
        from captcha_crnn.model.zoo import format_cards, zoo_cards
    return format_cards(zoo_cards())


@dataclass(frozen=True)
class Topic:
    files: tuple[str, ...]  # JSON files in benchmarks/results/, passed to table in this order
    table: Callable[..., str]
    command: str | None = None  # above the table, formatted with the data and {links}; default: COMMANDS


TOPICS = {
    "models": Topic((), models, "`captcha-crnn models` prints these cards; `make models` rebuilds them "
                                "(`scripts/train_models.py`)"),
    "student": Topic(("student.json",), student),
    "learning_curve_semi": Topic(("learning_curve_semi.json",), curve),
    "inference": Topic(("inference_pretrained.json", "inference_scratch.json"), inference,
                       "`python benchmarks/inference.py --model MODEL --repeats {0[repeats]}` ({links})"),
    "labelling": Topic(("labelling_captcha_v2_ddddocr_prefill.json", "labelling.json",
                        "labelling_henan_ddddocr_prefill.json", "labelling_henan.json"), labelling,
                       "`python benchmarks/labelling.py [--dataset henan_digits4] [--strategies prefill]` ({links})"),
    "serve_load": Topic(("serve_load.json",), serve_load),
    "train_throughput": Topic(("train_throughput.json",), train_throughput),
    "time_curve": Topic(("time_curve.json",), time_curve),
}


def load(path: Path) -> Any:
    """A JSON file's data, or None (with a warning) when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        print(f"bench_tables: {path.name}: {e}; left as it is", file=sys.stderr)
        return None


ZOO = ROOT / "src" / "captcha_crnn" / "zoo"  # the shipped model files
MODEL_READERS = ("inference",)  # benchmarks whose figures are one model file's: they record which


def model_problems(json_name: str, data: Any) -> list[str]:
    """Why a README table's JSON no longer describes the code: it reads a model (its "model") but records
    no hash and input height, a shipped model it read has changed since, or a pretrained backbone's
    input height is not one today's code would train at."""
    if not isinstance(data, dict) or "model" not in data or script_of(json_name) not in MODEL_READERS:
        return []
    if "model_sha256" not in data or "model_height" not in data:
        return [f"{json_name}: records no model hash or input height; re-run its command"]
    problems = []
    shipped = ZOO / Path(data["model"]).name if Path(data["model"]).parent.name == "zoo" else ZOO / (
        data["model"] + ".safetensors")
    if shipped.is_file() and hashlib.sha256(shipped.read_bytes()).hexdigest() != data["model_sha256"]:
        problems.append(f"{json_name}: the shipped {shipped.name} has changed since it was measured")
    try:
        from captcha_crnn.model.archs import DDDDOCR, PRETRAINED
    except ImportError:  # run without the package installed: the checkout's src/
        sys.path.insert(0, str(ROOT / "src"))
        from captcha_crnn.model.archs import DDDDOCR, PRETRAINED
    if data.get("model_backbone") == PRETRAINED.backbone and data["model_height"] not in (
            PRETRAINED.tuned_height, DDDDOCR.height):
        problems.append(f"{json_name}: a pretrained model at {data['model_height']} rows, a height training no "
                        "longer chooses")
    return problems


def block(name: str, results: Path) -> str | None:
    """The new text of README block `name`, or None when its JSON is not there yet."""
    t = TOPICS[name]
    data = [load(results / f) for f in t.files]
    if any(d is None for d in data):
        missing = ", ".join(f for f, d in zip(t.files, data) if d is None)
        print(f"bench_tables: README block {name}: no {missing} in {results}; left as it is", file=sys.stderr)
        return None
    try:
        table = t.table(*data)
    except ImportError as e:  # a script that does not import with today's package
        print(f"bench_tables: README block {name}: {e}; left as it is", file=sys.stderr)
        return None
    links = ", ".join(anchor(f) for f in t.files)
    head = (t.command.format(*data, links=links) if t.command else
            ";\n".join(f"`{command(f, d)}` ({anchor(f)})" for f, d in zip(t.files, data)))
    return f"{head}:\n\n{table}\n"


# ------------------------------------------------------------------ docs/benchmarks.md: every run of every JSON

def own_table(script: str) -> Callable[[Any, list[dict[str, Any]]], str]:
    return lambda d, rows: bench(script).table(rows_of(d))


TABLES: dict[str, Callable[[Any, list[dict[str, Any]]], str]] = {  # script -> its own table of a JSON's rows
    "inference": lambda d, rows: "```text\n" + bench("inference").table(d).rstrip() + "\n```",
    **{name: own_table(name) for name in ("datasets", "labelling", "learning_curve", "student", "time_curve",
                                          "train_captcha_v2", "train_throughput")},
}
HEADLINE_COLUMNS = 8  # a JSON whose script has no table: its rows' first scalar fields


def headline(rows: list[dict[str, Any]]) -> str:
    """The first HEADLINE_COLUMNS scalar fields of each row."""
    rows = [flat(r) for r in rows]
    cols = [k for k in dict.fromkeys(k for r in rows for k in r)
            if all(not isinstance(r.get(k), (list, dict)) for r in rows)][:HEADLINE_COLUMNS]
    return md(cols, [[fmt(r.get(c)) for c in cols] for r in rows])


def summary(settings: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """One line: the machine, the commits and dates of the rows, the load averages, the run's other settings."""
    m = settings.get("machine") or {}
    seen = lambda key: ", ".join(dict.fromkeys(str(r[key]) for r in rows if r.get(key))) or "-"  # noqa: E731
    loads = [r.get(k) or settings.get(k) for r in rows or [{}] for k in ("load_average_before", "load_average_after")]
    loads = [x[0] for x in loads if x]
    other = {k: v for k, v in settings.items() if k not in ("benchmark", "command", "machine") and "load_average"
             not in k and not isinstance(v, (list, dict))}
    commits = seen("commit") if seen("commit") != "-" else m.get("commit", "not recorded")
    machine = f"{m['cpu']}, {m['cores']} cores" + (", bf16" if m.get("bf16") else "") if m else "not recorded"
    return (f"Machine: {machine}; commits {commits}" + ("" if seen("date") == "-" else f"; dates {seen('date')}")
            + (f"; load average {min(loads):.1f} to {max(loads):.1f}" if loads else "")
            + "".join(f"; {k.replace('_', ' ')} {fmt(v)}" for k, v in other.items()) + ".")


def section(path: Path) -> str:
    """A JSON file's part of docs/benchmarks.md: what wrote it, how, where, and its headline rows."""
    name, data = path.name, load(path)
    script = script_of(name)
    doc = " ".join(docstring(script).split("\n\n")[0].split())
    parts = [f"## {name}", f"[The JSON](../benchmarks/results/{name}), written by "
             + (f"[benchmarks/{script}.py](../benchmarks/{script}.py): {doc}" if script else "an unknown script.")]
    if data is None:
        return "\n\n".join([*parts, "Unreadable JSON.\n"])
    settings, rows = records(data)
    parts += [f"```bash\n{command(name, data)}\n```", summary(settings, rows)]
    try:
        parts += [TABLES[script](data, rows) if script in TABLES else headline(rows)] if rows else []
    except ImportError as e:  # a script that does not import with today's package: its headline fields
        print(f"bench_tables: {name}: benchmarks/{script}.py does not import ({e}); its first fields", file=sys.stderr)
        parts.append(headline(rows))
    return "\n\n".join(parts) + "\n"


def detail(results: Path) -> str:
    files = sorted(results.glob("*.json"))
    index = "Files: " + ", ".join(f"[{p.name}](#{p.name.replace('.', '').lower()})" for p in files) + "."
    return "\n".join([index, "", *map(section, files)])


# ------------------------------------------------------------------ rewriting the files


def rewrite(text: str, new: dict[str, str | None], where: str) -> tuple[str, list[str]]:
    """(text with each block in new replaced, a None leaving it as it is; the blocks missing from text)."""
    present = {m[2] for m in BLOCK.finditer(text)}
    for name in sorted(present - set(new)):
        print(f"bench_tables: {where}: unknown block <!-- bench:{name} --> left as it is", file=sys.stderr)
    missing = [f"no <!-- bench:{name} --> block" for name in new if name not in present]
    return BLOCK.sub(lambda m: m[1] + (new.get(m[2]) or m[3]) + m[4], text), missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md or docs/benchmarks.md is stale")
    ap.add_argument("--readme", type=Path, default=README)
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--results", type=Path, default=RESULTS, help="the benchmarks' JSON files")
    a = ap.parse_args(argv)
    stale = [p for name in TOPICS for f in TOPICS[name].files for p in model_problems(f, load(a.results / f))]
    for path, new in ((a.readme, {name: block(name, a.results) for name in TOPICS}),
                      (a.doc, {DETAIL: detail(a.results) + "\n"})):
        text = path.read_text(encoding="utf-8")
        changed, missing = rewrite(text, new, path.name)
        names = [m[2] for m, n in zip(BLOCK.finditer(text), BLOCK.finditer(changed)) if m[3] != n[3]]
        if names and not a.check:
            path.write_text(changed, encoding="utf-8")
            print(f"bench_tables: rewrote {path} ({', '.join(names)})", file=sys.stderr)
        if missing or (names and a.check):
            stale.append(f"{path} ({', '.join((names if a.check else []) + missing)})")
    for s in stale:
        print(f"bench_tables: stale: {s}", file=sys.stderr)
    if stale:
        print("bench_tables: add the missing blocks, run `python scripts/bench_tables.py` and commit the result"
              if not a.check else "bench_tables: run `python scripts/bench_tables.py` and commit the result",
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
