"""Training end to end on small generated data: outputs, learning, resume, skips, the Python API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captcha_crnn import Prediction, Recognizer
from captcha_crnn.errors import CaptchaError
from captcha_crnn.model.modelfile import read_metadata
from captcha_crnn.training import TrainConfig, train


def test_outputs_written(trained) -> None:
    out = trained.out
    for name in ("model.safetensors", "checkpoint.pt", "history.json", "curves.png"):
        assert (out / name).is_file(), name
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["history"]) == len(trained.history) > 0
    meta = read_metadata(out / "model.safetensors")
    assert set(meta["alphabet"]) <= set("0123456789")
    assert meta["preprocess"]["height"] == 32
    assert meta["model"]["num_classes"] == len(meta["alphabet"]) + 1
    assert meta["training"]["seed"] == 0 and "split" in meta["training"]
    assert "test" in meta["metrics"] and "val" in meta["metrics"]


def test_model_learns(trained) -> None:
    # Easy digits: after a few hundred steps a tiny model is past the CTC plateau and reads
    # most characters of held-out images (whole strings need more steps than a test can afford).
    assert trained.test is not None and trained.test.n == 30
    assert trained.test.cer < 0.7, trained.test
    losses = [h["train_loss"] for h in trained.history]
    assert losses[-1] < losses[0] / 3
    assert trained.history[-1]["val_loss"] < 0.6 * trained.history[0]["val_loss"]


def test_recognizer_accepts_every_input_type(trained, clean_dir: Path) -> None:
    r = Recognizer.load(trained.model_path)
    path = sorted(clean_dir.iterdir())[0]
    pil = Image.open(path)
    preds = r.predict([str(path), path.read_bytes(), pil, np.asarray(pil.convert("RGB"))])
    assert len(preds) == 4 and all(isinstance(p, Prediction) for p in preds)
    assert len({p.text for p in preds}) == 1
    for p in preds:
        assert 0.0 <= p.confidence <= 1.0
        assert len(p.char_confidences) == len(p.text)
    single = r.predict(path)
    assert isinstance(single, Prediction) and single.text == preds[0].text


def test_recognizer_loads_run_folder_and_constraints(trained, clean_dir: Path) -> None:
    r = Recognizer.load(trained.out)
    paths = sorted(clean_dir.iterdir())[:10]
    for p in r.predict(paths, length=4):
        assert len(p.text) == 4
    for p in r.predict(paths, charset="123"):
        assert set(p.text) <= set("123")
    with pytest.raises(CaptchaError, match="does not know"):
        r.predict(paths[:1], charset="xyz")


def test_resume_continues_from_checkpoint(tmp_path: Path, clean_dir: Path) -> None:
    cfg = dict(preset="tiny", label_sep="-", progress=False, seed=3, patience=50, out=str(tmp_path / "r"))
    train(str(clean_dir), TrainConfig(epochs=2, **cfg))
    r = train(str(clean_dir), TrainConfig(epochs=3, resume=True, **cfg))
    assert [h["epoch"] for h in r.history] == [1, 2, 3]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path, clean_dir: Path) -> None:
    with pytest.raises(CaptchaError, match="no checkpoint"):
        train(str(clean_dir), TrainConfig(out=str(tmp_path / "none"), resume=True, progress=False, label_sep="-"))


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path, clean_dir: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(clean_dir, data)
    (data / "123-bad.png").write_bytes(b"not an image at all")
    (data / "456-empty.png").write_bytes(b"")
    r = train(str(data), TrainConfig(out=str(tmp_path / "o"), epochs=1, preset="tiny", label_sep="-",
                                     progress=False, val=0.5, test=0.0, seed=1))
    err = capsys.readouterr().err
    assert "skipped" in err and ("123-bad.png" in err or "456-empty.png" in err)
    assert r.model_path.is_file()


def test_csv_labels_keep_leading_zeros(tmp_path: Path, clean_dir: Path) -> None:
    from conftest import render_clean

    d = tmp_path / "csv"
    (d / "img").mkdir(parents=True)
    rows = ["filename,label"]
    for i in range(40):
        label = f"0{i % 10}{(i * 7) % 10}"
        render_clean(label, seed=i).save(d / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{label}")
    (d / "train.csv").write_text("\n".join(rows) + "\n")
    r = train(str(d / "train.csv"), TrainConfig(out=str(tmp_path / "o"), epochs=1, preset="tiny", progress=False))
    assert "0" in read_metadata(r.model_path)["alphabet"]


def test_time_budget_stops_training(tmp_path: Path, clean_dir: Path) -> None:
    r = train(str(clean_dir), TrainConfig(out=str(tmp_path / "o"), epochs=500, max_minutes=0.05, preset="tiny",
                                          label_sep="-", progress=False))
    assert len(r.history) < 500
    assert r.model_path.is_file()


def test_bad_data_errors(tmp_path: Path) -> None:
    with pytest.raises(CaptchaError, match="no such"):
        train(str(tmp_path / "missing"), TrainConfig(out=str(tmp_path / "o"), progress=False))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptchaError, match="no images"):
        train(str(tmp_path / "empty"), TrainConfig(out=str(tmp_path / "o"), progress=False))
