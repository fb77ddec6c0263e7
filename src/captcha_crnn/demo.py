"""`captcha-crnn demo`: synthesize captchas, train on them, evaluate, draw, and read fresh ones."""

from __future__ import annotations

from pathlib import Path


def run_demo(out: str = "runs/demo", n: int = 3000, max_minutes: float = 4.0, seed: int = 0, fresh: int = 200,
             progress: bool = True) -> dict:
    """Everything a first-time user wants to see, with no data of their own. Returns a summary."""
    from .data.synth import synthesize
    from .evaluate import evaluate_model, format_report
    from .infer import Recognizer
    from .training import TrainConfig, train
    from .viz import errors_gallery, gallery

    root = Path(out)
    charset, lengths, size = "0123456789", (4, 4), (120, 40)
    print(f"1/4 generating {n} training captchas and {fresh} fresh ones into {root}/data ...")
    synthesize(root / "data" / "train", n, charset, lengths, size, seed=seed, progress=progress)
    synthesize(root / "data" / "fresh", fresh, charset, lengths, size, seed=seed + 1, progress=progress)
    print(f"2/4 training (at most {max_minutes} minutes) ...")
    cfg = TrainConfig(out=str(root / "model"), max_minutes=max_minutes, epochs=60, label_sep="_", seed=seed,
                      progress=progress)
    res = train(str(root / "data" / "train"), cfg)
    print(f"3/4 evaluating on the {fresh} fresh captchas ...")
    rec = Recognizer.load(res.model_path)
    rep, ds, preds = evaluate_model(rec, str(root / "data" / "fresh"), label_sep="_", progress=False)
    print(format_report(rep, "fresh captchas"))
    samples = gallery(ds.images[:16], ds.labels[:16], preds[:16], root / "samples.png", "sample predictions")
    errors, _ = errors_gallery(ds.images, ds.labels, preds, root / "errors.png", limit=24)
    print("4/4 reading a few fresh captchas:")
    for path, truth in list(zip(ds.paths, ds.labels))[:5]:
        p = rec.predict(path)
        print(f"  {Path(path).name:<20} read {p.text!r:<8} truth {truth!r:<8} confidence {p.confidence:.3f}")
    files = {"model": res.model_path, "curves": res.out / "curves.png", "history": res.out / "history.json",
             "samples": samples, "errors": errors}
    print("files:\n" + "\n".join(f"  {k:<8} {v}" for k, v in files.items()))
    return {"fresh": rep.to_dict(), "files": {k: str(v) for k, v in files.items()}}
