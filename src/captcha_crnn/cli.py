"""The `captcha-crnn` command line: each command parses its arguments and calls one function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import CaptchaError


def _add_decode(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--beam", type=int, default=1, metavar="K", help="beam width (1 = greedy, the default)")
    g.add_argument("--length", type=int, default=None, metavar="N", help="read exactly N characters")
    g.add_argument("--charset", default=None, metavar="CHARS", help="read only these characters")


def _add_labels(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("labels (for folders; a CSV has a label column)")
    g.add_argument("--label-regex", default=None, metavar="RE",
                   help="take the label from the file name with this regex (first group), e.g. '^([^_]+)_'")
    g.add_argument("--label-sep", default=None, metavar="SEP",
                   help="take the label up to this separator, e.g. '-' for 'abcd-0.png'")


def cmd_train(a: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(a).items() if k in fields and k != "data"})
    cfg.progress = not a.quiet
    r = train(a.data, cfg)
    if a.json:
        print(json.dumps({"model": str(r.model_path), "best": r.best,
                          "test": r.test.to_dict() if r.test else None}))
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from .evaluate import evaluate_model, format_report
    from .infer import Recognizer

    rec = Recognizer.load(a.model)
    rep, ds, preds = evaluate_model(rec, a.data, a.beam, a.length, a.charset, a.label_regex, a.label_sep,
                                    progress=not a.json)
    if a.errors:
        from .viz import errors_gallery

        errors_gallery(ds.images, ds.labels, preds, a.errors)
    if a.json:
        print(json.dumps({**rep.to_dict(), "data": a.data, "model": a.model, "skipped": len(ds.skipped)}))
    else:
        print(format_report(rep, a.data))
        if a.errors:
            print(f"errors gallery: {a.errors}")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from .data.images import load_image
    from .data.labels import list_images
    from .infer import Recognizer

    rec = Recognizer.load(a.model)
    paths = list_images(a.images)
    arrays, ok, failed = [], [], 0
    for p in paths:
        try:
            arrays.append(load_image(p, rec.preprocess))
            ok.append(p)
        except CaptchaError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    preds = rec.predict_arrays(arrays, a.beam, a.length, a.charset, a.batch_size)
    if a.json:
        print(json.dumps([{"path": str(p), **pr.to_dict(), "source": str(p)} for p, pr in zip(ok, preds)]))
    else:
        for p, pr in zip(ok, preds):
            print(f"{p}\t{pr.text}\t{pr.confidence:.4f}")
    return 1 if failed else 0


def cmd_info(a: argparse.Namespace) -> int:
    from .infer.recognizer import resolve_model
    from .model.modelfile import load_bundle
    from .model.summary import format_summary

    path = resolve_model(a.model)
    b = load_bundle(path)
    meta = b.metadata()
    if a.json:
        print(json.dumps({"path": str(path), **meta}))
        return 0
    pre = b.preprocess
    print(f"model file: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print(f"alphabet ({len(b.alphabet)}): {b.alphabet.chars}")
    print(f"preprocessing: height {pre.height}, width {pre.width or 'aspect-preserving'}, "
          f"{'grey' if pre.channels == 1 else 'RGB'}, composited onto white")
    cfg = b.model.cfg
    print(f"architecture: {cfg.backbone} backbone {list(cfg.widths)} x{cfg.depth}, {cfg.rnn.upper()} "
          f"{cfg.rnn_layers}x{cfg.hidden} bidirectional, {cfg.num_classes} classes (blank = 0)")
    print(format_summary(b.model, pre.width or 128))
    tr = b.info.get("training", {})
    if tr:
        print(f"training data: {tr.get('data')} ({tr.get('train_images')} train, {tr.get('val_images')} val); "
              f"{tr.get('split')}")
    for split, m in b.info.get("metrics", {}).items():
        figs = {k: v for k, v in m.items() if isinstance(v, (int, float))}
        print(f"metrics ({split}): " + ", ".join(f"{k} {v:.4g}" for k, v in figs.items()))
    return 0


def cmd_synth(a: argparse.Namespace) -> int:
    from .data.synth import synthesize

    lo, _, hi = a.length.partition("-")
    w, _, h = a.size.partition("x")
    try:
        lengths, size = (int(lo), int(hi or lo)), (int(w), int(h))
    except ValueError:
        raise CaptchaError(f"bad --length {a.length!r} or --size {a.size!r} (expected 4-6 and 200x60)") from None
    synthesize(a.out, a.n, a.charset, lengths, size, a.seed, a.fonts, a.workers)
    print(f"wrote {a.n} captchas to {a.out}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(a.out, a.n, a.max_minutes, a.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to generate the CLI reference in the README)."""
    from .data.synth import DEFAULT_CHARSET
    from .train.config import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(prog="captcha-crnn", description="Train CRNN captcha readers and read captchas.")
    p.add_argument("--version", action="version", version=f"captcha-crnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model on a folder or CSV of labelled images")
    t.add_argument("data", help="folder of images (label = file stem) or a CSV with filename,label")
    t.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    t.add_argument("--epochs", type=int, default=d.epochs, help=f"maximum epochs (default {d.epochs})")
    t.add_argument("--max-minutes", type=float, default=None, help="time budget; the schedule fits into it")
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--patience", type=int, default=d.patience, help="early stop after N epochs without gain")
    t.add_argument("--seed", type=int, default=d.seed, help="seed for the split, init and augmentation")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    t.add_argument("--val", type=float, default=d.val, help="validation fraction of the split")
    t.add_argument("--test", type=float, default=d.test, help="test fraction of the split")
    t.add_argument("--val-data", default=None, help="separate validation folder/CSV (no val split)")
    t.add_argument("--test-data", default=None, help="separate test folder/CSV (no test split)")
    t.add_argument("--height", type=int, default=d.height, help="input height, a multiple of 16")
    t.add_argument("--width", default=d.width,
                   help="input width: a number, 'variable' (keep aspect, pad) or 'auto' (from the data)")
    t.add_argument("--channels", type=int, choices=[1, 3], default=d.channels, help="1 grey, 3 colour")
    t.add_argument("--preset", choices=["tiny", "small", "base"], default=d.preset, help="model size")
    t.add_argument("--backbone", choices=["plain", "resnet"], default=d.backbone)
    t.add_argument("--rnn", choices=["gru", "lstm"], default=d.rnn)
    t.add_argument("--dropout", type=float, default=d.dropout)
    t.add_argument("--augment", type=float, default=d.augment, help="augmentation strength (0 = off)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    _add_labels(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a model on labelled images")
    e.add_argument("model", help="model file, run folder or shipped model name")
    e.add_argument("data", help="folder of labelled images or a CSV")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--errors", default=None, metavar="PNG", help="draw misread images into this file")
    _add_decode(e)
    _add_labels(e)
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("predict", help="read captchas from files, folders or globs")
    r.add_argument("model", help="model file, run folder or shipped model name")
    r.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    r.add_argument("--json", action="store_true", help="print a JSON list")
    r.add_argument("--batch-size", type=int, default=128)
    _add_decode(r)
    r.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="show a model: layers, alphabet, preprocessing, training, metrics")
    i.add_argument("model", help="model file, run folder or shipped model name")
    i.add_argument("--json", action="store_true", help="print the metadata as JSON")
    i.set_defaults(func=cmd_info)

    s = sub.add_parser("synth", help="generate labelled synthetic captchas offline")
    s.add_argument("out", help="output folder")
    s.add_argument("--n", type=int, default=1000, help="number of images")
    s.add_argument("--length", default="4-6", help="label length or range, e.g. 4 or 4-6")
    s.add_argument("--charset", default=DEFAULT_CHARSET)
    s.add_argument("--size", default="160x60", help="WIDTHxHEIGHT")
    s.add_argument("--fonts", default=None, metavar="DIR", help="folder of .ttf/.otf fonts")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=cmd_synth)

    m = sub.add_parser("demo", help="synthesize captchas, train, evaluate and read (no data needed)")
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--n", type=int, default=3000, help="training images to synthesize")
    m.add_argument("--max-minutes", type=float, default=4.0, help="training time budget")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a command; user errors become one line on stderr and exit status 2."""
    parser = build_parser()
    a = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = a.func
    try:
        return func(a)
    except CaptchaError as e:
        print(f"captcha-crnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captcha-crnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
