"""Reading speed, accuracy, memory and size: torch, ONNX Runtime fp32 and int8, and ddddocr.

    python benchmarks/inference.py [--model captcha_v2 | PATH] [--data ../shared/datasets/captcha_v2]
        [--repeats 5] [--threads N] [--batch-size 256] [--latency-n 200] [--json bench_out/inference.json]

Everything is timed from PNG bytes in memory to text out (decode, preprocess, network, CTC):
- single-image latency: ``predict(png_bytes)`` one image at a time; p50 and p99 over --latency-n calls;
- batch throughput: ``predict(list_of_png_bytes, batch_size=256)`` over the whole set in lists of
  --batch-size images; images per second;
- model load time: ``Recognizer.load(file)`` (the .onnx file for the ONNX engines: export happens
  once, before, and its time is reported separately) or ``DdddOcr(...)``;
- peak memory: the peak RSS of a fresh process that loads the engine and runs all of the above
  (each engine runs in its own subprocess, so the figures do not mix; the ONNX engines never
  import torch);
- model size: the file read at load (.safetensors, .onnx, ddddocr's common_old.onnx).
Timings are repeated --repeats times; the JSON keeps every repeat and the tables show medians.
Threads: --threads (default: every core) for torch, ONNX Runtime intra-op and image decoding;
ddddocr runs with its own defaults (ONNX Runtime's default: every core).

Accuracy (exact string match, label = file stem): when the model's metadata says it was trained
on this same folder, our engines are scored on the held-out split that training made (the seed and
fractions its metadata records), reported as ``accuracy_set``; otherwise on every image. The shipped
models are trained on every image, so for them ``--accuracy-model`` names a model of the same recipe
trained on a seeded split (``benchmarks/train_captcha_v2.py --keep DIR``: DIR/captcha_v2-0/model.safetensors);
it reads the held-out images with the same engine, while speed, memory and size are the shipped
model's. ddddocr (not trained on this set, restricted to the set's characters with ``set_ranges``)
is scored on the same images and on the whole set.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DDDDOCR_RANGES = "2345678bcdefgmnpwxy"
ENGINES = ("torch", "onnx", "onnx-int8", "ddddocr")


# ------------------------------------------------------------------ worker (one engine per process)


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def worker(spec: dict) -> dict:
    """Load one engine, time it, return figures (run in a fresh process)."""
    engine, threads, repeats = spec["engine"], spec["threads"], spec["repeats"]
    files = [Path(f) for f in spec["files"]]
    data = [f.read_bytes() for f in files]
    labels = [f.stem for f in files]
    scored = set(spec["scored"])  # indices of the accuracy set

    if engine == "ddddocr":
        import ddddocr

        def load():
            o = ddddocr.DdddOcr(show_ad=False)
            o.set_ranges(DDDDOCR_RANGES)
            return o

        def read_one(o, b):
            return o.classification(b)

        def read_many(o, bs):
            return [o.classification(b) for b in bs]

        model_file = Path(ddddocr.__file__).parent / "common_old.onnx"
    else:
        from captcha_crnn import Recognizer

        kind = "torch" if engine == "torch" else "onnx"
        model_file = Path(spec["model_file"])

        def load(path=model_file):
            return Recognizer.load(path, engine=kind, threads=threads)

        def read_one(r, b):
            return r.predict(b).text

        def read_many(r, bs):
            return [p.text for p in r.predict(bs, batch_size=spec["batch_size"])]

    loads = []
    for _ in range(repeats):
        t = time.perf_counter()
        reader = load()
        loads.append(time.perf_counter() - t)
    for b in data[:20]:  # warm-up
        read_one(reader, b)

    lat_p50, lat_p99, lat_all = [], [], []
    n = spec["latency_n"]
    for _ in range(repeats):
        ts = []
        for i in range(n):
            b = data[i % len(data)]
            t = time.perf_counter()
            read_one(reader, b)
            ts.append((time.perf_counter() - t) * 1000)
        lat_p50.append(percentile(ts, 50))
        lat_p99.append(percentile(ts, 99))
        lat_all.append(statistics.mean(ts))

    bs = spec["batch_size"]
    thr, texts = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        out = []
        for i in range(0, len(data), bs):
            out.extend(read_many(reader, data[i : i + bs]))
        thr.append(len(data) / (time.perf_counter() - t))
        texts = out
    if spec.get("accuracy_model_file"):  # same architecture and recipe, trained without the scored images
        texts = read_many(load(Path(spec["accuracy_model_file"])), data)
    right = [t == lab for t, lab in zip(texts, labels)]
    acc_set = [right[i] for i in sorted(scored)]
    return {
        "engine": engine,
        "model_file": str(model_file),
        "model_size_mb": model_file.stat().st_size / 1e6,
        "load_s": statistics.median(loads),
        "load_s_repeats": loads,
        "latency_ms_p50": statistics.median(lat_p50),
        "latency_ms_p99": statistics.median(lat_p99),
        "latency_ms_mean": statistics.median(lat_all),
        "latency_ms_p50_repeats": lat_p50,
        "latency_ms_p99_repeats": lat_p99,
        "throughput_ips": statistics.median(thr),
        "throughput_ips_repeats": thr,
        "accuracy": sum(acc_set) / max(1, len(acc_set)),
        "accuracy_n": len(acc_set),
        "accuracy_all_images": sum(right) / len(right),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "imported_torch": "torch" in sys.modules,
    }


# ------------------------------------------------------------------ driver


def model_provenance(path: Path) -> dict:
    """What shapes a model file's figures: its sha256, input height and channels, backbone."""
    from captcha_crnn.model.format import parse_metadata, read_metadata

    spec = parse_metadata(read_metadata(path), str(path))
    return {"model_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "model_height": spec.preprocess.height,
            "model_channels": spec.preprocess.channels, "model_backbone": spec.arch.backbone}


