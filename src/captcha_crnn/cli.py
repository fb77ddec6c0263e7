"""The `captcha-crnn` command line: the argument parser and the entry point (commands.py runs them)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .commands import (
    cmd_demo,
    cmd_download,
    cmd_eval,
    cmd_export,
    cmd_info,
    cmd_label,
    cmd_models,
    cmd_predict,
    cmd_pretrain,
    cmd_serve,
    cmd_synth,
    cmd_train,
)
from .errors import CaptchaError
from .version import __version__


def count(lo: int = 1, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from lo to hi (a clear usage error otherwise)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {v}" if hi else
                                             f"must be at least {lo}, got {v}")
        return v

    return parse


# The train options `train --help` shows; `train --help-all` shows the rest (each works either way).
TRAIN_MAIN = ("--out", "--max-minutes", "--unlabelled", "--val-data", "--test-data", "--seed", "--resume",
              "--reader", "--case", "--label-regex", "--label-sep", "--json", "--quiet")


def shown(name: str, help_text: str, full: bool) -> str:
    """The help of a train option: its text where `train --help` shows it (or full), else hidden."""
    return help_text if full or name in TRAIN_MAIN else argparse.SUPPRESS


def add_config_flags(p: argparse.ArgumentParser, config: type, full: bool = True) -> None:
    """One flag per field of a config dataclass (train/config.py: opt): help, parser and rule from
    the field's metadata, so a bad value is argparse's usage error naming the flag; unless `full`, only
    the TRAIN_MAIN ones show in --help."""
    from dataclasses import MISSING, fields

    from .training.config import GENERATED

    for f in fields(config):
        m = f.metadata
        if m.get("cli") != GENERATED:
            continue
        name = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        value = {True: "on", False: "off"}.get(default, default) if f.name == "crop" else default
        help_text = shown(name, m["help"] + (f" (default {value})" if value not in (None, "") else ""), full)
        if isinstance(default, bool) and m["parse"] is None:
            p.add_argument(name, action="store_true", help=shown(name, m["help"], full))
            continue
        parse = m["parse"] or type(default)
        p.add_argument(name, type=_checked(parse, m["rule"]), default=default, choices=m["choices"],
                       metavar=m["metavar"], help=help_text)


def _probability(v: Any) -> str | None:
    """A rule: None for a number from 0 to 1."""
    return None if isinstance(v, float) and 0 <= v <= 1 else "a number from 0 to 1"


def _checked(parse: Callable[[str], Any], rule: Callable[[Any], str | None] | None) -> Callable[[str], Any]:
    """An argparse type: parse the text, then apply the field's rule (a usage error otherwise)."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except (ValueError, KeyError):
            want = (rule(text) if rule else None) or f"a value of type {getattr(parse, '__name__', 'value')}"
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        want = rule(value) if rule else None
        if want:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _add_decode(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding")
    from .decode.limits import MAX_BEAM, MAX_LENGTH

    g.add_argument("--beam", type=count(1, MAX_BEAM), default=1, metavar="K",
                   help="beam width (1 = greedy, the default)")
    g.add_argument("--length", type=count(1, MAX_LENGTH), default=None, metavar="N", help="read exactly N characters")
    g.add_argument("--charset", default=None, metavar="CHARS", help="read only these characters")


def _add_labels(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("labels (for folders; a CSV has a label column)")
    g.add_argument("--label-regex", default=None, metavar="RE",
                   help="take the label from the file name with this regex (first group), e.g. '^([^_]+)_'")
    g.add_argument("--label-sep", default=None, metavar="SEP",
                   help="take the label up to this separator, e.g. '-' for 'abcd-0.png'")


def build_parser(full: bool = True) -> argparse.ArgumentParser:
    """The argument parser (also used to generate the CLI reference, docs/cli.md); unless `full`, `train --help`
    shows only the options most runs need (TRAIN_MAIN)."""
    p = argparse.ArgumentParser(prog="captcha-crnn", description="Train CRNN captcha readers and read captchas.")
    p.add_argument("--version", action="version", version=f"captcha-crnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub, full)
    for add in (_add_reading, _add_data, _add_serve, _add_label):
        add(sub)
    return p


class HelpAll(argparse.Action):
    """`train --help-all`: the train help with every option."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        sub = next(a for a in build_parser(full=True)._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices["train"].print_help()
        parser.exit()


def _add_train(sub: Any, full: bool = True) -> None:
    from .training.config import TrainConfig

    t = sub.add_parser("train", help="train a model on a folder or CSV of labelled images",
                       epilog=None if full else "more options: captcha-crnn train --help-all")
    t.add_argument("data", help="folder of images (label = file stem) or a CSV with filename,label")
    t.add_argument("--help-all", action=HelpAll, help="show every option, then exit")
    add_config_flags(t, TrainConfig, full)
    t.add_argument("--unlabelled", action="append", default=[], metavar="PATH",
                   help=TrainConfig.__dataclass_fields__["unlabelled"].metadata["help"])
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    _add_labels(t)
    t.set_defaults(func=cmd_train)


def _add_reading(sub: Any) -> None:
    e = sub.add_parser("eval", help="evaluate a model on labelled images")
    e.add_argument("model", help="model file, run folder or shipped model name")
    e.add_argument("data", help="folder of labelled images or a CSV")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--errors", default=None, metavar="PNG", help="draw misread images into this file")
    e.add_argument("--case", choices=["sensitive", "insensitive"], default=None,
                   help="compare case-blind or not (default: as the model was trained)")
    _add_decode(e)
    _add_labels(e)
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("predict", help="read captchas from files, folders or globs")
    r.add_argument("model", help="model file, run folder or shipped model name")
    r.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    r.add_argument("--json", action="store_true", help="print a JSON list")
    r.add_argument("--batch-size", type=count(1), default=128, help="images per forward pass (default 128)")
    r.add_argument("--engine", choices=["auto", "onnx", "torch"], default="auto",
                   help="onnx (ONNX Runtime), torch, or auto: onnx when onnxruntime is installed (default)")
    r.add_argument("--threads", type=count(1), default=None, help="threads for the engine and image decoding "
                   "(default: all cores)")
    r.add_argument("--min-confidence", type=_checked(float, _probability), default=None, metavar="P",
                   help="report readings under confidence P as rejected (JSON \"rejected\": true, exit status 3): "
                        "in automation a refused captcha is cheaper than a wrong one; `eval` shows the trade-off")
    _add_decode(r)
    r.set_defaults(func=cmd_predict)

    x = sub.add_parser("export", help="export a model to ONNX (with its metadata; optionally int8)")
    x.add_argument("model", help="model file, run folder or shipped model name")
    x.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    x.add_argument("--int8", action="store_true", help="int8 dynamic quantisation of the linear layers")
    x.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="show a model: layers, alphabet, preprocessing, training, metrics")
    i.add_argument("model", help="model file, run folder or shipped model name")
    i.add_argument("--json", action="store_true", help="print the metadata as JSON")
    i.set_defaults(func=cmd_info)

    ms = sub.add_parser("models", help="list the shipped models (model cards), usable by name as MODEL")
    ms.add_argument("--json", action="store_true", help="print the cards as a JSON list")
    ms.set_defaults(func=cmd_models)


def _add_data(sub: Any) -> None:
    from .data.synth import DEFAULT_CHARSET, STYLES

    s = sub.add_parser("synth", help="generate labelled synthetic captchas offline")
    s.add_argument("out", help="output folder")
    s.add_argument("--n", type=int, default=1000, help="number of images")
    s.add_argument("--length", default="4-6", help="label length or range, e.g. 4 or 4-6")
    s.add_argument("--charset", default=DEFAULT_CHARSET)
    s.add_argument("--size", default="160x60", help="WIDTHxHEIGHT")
    s.add_argument("--fonts", default=None, metavar="DIR", help="folder of .ttf/.otf fonts")
    s.add_argument("--style", choices=STYLES, default="captcha",
                   help="captcha: the captcha package's look at --size; mixed: many fonts, colours, rotations "
                        "and spacings at sizes of their own (the pre-training style)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=cmd_synth)

    p = sub.add_parser("pretrain", help="pre-train the project's own backbone on mixed-style synthetic captchas "
                                        "(resumable; for train --backbone-weights)")
    p.add_argument("--out", default="runs/pretrain", help="folder for the synthetic set, the run and the backbone")
    p.add_argument("--count", type=count(100), default=60_000, help="synthetic images, generated once (default 60000)")
    p.add_argument("--max-minutes", type=float, default=None, help="training time budget, counted across resumes")
    p.add_argument("--epochs", type=count(1), default=30, help="maximum epochs (default 30)")
    p.add_argument("--height", type=count(16, 256), default=32,
                   help="input height, a multiple of 16 (default 32: a quarter of ddddocr's 64 in cost)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=count(1), default=2, help="processes generating images (default 2)")
    p.add_argument("--threads", type=count(1), default=None, help="CPU threads for training (default: all cores)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pretrain)

    m = sub.add_parser("demo", help="synthesize captchas, train, evaluate and read (no data needed)")
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--n", type=int, default=3000, help="training images to synthesize")
    m.add_argument("--max-minutes", type=float, default=4.0, help="training time budget")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_demo)

    w = sub.add_parser("download", help="fetch, unpack and check a public labelled captcha set")
    w.add_argument("dataset", choices=["captcha_v2"], help="captcha_v2: 1040 PNGs, 200x50, 5-character labels")
    w.add_argument("dir", help="folder to unpack the images into (created; label = file stem)")
    w.add_argument("--url", default=None, help="download from this address instead of the set's own")
    w.add_argument("--zip", default=None, metavar="FILE", help="unpack this already-downloaded zip (no network)")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.add_argument("--json", action="store_true", help="print the check as one JSON object")
    w.set_defaults(func=cmd_download)


def _add_label(sub: Any) -> None:
    lb = sub.add_parser("label", help="a web page to label a folder of captchas (model pre-fill, least sure first)")
    lb.add_argument("dir", help="folder of unlabelled captchas; answers go to DIR/labels.csv")
    lb.add_argument("--model", default=None, metavar="MODEL",
                    help="pre-fill and order by this model's reading (path, run folder or shipped name; ddddocr: "
                         "ddddocr's own model, zero-shot; 'none': file order). Default: ddddocr where the "
                         "pretrained extra is installed, else none")
    lb.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    lb.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    lb.add_argument("--api-key", default=None, metavar="KEY",
                    help="require X-API-Key: KEY on /api/* and /metrics (or set CAPTCHA_CRNN_API_KEY); the page URL "
                         "carries it")
    lb.add_argument("--charset", default=None, metavar="CHARS", help="only these characters in labels")
    lb.add_argument("--publish", default=None, metavar="FILE",
                    help="\"Train now\" copies its new model over FILE (atomically): point it at the file `serve` "
                         "reads, and the service swaps the new model in without a restart")
    lb.add_argument("--with-labels", default=None, metavar="PATH",
                    help="\"Train now\" also trains on these labelled images (folder or CSV: the model's earlier "
                         "labels); DIR's unanswered images are unlabelled ones")
    lb.set_defaults(func=cmd_label)


def _add_serve(sub: Any) -> None:
    v = sub.add_parser("serve", help="HTTP service and web page: POST /v1/read, GET /v1/models, /metrics, /")
    v.add_argument("models", nargs="*", metavar="MODEL",
                   help="model files, run folders, shipped names or NAME=PATH (default: the shipped models); "
                        "requests choose one with ?model=NAME (name: shipped name, file stem or folder name)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    v.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    v.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default 1)")
    v.add_argument("--api-key", default=None, metavar="KEY",
                   help="require Authorization: Bearer KEY or X-API-Key: KEY on /v1/* and /metrics "
                        "(or set CAPTCHA_CRNN_API_KEY)")
    v.add_argument("--engine", choices=["auto", "onnx", "torch"], default="auto", help="inference engine")
    v.add_argument("--threads", type=int, default=None, metavar="N",
                   help="inference threads per worker (default: cores / workers - 1, at least 1)")
    v.add_argument("--max-batch", type=int, default=64, metavar="N", help="most images per forward pass (default 64)")
    v.add_argument("--max-wait-ms", type=float, default=2.0, metavar="MS",
                   help="longest a batch waits for images already on their way (default 2)")
    v.add_argument("--max-body", type=int, default=8 * 1024 * 1024, metavar="BYTES", help="request body limit (413)")
    v.add_argument("--max-pixels", type=int, default=4_000_000, metavar="N", help="pixels per image limit (413)")
    v.add_argument("--timeout", type=float, default=10.0, metavar="S", help="request timeout in seconds (504)")
    v.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    v.add_argument("--access-log", action="store_true", help="log every request (slower)")
    v.add_argument("--keep-unsure", default=None, metavar="DIR",
                   help="save every image read under --below to DIR (content-hashed names, its reading in "
                        "DIR/kept.csv) for `captcha-crnn label DIR`; this stores images that clients send")
    v.add_argument("--below", type=float, default=None, metavar="C",
                   help="the confidence under which a reading is unsure (default: each model's own threshold "
                        "for 99%% precision on its held-out labels, as `info` and `eval` give it)")
    v.add_argument("--keep-max", default="10000", metavar="N|SIZE",
                   help="cap of --keep-unsure's DIR: images (5000) or bytes (200MB); never exceeded (default 10000)")
    v.add_argument("--watch", type=float, default=2.0, metavar="S",
                   help="check the model files every S seconds and swap a changed one in without a restart "
                        "(0: never; POST /v1/models/NAME/reload does it on request)")
    v.set_defaults(func=cmd_serve)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a command; user errors become one line on stderr and exit status 2."""
    parser = build_parser(full=False)
    a = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = a.func
    try:
        return func(a)
    except CaptchaError as e:
        print(f"captcha-crnn: error: {' '.join(str(e).split())}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("captcha-crnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
