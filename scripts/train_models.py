"""Train the shipped models into src/captcha_crnn/zoo/ with the default `captcha-crnn train` settings.

    python scripts/train_models.py [--only captcha_v2 henan_digits4 synthetic] [--data ../shared/datasets]

The recipe (default `captcha-crnn train` settings plus the overrides below) first trains on the
seeded 80/10/10 split (seed 0) and is scored on the held-out 10%; then the shipped file is trained
the same way on all the images (90% train, 10% validation) and carries that held-out figure in its
metadata, which `captcha-crnn models` shows as the model card. `make models` runs this script.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from captcha_crnn.data.synth import DEFAULT_CHARSET, synthesize
from captcha_crnn.model.modelfile import load_bundle, save_bundle
from captcha_crnn.model.zoo import ZOO_DIR, format_cards, zoo_cards
from captcha_crnn.training import TrainConfig, train

MODELS = {
    # name: (data below --data, a description for the card, TrainConfig overrides)
    # synthetic first: the others start from it (TrainConfig.init auto)
    "synthetic": (None, f"10000 `captcha-crnn synth` defaults (4-6 of {len(DEFAULT_CHARSET)} chars, 160x60)",
                  # height 32 pinned: the shipped file is the height-32 model every warm start stretches
                  # from (warmstart.py); the auto rule would now pick 48 for 6 characters in 160x60
                  {"max_minutes": 8.0, "label_sep": "_", "init": None, "height": 32}),
    "captcha_v2": ("captcha_v2", "captcha_images_v2 (Keras captcha OCR example set), 936 images", {}),
    "henan_digits4": ("henan_digits4/labels.csv", "henan_digits4: 8000 real 4-digit login captchas",
                      {"max_minutes": 5.0}),
}


def build(name: str, data_root: Path, work: Path) -> None:
    """Measure the recipe on a held-out 10%, then train the shipped file the same way on all the data."""
    rel, source, overrides = MODELS[name]
    if rel is None:
        data = work / "synthetic"
        synthesize(data, 10000, DEFAULT_CHARSET, (4, 6), (160, 60), seed=0)
    else:
        data = data_root / rel
    held = train(str(data), TrainConfig(out=str(work / f"held_{name}"), seed=0, **overrides))
    out = work / f"all_{name}"
    res = train(str(data), TrainConfig(out=str(out), seed=0, test=0.0, **overrides))
    b = load_bundle(res.model_path)
    b.info.setdefault("training", {})["source"] = source
    n_test = held.test.n if held.test else 0
    b.info["training"]["recipe"] = (f"held-out figure: the same recipe on the seed-0 split, {n_test} test images "
                                    "never seen; this file: trained on all images (10% for validation)")
    if held.test:
        b.info.setdefault("metrics", {})["test"] = {k: v for k, v in held.test.to_dict().items() if k != "confusions"}
    ZOO_DIR.mkdir(parents=True, exist_ok=True)
    save_bundle(b, ZOO_DIR / f"{name}.safetensors")
    shutil.copy(out / "curves.png", ZOO_DIR.parent.parent.parent / "docs" / f"curves_{name}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets", help="folder holding captcha_v2/ and henan_digits4/")
    ap.add_argument("--only", nargs="+", choices=list(MODELS), default=list(MODELS))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.only:
            print(f"=== {name}")
            build(name, Path(a.data), Path(tmp))
    print(format_cards(zoo_cards()))


if __name__ == "__main__":
    main()
