"""ddddocr's own model as the zero-shot pre-fill of the labelling page (the pretrained start)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import make_clean_set

from captcha_crnn.cli import main
from captcha_crnn.errors import CaptchaError
from captcha_crnn.infer import Reader
from captcha_crnn.infer.ddddocr_reader import DdddocrReader, available
from captcha_crnn.service.labelling import load_reader

needs_ddddocr = pytest.mark.skipif(not available(), reason="the pretrained extra (ddddocr 1.6+) is not installed")


@pytest.fixture
def uninstalled(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ddddocr" else real(n, *a))


@needs_ddddocr
def test_reads_clean_digits_within_the_charset(tmp_path: Path) -> None:
    labels = make_clean_set(tmp_path, 12)
    paths = sorted(tmp_path.glob("*.png"), key=lambda p: int(p.stem.split("-")[1]))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    reader = DdddocrReader("0123456789")
    preds = reader.predict([*paths, tmp_path / "broken.png"], errors="return")
    assert isinstance(preds[-1], CaptchaError) and "broken.png" in str(preds[-1])
    texts = [p.text for p in preds[:-1]]
    assert all(set(t) <= set("0123456789") and 0.0 <= p.confidence <= 1.0 for t, p in zip(texts, preds))
    assert sum(t == lab for t, lab in zip(texts, labels)) >= 9  # zero-shot, on clean digits
    one = reader.predict(paths[0])
    assert one.text == texts[0] and one.source.endswith(paths[0].name)
    assert isinstance(reader, Reader) and reader.alphabet.chars == "0123456789"  # as a Recognizer is
    assert [p.text for p in reader.read_arrays(reader.prepare(paths[:3]))] == texts[:3]
    with pytest.raises(CaptchaError, match="broken.png"):
        reader.predict([tmp_path / "broken.png"])
    with pytest.raises(CaptchaError, match="reads none of the characters"):
        DdddocrReader("\u2603")
    upper = DdddocrReader("AB\u2603")  # an allowed letter also collects the other case's class
    assert upper.missing == "\u2603" and all(len(cols) == 2 for cols in upper.columns[1:])
    both = DdddocrReader("aA")
    assert all(len(cols) == 1 for cols in both.columns)


@needs_ddddocr
def test_label_defaults_to_ddddocr_where_installed() -> None:
    reader, name = load_reader(None, "0123")
    assert isinstance(reader, DdddocrReader) and name == "ddddocr (zero-shot)" and reader.chars == list("0123")
    assert load_reader("none", None) == (None, None)
    assert load_reader(None, "\u2603") == (None, None)  # the default falls back to file order


def test_label_without_ddddocr(uninstalled: None, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert load_reader(None, None) == (None, None)  # file order, no pre-fill
    with pytest.raises(CaptchaError, match=r'captcha-crnn\[pretrained\]'):
        load_reader("ddddocr", None)
    make_clean_set(tmp_path / "d", 3)
    assert main(["label", str(tmp_path / "d"), "--model", "ddddocr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "captcha-crnn[pretrained]" in err[0]
