"""What each `captcha-crnn` command does once its arguments are parsed: call one function and print."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import CaptchaError


def cmd_train(a: argparse.Namespace) -> int:
    from .training import TrainConfig, train

    fields = TrainConfig.__dataclass_fields__
    asked = {k: v for k, v in vars(a).items() if k in fields and k not in ("data", "unlabelled")}
    cfg = TrainConfig(**asked, progress=not a.quiet, unlabelled=tuple(a.unlabelled))
    r = train(a.data, cfg.validate())
    if a.json and r.rank == 0:  # under torchrun, one summary
        print(json.dumps({"model": str(r.model_path), "best": r.best,
                          "test": r.test.to_dict() if r.test else None, "recipe": r.recipe}))
    return 0


def cmd_pretrain(a: argparse.Namespace) -> int:
    from .training.synthetic_pretrain import PretrainConfig, pretrain

    pretrain(PretrainConfig(out=a.out, count=a.count, max_minutes=a.max_minutes, epochs=a.epochs, height=a.height,
                            seed=a.seed, workers=a.workers, threads=a.threads, resume=a.resume,
                            progress=not a.quiet))
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from .evaluate import evaluate_model, format_report
    from .infer import Recognizer

    rec = Recognizer.load(a.model)
    case = a.case or rec.info.get("training", {}).get("config", {}).get("case", "sensitive")
    rep, ds, preds = evaluate_model(rec, a.data, a.beam, a.length, a.charset, a.label_regex, a.label_sep,
                                    case_insensitive=case == "insensitive", progress=not a.json)
    if a.errors:
        from .viz import errors_gallery

        errors_gallery(ds.images, ds.labels, preds, a.errors)
    if a.json:
        print(json.dumps({**rep.to_dict(), "data": a.data, "model": a.model, "skipped": len(ds.skipped)}))
    else:
        print(format_report(rep, a.data))
        if ds.skipped:
            print(f"skipped {len(ds.skipped)} unreadable images (not scored)")
        if a.errors:
            print(f"errors gallery: {a.errors}")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from .data.labels import list_images
    from .infer import Recognizer

    rec = Recognizer.load(a.model, engine=a.engine, threads=a.threads)
    paths = list_images(a.images)
    if not paths:
        raise CaptchaError(f"{' '.join(a.images)}: no images found")
    got = rec.predict(paths, beam=a.beam, length=a.length, charset=a.charset, batch_size=a.batch_size,
                      errors="return")
    ok, preds, failed = [], [], 0
    for p, pr in zip(paths, got):
        if isinstance(pr, CaptchaError):
            print(f"error: {pr}", file=sys.stderr)
            failed += 1
        else:
            ok.append(p)
            preds.append(pr)
    floor = a.min_confidence
    rejected = [floor is not None and pr.confidence < floor for pr in preds]
    if a.json:
        rows = [{"path": str(p), **pr.to_dict(), "source": str(p)} for p, pr in zip(ok, preds)]
        for row, r in zip(rows, rejected):
            row.update({"rejected": r} if floor is not None else {})
        print(json.dumps(rows))
    else:
        for p, pr, r in zip(ok, preds, rejected):
            print(f"{p}\t{'<rejected>' if r else pr.text}\t{pr.confidence:.4f}")
    if any(rejected):
        print(f"rejected {sum(rejected)} of {len(preds)} readings under confidence {floor:g}", file=sys.stderr)
    return 1 if failed else (3 if any(rejected) else 0)


def cmd_export(a: argparse.Namespace) -> int:
    from .infer.export import export_onnx

    out = export_onnx(a.model, a.onnx, int8=a.int8)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB{', int8' if a.int8 else ''})")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .model.modelfile import load_bundle
    from .model.summary import format_summary
    from .model.zoo import resolve_model

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
        if m.get("selective"):
            from .evaluate import format_selective

            print(f"  {split} {format_selective(m['selective'])}")
    from .evaluate import model_threshold

    threshold, source = model_threshold(b.info)
    print(f"unsure under confidence {threshold:.4g} ({source}; `serve --keep-unsure` keeps those under it)")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from .model.zoo import format_cards, zoo_cards

    cards = zoo_cards()
    if a.json:
        print(json.dumps(cards))
    elif not cards:
        print("no shipped models in this installation (build them with `make models`)")
    else:
        print(format_cards(cards))
    return 0


def cmd_synth(a: argparse.Namespace) -> int:
    from .data.synth import synthesize

    lo, _, hi = a.length.partition("-")
    w, _, h = a.size.partition("x")
    try:
        lengths, size = (int(lo), int(hi or lo)), (int(w), int(h))
    except ValueError:
        raise CaptchaError(f"bad --length {a.length!r} or --size {a.size!r} (expected 4-6 and 200x60)") from None
    synthesize(a.out, a.n, a.charset, lengths, size, a.seed, a.fonts, a.workers, style=a.style)
    print(f"wrote {a.n} captchas to {a.out}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(a.out, a.n, a.max_minutes, a.seed)
    return 0


def cmd_download(a: argparse.Namespace) -> int:
    from .data.download import download_dataset

    chk = download_dataset(a.dataset, a.dir, url=a.url, zip_file=a.zip, progress=not a.quiet)
    for w in chk.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(json.dumps(chk.to_dict()) if a.json else chk.summary())
    return 0


def cmd_label(a: argparse.Namespace) -> int:
    from .service.labelling import serve_labels

    serve_labels(a.dir, a.model, a.host, a.port, a.api_key, a.charset, a.publish, a.with_labels)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from .service import ServiceConfig, serve
    from .service.keep import parse_cap

    try:
        images, size = parse_cap(a.keep_max)
    except ValueError as e:
        raise CaptchaError(str(e)) from None
    if a.below is not None and not 0 <= a.below <= 1:
        raise CaptchaError(f"--below {a.below}: a confidence between 0 and 1")
    cfg = ServiceConfig(max_body_bytes=a.max_body, max_pixels=a.max_pixels, max_batch=a.max_batch,
                        max_wait_ms=a.max_wait_ms, timeout_s=a.timeout, watch_s=a.watch, keep_unsure=a.keep_unsure,
                        keep_below=a.below, keep_max_images=images, keep_max_bytes=size)
    serve(a.models, a.host, a.port, a.workers, a.api_key, cfg, threads=a.threads, engine=a.engine,
          log_level=a.log_level, access_log=a.access_log)
    return 0
