"""Data-parallel training under torchrun (2 CPU processes, Gloo): learning, one writer, resume after a kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from captcha_crnn import Recognizer
from captcha_crnn.evaluate import evaluate_model
from captcha_crnn.model.modelfile import read_metadata
from captcha_crnn.training import TrainConfig, train
from captcha_crnn.training.checkpoint import CHECKPOINT, load_checkpoint
from captcha_crnn.training.distributed import shard

pytestmark = pytest.mark.slow  # trains models or runs subprocesses (make test-fast skips)

FLAGS = ["--epochs", "3", "--batch-size", "16", "--preset", "small", "--label-sep", "-", "--seed", "2",
         "--crop", "off", "--quiet"]


def torchrun(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "captcha_crnn", "train", str(data), "--out", str(out), *FLAGS, *extra]


def accuracy(model: Path, data: Path) -> float:
    rep, _, _ = evaluate_model(Recognizer.load(model, engine="torch"), str(data), label_sep="-", progress=False)
    return rep.sequence_accuracy


def kill_tree(job: subprocess.Popen) -> None:
    """SIGKILL the torchrun agent and its workers (each in a session of its own), as a lost machine."""
    workers = psutil.Process(job.pid).children(recursive=True)
    job.send_signal(signal.SIGKILL)
    for p in workers:
        p.send_signal(signal.SIGKILL)
    job.wait()  # the agent is our child: reaped here, so its exit status stays ours to read
    psutil.wait_procs(workers, timeout=30)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory, clean_dir: Path):
    out = tmp_path_factory.mktemp("ddp")
    r = subprocess.run(torchrun(clean_dir, out, "--json", "--checkpoint-minutes", "1000"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out, r


def test_shards_cover_the_epoch_with_equal_steps() -> None:
    order = [7, 3, 9, 0, 4, 1, 8]
    parts = [shard(order, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    assert sorted(sum(parts, [])) == sorted(order + order[:2])  # padded by wrapping round
    assert shard(order, 0, 1) == order


def test_two_processes_read_as_well_as_one(two_process_run, tmp_path: Path, clean_dir: Path) -> None:
    out, r = two_process_run
    assert len([line for line in r.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 alone reports
    assert r.stderr.count("epoch   1/3") == 1  # and logs
    assert json.loads(r.stdout)["best"]["epoch"] >= 1
    assert read_metadata(out / "model.safetensors")["training"]["processes"] == 2
    single = train(str(clean_dir), TrainConfig(out=str(tmp_path / "one"), epochs=3, batch_size=16, preset="small",
                                               label_sep="-", seed=2, progress=False, threads=1,
                                               crop=False))
    acc2, acc1 = accuracy(out / "model.safetensors", clean_dir), accuracy(single.model_path, clean_dir)
    assert acc2 >= 0.8 and acc1 >= 0.8
    assert abs(acc2 - acc1) <= 0.15


def test_killed_torchrun_job_resumes_to_the_same_weights(two_process_run, tmp_path: Path, clean_dir: Path) -> None:
    ref, _ = two_process_run
    out = tmp_path / "killed"
    job = subprocess.Popen(torchrun(clean_dir, out, "--checkpoint-minutes", "0.002"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while job.poll() is None and time.monotonic() - t0 < 60:
            ck = out / CHECKPOINT
            if ck.is_file() and load_checkpoint(ck)["batch"] > 0:
                break
            time.sleep(0.05)
    finally:
        kill_tree(job)
    assert job.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    ck = load_checkpoint(out / CHECKPOINT)
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and ck["batch"] > 0, (ck["epoch"], ck["batch"])
    r = subprocess.run(torchrun(clean_dir, out, "--resume"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"at epoch {int(ck['epoch']) + 1}, batch {int(ck['batch'])}" in r.stderr, r.stderr[-3000:]
    for part in ("model", "ema"):  # the weights, and their average (what is saved)
        a, b = load_checkpoint(ref / CHECKPOINT)[part], load_checkpoint(out / CHECKPOINT)[part]
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], (part, r.stderr[-3000:])