def machine() -> dict:
    """harness.machine() with the cores usable and the reading libraries' versions (imported here, in the driver:
    the workers that time ONNX Runtime never import torch; benchmarks/ is on the path, as this script's folder)."""
    from harness import machine as base_machine

    info = {**base_machine(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    for mod in ("torch", "onnxruntime", "onnx", "numpy", "PIL", "ddddocr"):
        try:
            info[mod] = getattr(__import__(mod), "__version__", "?")
        except ImportError:
            info[mod] = None
    return info


def accuracy_split(model_path: Path, data: Path, files: list[Path]) -> tuple[list[int], str]:
    """Indices of `files` to score our engines on (the test split the model's training made, from the split
    its metadata records, else its validation split; else every file), and a description of that set."""
    from captcha_crnn.data.labels import read_samples
    from captcha_crnn.data.split import split_items
    from captcha_crnn.model.format import read_metadata

    tr = read_metadata(model_path).get("training", {})
    split = re.search(r"seed (\d+), val (\d+)%, test (\d+)%", str(tr.get("split")))
    if not split or not tr.get("data") or Path(tr["data"]).resolve() != data.resolve():
        return list(range(len(files))), f"all {len(files)} images (the model was not trained on this folder)"
    seed, val, test = int(split[1]), int(split[2]) / 100, int(split[3]) / 100
    _, va, te = split_items(sorted(read_samples(str(data)), key=lambda s: s.path), seed, val, test)
    held = {Path(s.path).resolve() for s in te or va}
    idx = [i for i, f in enumerate(files) if f.resolve() in held]
    return idx, f"held-out test split, {len(idx)} images (seed {seed})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="captcha_v2", help="model file, run folder or shipped model name")
    ap.add_argument("--data", default="../shared/datasets/captcha_v2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--latency-n", type=int, default=200, help="single-image calls per repeat")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from {','.join(ENGINES)}")
    ap.add_argument("--accuracy-model", default=None, metavar="PATH",
                    help="score accuracy with this model (the same recipe trained on a seeded split of --data, e.g. "
                         "benchmarks/train_captcha_v2.py --keep DIR: DIR/captcha_v2-0/model.safetensors) when --model "
                         "was trained on every image of --data, as the shipped models are")
    ap.add_argument("--json", default="bench_out/inference.json")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(Path(a.worker).read_text()))))
        return 0

    from captcha_crnn import CaptchaError
    from captcha_crnn.infer.export import export_onnx
    from captcha_crnn.model.zoo import resolve_model

    try:
        model_path = resolve_model(a.model)
    except CaptchaError as e:
        sys.exit(f"inference benchmark: {e}; pass --model PATH (a .safetensors file or run folder)")
    data = Path(a.data)
    files = sorted(p for p in data.iterdir() if p.suffix.lower() == ".png")
    if not files:
        sys.exit(f"inference benchmark: no PNG images in {data}")
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    for e in engines:
        if e not in ENGINES:
            sys.exit(f"inference benchmark: unknown engine {e!r}")
    acc_path = resolve_model(a.accuracy_model) if a.accuracy_model else None
    scored, scored_desc = accuracy_split(acc_path or model_path, data, files)
    if not scored:
        sys.exit(f"inference benchmark: {model_path} left no image of {data} out of training; "
                 "pass --accuracy-model (see --help)")
    if acc_path:
        scored_desc += f", read by {acc_path} (same recipe; speed from {model_path.name})"
    print(f"model {model_path}; data {data} ({len(files)} images); accuracy on {scored_desc}", file=sys.stderr)

    results, exports = [], {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for e in engines:
            model_file, acc_file = model_path, acc_path
            if e.startswith("onnx"):
                model_file = Path(tmp) / f"{e}.onnx"
                t = time.perf_counter()
                export_onnx(model_path, model_file, int8=e == "onnx-int8")
                exports[e] = time.perf_counter() - t
                if acc_path:
                    acc_file = Path(tmp) / f"{e}-accuracy.onnx"
                    export_onnx(acc_path, acc_file, int8=e == "onnx-int8")
            spec = {"engine": e, "threads": a.threads, "repeats": a.repeats, "files": [str(f) for f in files],
                    "scored": scored, "model_file": str(model_file), "batch_size": a.batch_size,
                    "latency_n": a.latency_n,
                    "accuracy_model_file": str(acc_file) if acc_file and e != "ddddocr" else None}
            spec_file = Path(tmp) / f"{e}.json"
            spec_file.write_text(json.dumps(spec))
            print(f"running {e} ...", file=sys.stderr)
            env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
            r = subprocess.run([sys.executable, __file__, "--worker", str(spec_file)], capture_output=True,
                               text=True, env=env)
            if r.returncode != 0:
                print(f"{e} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
                results.append({"engine": e, "error": r.stderr.strip().splitlines()[-1:]})
                continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            if e in exports:
                res["export_s"] = exports[e]
            results.append(res)

    report = {"model": str(model_path), **model_provenance(model_path), "precision": "fp32", "data": str(data),
              "images": len(files), "accuracy_set": scored_desc, "threads": a.threads, "batch_size": a.batch_size,
              "repeats": a.repeats, "latency_n": a.latency_n, "machine": machine(), "load_average_before": load_before,
              "load_average_after": os.getloadavg()}
    print(table({**report, "rows": results}))
    from harness import provenance, save_runs

    save_runs(a.json, [{**r, **provenance()} for r in results], **report)
    print(f"wrote {a.json}", file=sys.stderr)
    return 0


def table(rep: dict) -> str:
    buf = io.StringIO()
    m = rep["machine"]
    buf.write(f"machine: {m['cpu']}, {m['cores']} cores; threads {rep['threads']}; "
              f"load average {rep['load_average_before'][0]:.1f} before, {rep['load_average_after'][0]:.1f} after\n")
    buf.write(f"model: {rep['model']}; accuracy on {rep['accuracy_set']}\n")
    buf.write(f"medians of {rep['repeats']} repeats; latency over {rep['latency_n']} single images; "
              f"throughput in lists of {rep['batch_size']}\n\n")
    head = f"{'engine':<10} {'accuracy':>9} {'p50 ms':>8} {'p99 ms':>8} {'img/s':>8} {'RSS MB':>8} " \
           f"{'size MB':>8} {'load s':>7}"
    buf.write(head + "\n" + "-" * len(head) + "\n")
    for r in rep["rows"]:
        if "error" in r:
            buf.write(f"{r['engine']:<10} failed: {r['error']}\n")
            continue
        buf.write(f"{r['engine']:<10} {r['accuracy']:>9.3f} {r['latency_ms_p50']:>8.2f} {r['latency_ms_p99']:>8.2f} "
                  f"{r['throughput_ips']:>8.0f} {r['peak_rss_mb']:>8.0f} {r['model_size_mb']:>8.2f} "
                  f"{r['load_s']:>7.3f}\n")
    dd = next((r for r in rep["rows"] if r["engine"] == "ddddocr" and "error" not in r), None)
    if dd:
        buf.write(f"\nddddocr on all {rep['images']} images: accuracy {dd['accuracy_all_images']:.3f}\n")
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
