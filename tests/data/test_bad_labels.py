"""Bad labels: CSV and folder label reading, empty folders, and load_samples skipping unreadable files."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input import (
    MODEL,
    PRE,
    assert_cli_error,
    captcha,
    encode,
    own_cache,  # noqa: F401 (autouse: ONNX exports go to the session's folder)
    raises_naming,
    run_cli,
    write_images,
)

from captcha_crnn.data.labels import LabelRule, Sample, read_csv, read_folder, read_samples

# ---------------------------------------------------------------- labels and CSV files


def test_csv_empty_labels_and_file_names_are_skipped_and_counted(tmp_path: Path, capsys) -> None:
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    p = tmp_path / "labels.csv"
    p.write_text("filename,label\na.png,2b4\nb.png,\n,55\nc.png,77\n")
    samples = read_csv(p)
    assert [s.label for s in samples] == ["2b4", "77"]
    err = capsys.readouterr().err
    assert f"warning: {p}: skipped 2 rows with an empty file name or label (line 3, ...)" in err


def test_csv_of_only_empty_labels_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("filename,label\na.png,\nb.png,\n")
    raises_naming(read_csv, p, needles=(str(p), "no usable rows"))


@pytest.mark.parametrize("second", ["a.png", "./a.png", "sub/../a.png"])
def test_csv_duplicate_file_names_are_an_error_naming_both_lines(second: str, tmp_path: Path) -> None:
    p = tmp_path / "dup.csv"
    p.write_text(f"filename,label\na.png,2b4\nb.png,5\n{second},77\n")
    raises_naming(read_csv, p, needles=(str(p), "line 4", "duplicate file name", "first on line 2"))


def test_folder_files_without_a_label_are_counted(tmp_path: Path, capsys) -> None:
    write_images(tmp_path, ["2b4-0.png", "-1.png", "-2.png"])
    samples = read_folder(tmp_path, rule=LabelRule(sep="-"))
    assert [s.label for s in samples] == ["2b4"]
    assert "skipped 2 of 3 images whose name gave no label" in capsys.readouterr().err


def test_folder_with_no_images(tmp_path: Path, capsys) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    raises_naming(read_samples, tmp_path, needles=(str(tmp_path), "no images found"))
    for cmd in (["eval", MODEL, tmp_path], ["train", tmp_path, "--out", tmp_path / "o"]):
        code, _, err = run_cli(cmd, capsys)
        assert_cli_error(code, err, str(tmp_path), "no images found")
    code, _, err = run_cli(["predict", MODEL, tmp_path, "--engine", "torch", "--threads", "1"], capsys)
    assert_cli_error(code, err, str(tmp_path), "no images found")


def test_load_samples_skips_and_counts_unreadable_and_missing_files(tmp_path: Path, capsys) -> None:
    from captcha_crnn.data.dataset import load_samples

    write_images(tmp_path, ["good.png"])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(encode(captcha())[:60])
    samples = [Sample(str(tmp_path / n), "2b4") for n in ("good.png", "empty.png", "cut.png", "missing.png")]
    ds = load_samples(samples, PRE, progress=False)
    assert len(ds) == 1 and len(ds.skipped) == 3
    err = capsys.readouterr().err
    for name in ("empty.png", "cut.png", "missing.png: no such file"):
        assert name in err
    assert "Traceback" not in err
