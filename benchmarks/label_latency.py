"""How quickly the labelling page answers while "Train now" trains in the background.

    python benchmarks/label_latency.py [--images 300] [--answers 200] [--minutes 1.5]
        [--json benchmarks/results/label_latency.json]

Generates a folder of captchas (`captcha-crnn synth`), serves `captcha-crnn label` on loopback in
this process, labels a first part of the folder, starts "Train now" (a child process with the
default settings and `--max-minutes`), and while it trains times each answer round trip as the
page makes it (POST /api/answer, then GET /api/next) over HTTP. Prints p50/p99/max in ms, idle and
during training, and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from captcha_crnn.data.label_store import LabelStore
from captcha_crnn.data.synth import synthesize
from captcha_crnn.service.labelling import Session, create_label_app

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from browser import run_server  # noqa: E402


def timed_answers(base: str, names: list[str], labels: dict[str, str]) -> list[float]:
    """Round-trip ms of answer + next, one image after another, as the page does."""
    out = []
    with httpx.Client(base_url=base, timeout=30) as c:
        for name in names:
            t0 = time.perf_counter()
            c.post("/api/answer", json={"name": name, "action": "label", "label": labels[name]}).raise_for_status()
            c.get("/api/next", params={"after": name}).raise_for_status()
            out.append(1000 * (time.perf_counter() - t0))
    return out


def stats(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=100)
    return {"n": len(ms), "p50": round(statistics.median(ms), 2), "p99": round(q[98], 2), "max": round(max(ms), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--answers", type=int, default=200, help="answers timed during training")
    ap.add_argument("--minutes", type=float, default=1.5, help="training budget")
    ap.add_argument("--json", default="benchmarks/results/label_latency.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "captchas"
        synthesize(folder, a.images, "0123456789", (4, 4), (120, 40), seed=0, progress=False)
        truth = {}
        for i, p in enumerate(sorted(folder.glob("*.png"))):  # unlabelled names, as a downloaded folder has
            truth[f"c{i:05d}.png"] = p.stem.split("_")[0]
            p.rename(folder / f"c{i:05d}.png")
        session = Session(LabelStore(folder))
        base, stop = run_server(create_label_app(session, train_args=("--max-minutes", str(a.minutes))))
        try:
            names = sorted(truth)
            first = len(names) - a.answers
            idle = timed_answers(base, names[:first], truth)
            httpx.post(base + "/api/train", timeout=30).raise_for_status()
            busy = timed_answers(base, names[first:], truth)
            state = httpx.get(base + "/api/train", timeout=30).json()["state"]
        finally:
            stop()
    from harness import markdown, provenance, save_runs  # only now: the answers were timed without their imports

    rows = [{"while": "idle", **stats(idle), **provenance()}, {"while": "training", **stats(busy), **provenance()}]
    print(markdown(["while", "answers", "p50 ms", "p99 ms", "max ms"], ([r["while"], r["n"], r["p50"], r["p99"],
                                                                        r["max"]] for r in rows)))
    save_runs(a.json, rows, training_state_after=state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
