"""Training throughput and memory: images/s with 1 and N processes, the loader's share, peak RSS.

    python benchmarks/train_scaling.py [--data DIR | --n 20000 --size 200x50] [--minutes 1]
        [--procs 1 2] [--batch-size 32] [--work bench_out/scaling] [--json bench_out/train_scaling.json]
        [-- extra captcha-crnn train flags, e.g. --preset small --threads 1 --val 0.02]

Without --data it synthesizes N captchas (`captcha-crnn synth`, all cores) into the work folder
once. Each process count runs `captcha-crnn train` as a fresh run under a time budget (N > 1
through torchrun, Gloo on the CPU, each process with cores/N threads), sharing one decoded-image
cache, so the first run also pays for decoding the set (reported apart). From history.json:

- images/s: training images per second of the epochs' step loops (all processes together);
- loader busy: the share of that time the loader thread spent reading and converting batches,
  loader wait: the share the model actually waited for it (the rest overlaps with compute);
  loader alone: images/s the loader delivers by itself (random batches from the cache, converted);
- peak RSS: the highest sum of resident memory over the process tree (torchrun's agent and
  workers included), sampled every 0.2 s; memory shared between processes is counted once per
  process, so this overstates a multi-process run.

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run cmd, sampling its process tree's RSS; wall time, peak RSS, exit status."""
    peak = {"rss": 0}
    with log.open("w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)

        def sample() -> None:
            while proc.poll() is None:
                peak["rss"] = max(peak["rss"], tree_rss(proc.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        sampler.join()
    return {"rc": rc, "wall_s": time.perf_counter() - t0, "peak_rss_mb": peak["rss"] / 2**20}


def make_data(work: Path, n: int, size: str) -> Path:
    """N synthetic captchas of the given size, generated once."""
    data = work / f"synth-{n}-{size}"
    if data.is_dir() and sum(1 for _ in data.glob("*.png")) >= n:
        return data
    shutil.rmtree(data, ignore_errors=True)
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    subprocess.run([sys.executable, "-m", "captcha_crnn", "synth", str(data), "--n", str(n), "--size", size,
                    "--workers", str(workers)], check=True)
    return data


def train_cmd(procs: int, data: Path, out: Path, cache: Path, minutes: float, batch_size: int,
              extra: list[str]) -> list[str]:
    launch = [sys.executable, "-m", "captcha_crnn"]
    if procs > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
                  "-m", "captcha_crnn"]
    return [*launch, "train", str(data), "--out", str(out), "--cache-dir", str(cache), "--max-minutes", str(minutes),
            "--epochs", "1000", "--patience", "1000", "--quiet", "--batch-size", str(batch_size), *extra]


def loader_speed(log: Path, batch_size: int, seconds: float = 5.0) -> float:
    """Images/s the loader alone delivers (random batches from the run's train cache, read and converted;
    0 when the run held its images in memory)."""
    import numpy as np

    from captcha_crnn.data.dataset import read_cache
    from captcha_crnn.data.images import to_ink

    found = re.search(r"decoded train images: \d+ \([\d.]+ MB\) in (\S+)", log.read_text())
    if not found:  # --cache-dir memory: no cache to read from
        return 0.0
    _, _, images = read_cache(found.group(1))
    rng, n, t0 = np.random.default_rng(0), 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        u8, _ = images.batch(rng.integers(0, len(images), batch_size).tolist())
        to_ink(u8)
        n += batch_size
    return n / (time.perf_counter() - t0)


def summarize(out: Path, log: Path) -> dict:
    """Throughput and loader figures from a run's history.json, decode times from its log."""
    hist = json.loads((out / "history.json").read_text())["history"]
    train_s = sum(h["train_s"] for h in hist)
    images = sum(h["train_images"] for h in hist)
    decode = [float(m) for m in re.findall(r"decoded (?:train|val) images: .*\(([\d.]+)s\)", log.read_text())]
    return {"epochs": len(hist), "steps": hist[-1]["step"], "train_images": images, "train_s": round(train_s, 1),
            "images_per_s": round(images / train_s, 1) if train_s else 0.0,
            "loader_busy_share": round(sum(h["loader_busy_s"] for h in hist) / train_s, 4) if train_s else 0.0,
            "loader_wait_share": round(sum(h["loader_wait_s"] for h in hist) / train_s, 4) if train_s else 0.0,
            "decode_s": round(sum(decode), 1), "val_sequence_accuracy": hist[-1]["val_sequence_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="a labelled folder or CSV (default: synthesize --n images)")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", default="200x50")
    ap.add_argument("--minutes", type=float, default=1.0, help="training time budget per run")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=32, help="global batch size (the train default)")
    ap.add_argument("--work", default="bench_out/scaling")
    ap.add_argument("--json", default="bench_out/train_scaling.json")
    ap.add_argument("extra", nargs="*", help="more `captcha-crnn train` flags (after --)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(a.data) if a.data else make_data(work, a.n, a.size)
    extra = a.extra if a.data else ["--label-sep", "_", *a.extra]  # synth names files <label>_<i>.png
    cache = work / "cache"
    runs = []
    for p in a.procs:
        out = work / f"run-{p}proc"
        shutil.rmtree(out, ignore_errors=True)
        log = work / f"run-{p}proc.log"
        m = run_measured(train_cmd(p, data, out, cache, a.minutes, a.batch_size, extra), log)
        if m["rc"] != 0:
            sys.exit(f"{p} process run failed (exit {m['rc']}); see {log}")
        runs.append({"processes": p, **m, **summarize(out, log)})
        runs[-1]["loader_alone_images_per_s"] = round(loader_speed(log, a.batch_size), 0)
        print(f"{p} process(es): {runs[-1]['images_per_s']} images/s", file=sys.stderr)
    from harness import markdown, provenance, save_runs

    images = sum(1 for _ in Path(data).glob("*.png")) if Path(data).is_dir() else None
    save_runs(a.json, [{**r, **provenance()} for r in runs], data=str(data), images=images, minutes=a.minutes,
              train_flags=extra)
    print(f"\n{data}: {images} images, {a.minutes} min budget per run, {os.cpu_count()} CPUs")
    print(markdown(["processes", "images/s", "loader busy", "loader wait", "loader alone (img/s)", "steps",
                    "decode (s)", "wall (s)", "peak RSS (MiB)"], ([
        r["processes"], f"{r['images_per_s']:.1f}", f"{r['loader_busy_share']:.1%}", f"{r['loader_wait_share']:.1%}",
        f"{r['loader_alone_images_per_s']:.0f}", r["steps"], f"{r['decode_s']:.0f}", f"{r['wall_s']:.0f}",
        f"{r['peak_rss_mb']:.0f}"] for r in runs)))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
