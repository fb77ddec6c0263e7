"""Bad evaluation sets: missing files, labels outside the alphabet, nothing readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input import (
    MODEL,
    assert_cli_error,
    own_cache,  # noqa: F401 (autouse: ONNX exports go to the session's folder)
    run_cli,
    write_images,
)


@pytest.fixture()
def eval_csv(tmp_path: Path) -> Path:
    """A CSV of five good captcha_v2-style images, two rows naming missing files, one empty label."""
    names = [f"{t}.png" for t in ("2b4c5", "wxy23", "nmpg7", "bcdef", "55567")]
    write_images(tmp_path, names)
    rows = [f"{n},{Path(n).stem}" for n in names] + ["gone.png,2b4c5", "sub/gone2.png,wxy23", "x.png,"]
    p = tmp_path / "labels.csv"
    p.write_text("filename,label\n" + "\n".join(rows) + "\n")
    return p


def test_eval_counts_and_reports_missing_files(eval_csv: Path, capsys) -> None:
    code, out, err = run_cli(["eval", MODEL, eval_csv, "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert rep["n"] == 5 and rep["skipped"] == 2
    assert "gone.png: no such file" in err and "gone2.png: no such file" in err
    assert "skipped 1 rows with an empty file name or label" in err
    code, out, err = run_cli(["eval", MODEL, eval_csv], capsys)
    assert code == 0 and "n=5" in out and "skipped 2 unreadable images (not scored)" in out


def test_eval_counts_a_label_outside_the_alphabet_and_says_so(tmp_path: Path, capsys) -> None:
    write_images(tmp_path, ["2b4c5.png", "2bAz5.png"])
    code, out, _ = run_cli(["eval", MODEL, tmp_path, "--json"], capsys)
    rep = json.loads(out)
    assert code == 0 and rep["n"] == 2 and rep["outside_alphabet"] == 1 and rep["sequence_accuracy"] <= 0.5


def test_eval_where_no_image_is_readable(tmp_path: Path, capsys) -> None:
    (tmp_path / "2b4c5.png").write_text("text")
    (tmp_path / "wxy23.png").write_bytes(b"")
    code, _, err = run_cli(["eval", MODEL, tmp_path], capsys)
    assert_cli_error(code, err, str(tmp_path), "no readable images")
