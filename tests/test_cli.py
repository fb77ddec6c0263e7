"""The command line as a user runs it: train, eval, predict, info, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captcha_crnn.cli import main


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("captcha-crnn: error")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_train_command_writes_outputs(tmp_path: Path, clean_dir: Path, capsys) -> None:
    out = tmp_path / "run"
    code, stdout, err = run(["train", str(clean_dir), "--out", str(out), "--epochs", "2", "--preset", "tiny",
                             "--label-sep", "-", "--quiet", "--json"], capsys)
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and (out / "curves.png").is_file()
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["model"].endswith("model.safetensors")
    assert "epoch   1/2" in err and "val acc" in err  # one line per epoch with the figures


def test_eval_json_and_errors_gallery(trained, clean_dir: Path, tmp_path: Path, capsys) -> None:
    png = tmp_path / "errors.png"
    code, out, err = run(["eval", str(trained.model_path), str(clean_dir), "--label-sep", "-", "--json",
                          "--errors", str(png)], capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert rep["n"] == 300
    for k in ("sequence_accuracy", "char_accuracy", "cer", "by_length", "confusions"):
        assert k in rep
    assert 0.0 <= rep["sequence_accuracy"] <= 1.0 and rep["char_accuracy"] > 0.3
    assert abs(rep["cer"] - trained.test.cer) < 0.3  # the whole set reads about as well as the test split
    assert png.is_file() and png.stat().st_size > 1000


def test_eval_text_report(trained, clean_dir: Path, capsys) -> None:
    code, out, _ = run(["eval", str(trained.out), str(clean_dir), "--label-sep", "-", "--beam", "4"], capsys)
    assert code == 0
    assert "sequence accuracy" in out and "by label length" in out


def test_predict_lines_json_and_globs(trained, clean_dir: Path, capsys) -> None:
    files = sorted(clean_dir.iterdir())[:3]
    code, out, _ = run(["predict", str(trained.model_path), str(files[0]), str(files[1])], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2
    path, text, conf = lines[0].split("\t")
    assert path == str(files[0]) and 0 <= float(conf) <= 1 and text.isdigit()
    code, out, _ = run(["predict", str(trained.model_path), str(clean_dir / "1*.png"), "--json"], capsys)
    items = json.loads(out)
    assert items and all({"path", "text", "confidence", "char_confidences"} <= set(i) for i in items)
    code, out, _ = run(["predict", str(trained.model_path), str(clean_dir), "--length", "4"], capsys)
    assert len(out.strip().splitlines()) == 300
    assert all(len(ln.split("\t")[1]) == 4 for ln in out.strip().splitlines())


def test_predict_reports_bad_file_and_reads_the_rest(trained, clean_dir: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = sorted(clean_dir.iterdir())[0]
    code, out, err = run(["predict", str(trained.model_path), str(bad), str(good)], capsys)
    assert code == 1
    assert "bad.png" in err and "Traceback" not in err
    assert len(out.strip().splitlines()) == 1


def test_info_shows_layers_alphabet_and_metrics(trained, capsys) -> None:
    code, out, _ = run(["info", str(trained.model_path)], capsys)
    assert code == 0
    for s in ("alphabet", "backbone", "GRU", "total", "training data", "metrics (test)", "preprocessing"):
        assert s in out, s
    code, out, _ = run(["info", str(trained.model_path), "--json"], capsys)
    assert json.loads(out)["format"] == "captcha-crnn"


def test_missing_and_empty_folders(tmp_path: Path, capsys) -> None:
    code, _, err = run(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "nope", "no such")
    (tmp_path / "empty").mkdir()
    code, _, err = run(["train", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "empty", "no images")


def test_eval_counts_a_label_outside_the_alphabet_as_misread(trained, tmp_path: Path, clean_dir: Path,
                                                             capsys) -> None:
    d = tmp_path / "data"
    d.mkdir()
    src = sorted(clean_dir.iterdir())[0]
    shutil.copy(src, d / "12z4.png")
    code, out, _ = run(["eval", str(trained.model_path), str(d)], capsys)
    assert code == 0 and "sequence accuracy 0.00%" in out
    assert "1 of 1 images have characters outside the model's alphabet (counted as misread" in out


def test_bad_model_files(tmp_path: Path, clean_dir: Path, capsys) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    code, _, err = run(["predict", str(junk), str(clean_dir)], capsys)
    assert_one_line_error(code, err, "junk.safetensors")
    code, _, err = run(["info", str(tmp_path / "none.safetensors")], capsys)
    assert_one_line_error(code, err, "none.safetensors")


@pytest.mark.parametrize("cmd", [["--help"], ["train", "--help"], ["--version"]])
def test_module_entry_point(cmd: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "captcha_crnn", *cmd], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "captcha-crnn" in r.stdout


def test_every_help_text_formats_as_written(capsys) -> None:
    """A lone % in a help text is an argparse format directive: the help would print a dict instead."""
    with pytest.raises(SystemExit):
        main(["train", "--help-all"])
    out = capsys.readouterr().out
    assert "'prog'" not in out and "<argparse." not in out and "--semi-rule" in out


@pytest.mark.parametrize("flag,value,needle", [("--width", "wide", "a number of pixels"),
                                               ("--height", "40", "multiple of 16"),
                                               ("--width", "3", "at least 16")])
def test_bad_size_flags_are_usage_errors(flag: str, value: str, needle: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", str(tmp_path), flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"argument {flag}: " in err and needle in err


def test_predict_min_confidence_rejects_and_says_so(trained, clean_dir: Path, capsys) -> None:
    images = [str(p) for p in sorted(clean_dir.glob("*.png"))[:6]]
    code, out, _ = run(["predict", str(trained.out), *images, "--json", "--min-confidence", "0"], capsys)
    rows = json.loads(out)
    assert code == 0 and not any(r["rejected"] for r in rows)
    floor = sorted(r["confidence"] for r in rows)[3]  # the three least confident fall under it
    code, out, err = run(["predict", str(trained.out), *images, "--json", "--min-confidence", str(floor)], capsys)
    rows = json.loads(out)
    assert [r["rejected"] for r in rows] == [r["confidence"] < floor for r in rows]
    assert code == 3 and sum(r["rejected"] for r in rows) == 3 and "rejected 3 of 6" in err
    code, out, _ = run(["predict", str(trained.out), *images, "--min-confidence", str(floor)], capsys)
    assert out.count("<rejected>") == 3
    with pytest.raises(SystemExit):
        main(["predict", str(trained.out), images[0], "--min-confidence", "1.5"])


def test_eval_and_info_show_selective_accuracy(trained, clean_dir: Path, capsys) -> None:
    code, out, _ = run(["eval", str(trained.out), str(clean_dir), "--label-sep", "-", "--json"], capsys)
    table = json.loads(out)["selective"]
    assert code == 0 and [r["threshold"] for r in table] == [0.0, 0.5, 0.8, 0.9, 0.95, 0.99]
    assert table[0]["coverage"] == 1.0 and all(a["coverage"] >= b["coverage"] for a, b in zip(table, table[1:]))
    code, out, _ = run(["info", str(trained.out)], capsys)
    assert code == 0 and "test selective accuracy" in out


def test_eval_lists_sure_misreadings_as_labels_to_check(captcha_dir: Path, tmp_path: Path, capsys) -> None:
    """An image the shipped synthetic model reads surely, given a wrong label, is listed by eval (text, --json)."""
    from captcha_crnn.infer import Recognizer

    images = sorted(captcha_dir.glob("*.png"))[:12]
    preds = Recognizer.load("synthetic").predict([str(i) for i in images])
    sure = [(i, p) for i, p in zip(images, preds) if p.confidence >= 0.99 and p.text == i.stem]
    assert sure, "the synthetic model reads some captcha-package images surely"
    image, pred = sure[0]
    wrong = "".join("5" if c == "2" else "2" for c in pred.text)  # every character changed, same length
    folder = tmp_path / "set"
    folder.mkdir()
    for i in images:
        shutil.copy(i, folder / (f"{wrong}.png" if i == image else i.name))
    code, out, _ = run(["eval", "synthetic", str(folder), "--json"], capsys)
    misses = json.loads(out)["sure_misses"]
    assert code == 0 and all(m["confidence"] >= 0.99 and m["label"] != m["read"] for m in misses)
    assert [m["read"] for m in misses if m["label"] == wrong] == [pred.text]
    code, out, _ = run(["eval", "synthetic", str(folder)], capsys)
    assert code == 0 and "check these labels" in out and f"label '{wrong}', read '{pred.text}'" in out
