"""The README's result tables and docs/benchmarks.md match benchmarks/results/*.json (scripts/bench_tables.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "scripts" / "bench_tables.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["bench_tables"] = mod  # its dataclass looks its module up
    spec.loader.exec_module(mod)
    return mod


def test_readme_and_benchmarks_doc_are_current(tables, capsys) -> None:
    code = tables.main(["--check"])
    assert code == 0, capsys.readouterr().err.strip()


def test_readme_is_short() -> None:
    """One short table per topic; the detail lives in docs/benchmarks.md."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 280, len(lines)


LEVEL = {"clients": 1, "requests_per_s": 290.0, "p50_ms": 3.4, "p99_ms": 5.3, "max_ms": 9.5, "errors": 0}
SERVE_LOAD = {"model": "captcha_v2", "rows": [
    {**LEVEL, "mean_batch": 1.0},
    {**LEVEL, "clients": 8, "requests_per_s": 563.5, "p50_ms": 13.9, "p99_ms": 23.1, "max_ms": 29.6,
     "mean_batch": 4.5}],
    "soak": {**LEVEL, "clients": 32, "seconds": 300.0, "requests_per_s": 882.0, "rss_start_mb": 310.5,
             "rss_end_mb": 311.0, "rss_samples": [[0.0, 310.5], [1.0, 310.6]]}}


def test_check_then_write(tables, tmp_path: Path, capsys) -> None:
    """Stale blocks are named and rewritten; a topic without its JSON keeps its text; every JSON gets a section."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "serve_load.json").write_text(json.dumps(SERVE_LOAD))
    (results / "mystery.json").write_text(json.dumps([{"n": 3, "speed": 1234.56, "ok": True}, {"n": 4, "speed": 0.5}]))
    readme, doc = tmp_path / "README.md", tmp_path / "benchmarks.md"
    readme.write_text("# x\n\n" + "".join(f"<!-- bench:{n} -->\nold {n}\n<!-- /bench -->\n\n" for n in tables.TOPICS)
                      + "after\n")
    doc.write_text("# detail\n\n<!-- bench:detail -->\n<!-- /bench -->\n")
    args = ["--readme", str(readme), "--doc", str(doc), "--results", str(results)]

    assert tables.main(["--check", *args]) == 1
    err = capsys.readouterr().err
    assert "serve_load" in err and "detail" in err and "no student.json" in err
    assert tables.main(args) == 0
    assert tables.main(["--check", *args]) == 0

    text = readme.read_text()
    assert "old serve_load" not in text and "old student" in text and text.endswith("after\n")
    serve = text[text.index("<!-- bench:serve_load -->"):]
    assert "`python benchmarks/serve_load.py --soak 300 --out benchmarks/results/serve_load.json`" in serve
    assert "| 8 | 563.5 | 13.9 | 23.1 | 29.6 | 0 | 4.5 |" in serve and "| 32 (300 s soak) | 882 |" in serve
    detail = doc.read_text()
    assert "## serve_load.json" in detail and "## mystery.json" in detail and "an unknown script" in detail
    assert "| n | speed | ok |" in detail and "| 3 | 1235 | true |" in detail

    doc.write_text("no markers\n")
    assert tables.main(["--check", *args]) == 1
    assert "no <!-- bench:detail --> block" in capsys.readouterr().err


def test_learning_curve_pivot(tables) -> None:
    """Sizes across, datasets down; a pool smaller than the size says how many were labelled; budgets that
    differ between datasets are named beside each."""
    point = {"start": "student", "accuracy": 0.5, "images_per_s": 100.0, "budget_minutes": 3.0}
    rows = [{"dataset": "a", "size": "50", "labelled": 50, **point},
            {"dataset": "a", "size": "1000", "labelled": 842, **point},
            {"dataset": "b", "size": "50", "labelled": 50, **point}]
    assert tables.curve({"rows": rows}).splitlines() == [
        "| labelled images: student | 50 | 1000 |", "|---|---|---|",
        "| a | 50.00% (100/s) | 50.00% (100/s) (842) |", "| b | 50.00% (100/s) | - |"]
    rows[2]["budget_minutes"] = 10.0
    assert tables.curve({"rows": rows}).splitlines()[2:] == [
        "| a (3 min) | 50.00% (100/s) | 50.00% (100/s) (842) |", "| b (10 min) | 50.00% (100/s) | - |"]


def test_a_table_that_reads_a_model_names_which_one(tables) -> None:
    """A JSON that reads a model records its hash and input height; a shipped model changed since, or a
    pretrained height training no longer chooses, makes it stale."""
    import hashlib

    shipped = tables.ZOO / "captcha_v2.safetensors"
    sha = hashlib.sha256(shipped.read_bytes()).hexdigest()
    good = {"model": str(shipped), "model_sha256": sha, "model_height": 32, "model_backbone": "plain"}
    name = "inference_x.json"  # written by benchmarks/inference.py
    assert tables.model_problems(name, good) == []
    assert tables.model_problems(name, {**good, "model": "captcha_v2"}) == []
    assert "records no model hash" in tables.model_problems(name, {"model": str(shipped)})[0]
    assert "has changed" in tables.model_problems(name, {**good, "model_sha256": "0" * 64})[0]
    old = {**good, "model": "/tmp/gone.safetensors", "model_backbone": "ddddocr", "model_height": 40}
    assert "a height training no longer chooses" in tables.model_problems(name, old)[0]
    assert tables.model_problems(name, {"results": []}) == []
