"""A captcha style nobody tuned for: can the default `captcha-crnn train` learn it in 10 minutes?

    python benchmarks/unseen_style.py [--n 2000] [--minutes 10] [--seed 0] [--json bench_out/unseen_style.json]
    python benchmarks/unseen_style.py --few-labels [--minutes 10 30 60] [--json benchmarks/results/unseen_style.json]

Generates (seeded, offline) 200x90 captchas of 6 case-sensitive characters from 62 symbols,
rendered by the `captcha` package, then bent by a strong barrel ("lens") distortion, on a noisy
colour background with coloured noise lines. Then it trains with the default settings under a time
budget on a seeded 90/10 split (val 5% of the rest) and prints the held-out accuracy.
None of the library's defaults were chosen on this style.

With --few-labels: benchmarks/student.py's hard_200 scenario (2500 images of the style, seed 7: the first
200 labelled, the next 1800 unlabelled, the last 500 held out and never read in training), once per
--minutes value; its rows (held-out accuracy, reading speed, the unlabelled images used) go to --json.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CHARSET = string.digits + string.ascii_letters  # 62 symbols, both cases
SIZE = (200, 90)


def lens(img: Image.Image, k: float) -> Image.Image:
    """Barrel (fisheye) lens: the centre is magnified 1 + k times, the rim squeezed, corners stay."""
    a = np.asarray(img)
    h, w = a.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    nx, ny = (xx - cx) / cx, (yy - cy) / cy
    f = (1 + k * (nx**2 + ny**2) / 2) / (1 + k)  # source radius / destination radius
    sx = np.clip(cx + nx * f * cx, 0, w - 1).round().astype(int)
    sy = np.clip(cy + ny * f * cy, 0, h - 1).round().astype(int)
    return Image.fromarray(a[sy, sx])


def render(job: tuple[str, str, int]) -> None:
    """One image: captcha-package glyphs in a random colour, noisy colour background, lines, lens."""
    from captcha.image import ImageCaptcha

    path, text, seed = job
    rng = random.Random(seed)
    random.seed(seed)
    w, h = SIZE
    fg = tuple(rng.randrange(0, 140) for _ in range(3))
    gen = ImageCaptcha(width=w, height=h, font_sizes=(36, 42, 48))
    glyphs = np.asarray(gen.generate_image(text).convert("RGB"), dtype=np.float32)
    paper = np.median(glyphs.reshape(-1, 3), axis=0)  # the package's own light background colour
    ink = np.clip(np.linalg.norm(glyphs - paper, axis=-1, keepdims=True) / 160, 0, 1)  # (H, W, 1)
    base = np.array([rng.randrange(150, 256) for _ in range(3)], dtype=np.float32)
    bg = np.clip(base + np.random.default_rng(seed).normal(0, 22, (h, w, 3)), 0, 255)
    out = Image.fromarray((bg * (1 - ink) + np.array(fg, dtype=np.float32) * ink).astype(np.uint8))
    d = ImageDraw.Draw(out)
    for _ in range(4):
        pts = [(rng.randrange(w), rng.randrange(h)) for _ in range(3)]
        d.line(pts, fill=tuple(rng.randrange(40, 220) for _ in range(3)), width=rng.choice((1, 2)))
    out = lens(out, rng.uniform(0.5, 0.8)).filter(ImageFilter.SMOOTH)
    out.save(path)


def generate(out: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    labels = ["".join(rng.choice(CHARSET) for _ in range(6)) for _ in range(n)]
    out.mkdir(parents=True, exist_ok=True)
    rows = ["filename,label"] + [f"{i}.png,{lab}" for i, lab in enumerate(labels)]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(render, [(str(out / f"{i}.png"), lab, seed * 100_003 + i) for i, lab in enumerate(labels)],
                      chunksize=64))
    (out / "labels.csv").write_text("\n".join(rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--minutes", type=float, nargs="+", default=[10.0])
    ap.add_argument("--few-labels", action="store_true", help="200 labelled + 1800 unlabelled (student.py's hard_200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="write the images here (default: a temporary folder)")
    ap.add_argument("--json", default="bench_out/unseen_style.json")
    a = ap.parse_args()
    if a.few_labels:
        return few_labels(a.minutes, Path(a.json))
    from captcha_crnn.training import TrainConfig, train

    a.minutes = a.minutes[0]

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.keep or tmp) / "unseen"
        t = time.perf_counter()
        generate(data, a.n, a.seed)
        print(f"generated {a.n} images in {time.perf_counter() - t:.0f} s: {data}", file=sys.stderr)
        cfg = TrainConfig(out=str(Path(tmp) / "run"), seed=a.seed, max_minutes=a.minutes, val=0.05, test=0.1)
        t = time.perf_counter()
        r = train(str(data / "labels.csv"), cfg)
        wall = time.perf_counter() - t
    res = {"images": a.n, "size": list(SIZE), "alphabet": len(CHARSET), "budget_min": a.minutes,
           "train_wall_s": round(wall, 1), "epochs": len(r.history),
           "test_n": r.test.n if r.test else 0,
           "test_sequence_accuracy": r.test.sequence_accuracy if r.test else None,
           "test_cer": r.test.cer if r.test else None,
           "test_case_blind_accuracy": ((r.test.case_insensitive or {}).get("sequence_accuracy")
                                        if r.test else None),
           "config": r.config}
    blind = res["test_case_blind_accuracy"]
    print("| style | images | budget | epochs | test n | sequence accuracy | ignoring case | CER |\n"
          "|---|---|---|---|---|---|---|---|")
    print(f"| unseen (6 of 62, lens, noisy colour, 200x90) | {a.n} | {a.minutes:g} min | {res['epochs']} | "
          f"{res['test_n']} | {res['test_sequence_accuracy']:.2%} | "
          f"{'-' if blind is None else f'{blind:.2%}'} | {res['test_cer']:.4f} |")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2))


def few_labels(budgets: list[float], out: Path) -> None:
    """hard_200 at each budget: a row per budget in `out`, rewritten after each."""
    import os

    sys.path.insert(0, str(Path(__file__).parent))
    from datasets import machine
    from student import hard_style, run

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lab, unl, held = hard_style(Path(tmp))
        for minutes in budgets:
            rows.append(run(f"hard_200_{minutes:g}min", lab, unl, held, minutes, 0, Path(tmp)))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"machine": machine(), "load_average": os.getloadavg(),
                                       "minutes_list": " ".join(f"{r['budget_minutes']:g}" for r in rows),
                                       "results": rows}, indent=1))
    print("| budget | labelled | unlabelled | held-out accuracy | output | unlabelled used (last epoch) |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        used = f"{r['unlabelled_used_last']:.0%}" if "unlabelled_used_last" in r else "-"
        print(f"| {r['budget_minutes']:g} min | {r['labelled']} | {r['unlabelled']} | {r['accuracy']:.2%} "
              f"(n={r['held_out']}) | {r['reader']} | {used} |")


if __name__ == "__main__":
    main()
