"""Training skips, counts and reports every bad sample (missing, empty, unlabelled, outside the alphabet)."""

from __future__ import annotations

import random
import time
from pathlib import Path

from bad_input import (
    captcha,
    own_cache,  # noqa: F401 (autouse: ONNX exports go to the session's folder)
)


def test_training_skips_and_counts_every_bad_sample(tmp_path: Path, capsys) -> None:
    """Missing files, empty files, empty labels, labels outside the alphabet: skipped, counted, reported."""
    from captcha_crnn.training import TrainConfig, train

    rng = random.Random(0)
    labels = ["".join(rng.choice("2345") for _ in range(3)) for _ in range(30)]
    names = [f"img{i}.png" for i in range(len(labels))]
    for n, lab in zip(names, labels):
        captcha(lab, size=(64, 32)).save(tmp_path / n)
    (tmp_path / "zero.png").write_bytes(b"")
    rows = [f"{n},{lab}" for n, lab in zip(names[:24], labels)]
    rows += ["gone.png,234", "zero.png,345", "img0.png,", "sub/gone2.png,22"]
    train_csv, val_csv = tmp_path / "train.csv", tmp_path / "val.csv"
    train_csv.write_text("filename,label\n" + "\n".join(rows) + "\n")
    val_rows = [f"{n},{lab}" for n, lab in zip(names[24:], labels[24:])] + ["img0.png,2z9"]
    val_csv.write_text("filename,label\n" + "\n".join(val_rows) + "\n")
    t = time.perf_counter()
    r = train(str(train_csv), TrainConfig(out=str(tmp_path / "run"), epochs=1, preset="tiny", init="none",
                                          progress=False, threads=1, width=64, channels=1, augment=0.0,
                                          val_data=str(val_csv), test=0.0))
    assert time.perf_counter() - t < 60
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{train_csv}: skipped 1 rows with an empty file name or label (line 28)" in err
    assert "gone.png: no such file" in err and "gone2.png: no such file" in err and "zero.png: empty file" in err
    assert "'2z9' has characters outside the alphabet" in err
    assert r.model_path.is_file()
