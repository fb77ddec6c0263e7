"""Crash safety: checkpoints mid-epoch and at epoch ends, SIGKILL and --resume, exact continuation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from captcha_crnn import Recognizer
from captcha_crnn.evaluate import evaluate_model
from captcha_crnn.training import TrainConfig, train
from captcha_crnn.training.checkpoint import CHECKPOINT, load_checkpoint, remove_stale_temporaries, save_checkpoint

pytestmark = pytest.mark.slow  # trains models or runs subprocesses (make test-fast skips)

# Small, warm-started and single-threaded, so a run is both quick and bit-for-bit reproducible;
# whole images (no auto crop), which this tiny set learns fastest.
SETTINGS = dict(epochs=3, batch_size=16, preset="small", label_sep="-", seed=4, patience=50, threads=1,
                crop=False)
FLAGS = ["--epochs", "3", "--batch-size", "16", "--preset", "small", "--label-sep", "-", "--seed", "4",
         "--patience", "50", "--threads", "1", "--crop", "off", "--quiet"]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    """The weights and their moving average (what is validated and saved) at the end of a run."""
    ck = load_checkpoint(out / CHECKPOINT)
    return {**{f"model.{k}": v for k, v in ck["model"].items()}, **{f"ema.{k}": v for k, v in ck["ema"].items()}}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


TIMINGS = {"time_s", "train_s", "train_images", "images_per_s", "loader_busy_s", "loader_wait_s"}  # this process


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMINGS} for h in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, clean_dir: Path):
    """The uninterrupted run every interrupted one is compared with."""
    out = tmp_path_factory.mktemp("uninterrupted")
    return train(str(clean_dir), TrainConfig(out=str(out), progress=False, checkpoint_minutes=1000, **SETTINGS))


def wait_for_mid_epoch_checkpoint(proc: subprocess.Popen, path: Path, timeout: float = 40) -> None:
    """Poll until the run has written a checkpoint inside epoch 2 or later (or has gone)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        if path.is_file():
            ck = load_checkpoint(path)  # renamed into place whole, so always readable
            if ck["epoch"] >= 1 and ck["batch"] > 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"no mid-epoch checkpoint after {timeout}s (exit status {proc.poll()})")


def test_sigkill_then_resume_continues_exactly(tmp_path: Path, clean_dir: Path, reference) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "captcha_crnn", "train", str(clean_dir), "--out", str(out), *FLAGS]
    log = (tmp_path / "log.txt").open("w")
    proc = subprocess.Popen([*cmd, "--checkpoint-minutes", "0.002"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_mid_epoch_checkpoint(proc, out / CHECKPOINT)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    ck = load_checkpoint(out / CHECKPOINT)
    epoch, batch = int(ck["epoch"]), int(ck["batch"])
    assert epoch >= 1 and 0 < batch
    before = json.loads(ck["history"])
    assert [h["epoch"] for h in before] == list(range(1, epoch + 1))

    r = subprocess.run([*cmd, "--resume", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"resumed from {out / CHECKPOINT} at epoch {epoch + 1}, batch {batch}" in r.stderr
    history = json.loads((out / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[:epoch] == before  # kept, time_s included: the clock continues too
    assert history[-1]["time_s"] >= before[-1]["time_s"]
    # The same split, optimizer, schedule and random states: the very same weights and figures.
    assert_same_weights(final_weights(out), final_weights(reference.out))
    assert without_times(history) == without_times(reference.history)
    rep, _, _ = evaluate_model(Recognizer.load(out / "model.safetensors", engine="torch"), str(clean_dir),
                               label_sep="-", progress=False)
    ref, _, _ = evaluate_model(Recognizer.load(reference.model_path, engine="torch"), str(clean_dir),
                               label_sep="-", progress=False)
    assert rep.sequence_accuracy >= 0.8 and abs(rep.sequence_accuracy - ref.sequence_accuracy) < 1e-9


def test_interrupted_and_resumed_in_process_gives_identical_weights(tmp_path: Path, clean_dir: Path,
                                                                    reference) -> None:
    out = tmp_path / "interrupted"
    cfg = dict(out=str(out), progress=False, checkpoint_minutes=1000, **SETTINGS)

    def interrupt(rec: dict, _bundle) -> None:
        if rec["epoch"] == 2:  # after validating epoch 2, before its checkpoint: back to the end of epoch 1
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(str(clean_dir), TrainConfig(**cfg), on_epoch=interrupt)
    assert load_checkpoint(out / CHECKPOINT)["epoch"] == 1
    r = train(str(clean_dir), TrainConfig(resume=True, **cfg))
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert_same_weights(final_weights(out), final_weights(reference.out))
    assert without_times(r.history) == without_times(reference.history)


def test_checkpoint_writes_are_atomic(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    (tmp_path / f".{CHECKPOINT}.abc123.tmp").write_bytes(b"half a checkpoint")  # left by a kill mid-write
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [f".{CHECKPOINT}.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]
