"""Synthetic captchas (reproducible from the seed) and the demo, end to end on tiny settings."""

from __future__ import annotations

from pathlib import Path

from captcha_crnn.cli import main
from captcha_crnn.data.labels import LabelRule, read_folder
from captcha_crnn.data.synth import synthesize


def test_synth_is_reproducible_and_labelled(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", 12, "ab12", (2, 5), (100, 40), seed=7, progress=False)
    b = synthesize(tmp_path / "b", 12, "ab12", (2, 5), (100, 40), seed=7, progress=False)
    assert [Path(p).name for p, _ in a] == [Path(p).name for p, _ in b]
    assert all(Path(pa).read_bytes() == Path(pb).read_bytes() for (pa, _), (pb, _) in zip(a, b))
    samples = read_folder(tmp_path / "a", LabelRule(sep="_"))
    assert sorted(s.label for s in samples) == sorted(lab for _, lab in a)
    assert all(2 <= len(lab) <= 5 and set(lab) <= set("ab12") for _, lab in a)


def test_synth_command_and_bad_size(tmp_path: Path, capsys) -> None:
    assert main(["synth", str(tmp_path / "s"), "--n", "5", "--length", "4", "--size", "120x40"]) == 0
    assert len(list((tmp_path / "s").glob("*.png"))) == 5
    assert main(["synth", str(tmp_path / "s"), "--size", "big"]) == 2
    assert "--size" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path: Path, capsys) -> None:
    from captcha_crnn.demo import run_demo

    summary = run_demo(str(tmp_path / "demo"), n=80, max_minutes=0.05, fresh=10, progress=False)
    for f in summary["files"].values():
        assert Path(f).is_file(), f
    assert summary["fresh"]["n"] == 10
    out = capsys.readouterr().out
    assert "read" in out and "truth" in out and "files:" in out


def test_mixed_style_is_reproducible_varied_and_readable_as_a_folder(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    a = synthesize(tmp_path / "a", 24, "aB3xY9", (1, 8), seed=3, progress=False, style="mixed")
    b = synthesize(tmp_path / "b", 24, "aB3xY9", (1, 8), seed=3, progress=False, style="mixed")
    assert all(Path(pa).read_bytes() == Path(pb).read_bytes() for (pa, _), (pb, _) in zip(a, b))
    sizes = {Image.open(p).size for p, _ in a}
    assert len(sizes) > 5  # sizes of their own, not --size
    for p, _ in a:  # every image has ink on it: something darker than its lightest pixels
        g = np.asarray(Image.open(p).convert("L"), dtype=np.int16)
        assert g.max() - g.min() > 60, p
    samples = read_folder(tmp_path / "a", LabelRule(sep="_"))
    assert sorted(s.label for s in samples) == sorted(lab for _, lab in a)


def test_synth_command_mixed_style(tmp_path: Path, capsys) -> None:
    assert main(["synth", str(tmp_path / "m"), "--n", "6", "--style", "mixed", "--length", "2-3"]) == 0
    assert len(list((tmp_path / "m").glob("*.png"))) == 6


def test_synth_fonts_folder_without_fonts_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for style in ("captcha", "mixed"):
        for folder, why in ((tmp_path / "empty", "no .ttf or .otf fonts"), (tmp_path / "nope", "no such folder")):
            assert main(["synth", str(tmp_path / "s"), "--n", "2", "--style", style, "--fonts", str(folder)]) == 2
            err = capsys.readouterr().err
            assert str(folder) in err and why in err and "Traceback" not in err
            assert len(err.strip().splitlines()) == 1
