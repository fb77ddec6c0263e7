"""Teacher -> student: the default `train` on few labels and unlabelled images; held-out accuracy and the
output's reading speed against the shipped captcha_v2 model, in the same run (benchmarks/harness.py).

    python benchmarks/student.py [--scenarios v2_100_unlabelled v2_all secure_200 ...] [--seeds 0 1 2]
        [--set FIELD=VALUE ...] [--root ../shared/datasets] [--json benchmarks/results/student.json] [--table JSON]

Each of SCENARIOS (dataset, labels drawn at random with the seed, the rest --unlabelled or not, budget,
held-out set never labelled) is `captcha-crnn train --max-minutes M`, once per seed (ONCE: seed 0): v2_*
on captcha_v2 (v2_all scored on the test split `train` makes, the others on the images not drawn);
henan_50, generic_250, generic_all (only when named) from the seed-0 90% pool, scored on its 10%;
secure_100/200/500/all: securimage, a real site's style, 1000 held out at random. Rows of scenarios no
longer here go from the JSON.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from harness import DATASETS, Scenario, drawn, held_out, markdown, measure, parse, samples, saved_runs, whole

# held-out set: "rest" (the images not drawn), "train" (train's test split), "pool" (held_out, seed 0), "1000" (drawn)
SCENARIOS: dict[str, tuple[str, int | None, bool, float, str]] = {
    "v2_25_unlabelled": ("captcha_v2", 25, True, 5.0, "rest"),
    "v2_100_unlabelled": ("captcha_v2", 100, True, 5.0, "rest"),
    "v2_all": ("captcha_v2", None, False, 3.0, "train"),
    "v2_100": ("captcha_v2", 100, False, 3.0, "rest"),
    "henan_50": ("henan_digits4", 50, True, 5.0, "pool"),
    "generic_250": ("generic_varlen", 250, True, 10.0, "pool"),
    "generic_all": ("generic_varlen", None, False, 10.0, "pool"),
    **{f"secure_{n or 'all'}": ("securimage", n, True, 10.0, "1000") for n in (100, 200, 500, None)},
}
ONCE = ("v2_100", "generic_250", "generic_all")  # run with seed 0 only


def scenario(name: str, root: str, seed: int) -> Scenario:
    dataset, n, rest_unlabelled, minutes, how = SCENARIOS[name]
    if how == "train":
        return replace(whole(root, dataset, seed, minutes), name=name)
    pool, held = samples(root, dataset), []
    if how == "pool":
        pool, held = held_out(pool)
    elif how == "1000":
        held, pool = drawn(pool, 1000, seed)
    labelled, rest = (pool, []) if n is None else drawn(pool, n, seed)
    return Scenario(name, labelled, held or rest, rest if rest_unlabelled else [], minutes, DATASETS[dataset].case,
                    seed)


def table(rows: list[dict[str, Any]]) -> str:
    return markdown(["scenario", "labelled", "unlabelled", "budget", "held-out accuracy", "output", "its teacher",
                     "unlabelled used (last epoch)", "images/s (output / shipped captcha_v2)"], (
        [f"{r['scenario']} (seed {r['seed']}, {r.get('precision') or 'precision unrecorded'})", r["labelled"],
         r["unlabelled"], f"{r['budget_minutes']:g} min",
         f"{r['accuracy']:.2%} (n={r['held_out']}" + (f", {r['outside_alphabet']} outside the alphabet)"
                                                      if r.get("outside_alphabet") else ")"), r["reader"],
         f"{r['teacher_accuracy']:.2%}" if "teacher_accuracy" in r else "-",
         f"{r['unlabelled_used_last']:.0%}" if "unlabelled_used_last" in r else "-",
         f"{r['images_per_s']:.0f} / {r['shipped_captcha_v2_images_per_s']:.0f} ({r['speed_ratio']:.2f}x)"]
        for r in rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS),
                    default=[s for s in SCENARIOS if s != "generic_all"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    a = parse(ap, "benchmarks/results/student.json", table)
    todo = ((name, seed) for name in a.scenarios for seed in ([0] if name in ONCE else a.seeds))
    rows = [r for r in saved_runs(a.json) if r["scenario"] in SCENARIOS]
    print(table(measure((scenario(name, a.root, seed) for name, seed in todo), a, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
