"""Load test of `captcha-crnn serve` on loopback: requests/s, p50/p99 latency and errors per level.

    python benchmarks/serve_load.py [--model captcha_v2] [--levels 1 8 32 128] [--duration 10]
        [--soak SECONDS] [--data ../shared/datasets/captcha_v2] [--out bench_out/serve_load.json]
        [--server-arg=--workers=2 ...]

Starts the server as a subprocess (its own process), then drives it from this process with
keep-alive aiohttp clients (the bench extra): for each level, N clients each send one captcha PNG as the raw
body of POST /v1/read and wait for the answer, back to back, for a fixed time (after a short
warm-up that is not counted). `--soak S` then runs 32 clients for S seconds while sampling the
server's resident memory (RSS) every second, and reports its growth. Mean batch sizes come from
the server's /metrics. Writes JSON (default bench_out/serve_load.json; benchmarks/harness.py's layout, a row
per level).

`--loop` checks the service loop instead, at 32 clients, each phase on a fresh server, in one run: steady
(the baseline), a model swap under load (the served file replaced mid-run: failed requests, p99 of the 10 s around
it against the rest), `--keep-unsure` with 10% of readings unsure against the same run without it, and a flood of
10,000 unsure images into a capped folder. Every request carries distinct bytes (a PNG text chunk), so the kept
folder sees new images. `--pythonpath DIR` serves another checkout's code (a before/after in one session).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from train_scaling import tree_rss

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "captcha_v2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_images(data: Path, n: int = 64) -> list[bytes]:
    files = sorted(p for p in data.glob("*.png"))[:n] if data.is_dir() else []
    if files:
        return [p.read_bytes() for p in files]
    import io

    from captcha.image import ImageCaptcha  # no data set here: synthesize captchas like captcha_v2

    gen = ImageCaptcha(width=200, height=50)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        gen.generate_image(f"{i:05d}").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def variant(png: bytes, k: int) -> bytes:
    """The same PNG with a text chunk holding k after its header: other bytes, the same pixels."""
    data = b"n\0" + str(k).encode()
    chunk = len(data).to_bytes(4, "big") + b"tEXt" + data + zlib.crc32(b"tEXt" + data).to_bytes(4, "big")
    return png[:33] + chunk + png[33:]


def rss_mb(pid: int) -> float:
    """Resident memory of the server and its children (uvicorn workers), in MiB."""
    return tree_rss(pid) / 2**20


def batch_stats(base: str, headers: dict[str, str]) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram, over all models."""
    text = httpx.get(f"{base}/metrics", headers=headers, timeout=10).text
    s = sum(float(m) for m in re.findall(r"^captcha_crnn_batch_size_sum\{[^}]*\} (\S+)", text, re.M))
    c = sum(float(m) for m in re.findall(r"^captcha_crnn_batch_size_count\{[^}]*\} (\S+)", text, re.M))
    return s, c


async def run_level(url: str, images: list[bytes], clients: int, duration: float, warmup: float,
                    headers: dict[str, str], on_tick=None, trace: list | None = None) -> dict:
    """`clients` back-to-back clients for warmup + duration seconds; figures over `duration`. aiohttp (the bench
    extra): its client costs far less CPU per request than httpx's, which matters when client and server share
    two cores."""
    import aiohttp

    lat: list[float] = []
    errors = 0
    error_kinds: dict[str, int] = {}
    h = {"content-type": "image/png", **headers}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients, force_close=False),
                                    timeout=aiohttp.ClientTimeout(total=30))

    async def post(body: bytes) -> tuple[bool, str]:
        try:
            async with session.post(url, data=body, headers=h) as r:
                await r.read()
                return r.status == 200, str(r.status)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            return False, type(e).__name__

    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + duration

    async def worker(k: int) -> None:
        nonlocal errors
        i = k
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            ok, kind = await post(images[i % len(images)])
            i += clients
            t1 = time.perf_counter()
            if trace is not None:
                trace.append((t0 - t_start, t1 - t0, ok))
            if t0 >= t_measure and t1 <= t_end:
                if ok:
                    lat.append(t1 - t0)
                else:
                    errors += 1
                    error_kinds[kind] = error_kinds.get(kind, 0) + 1

    async def ticker() -> None:
        while time.perf_counter() < t_end:
            await asyncio.sleep(1.0)
            on_tick()

    try:
        tasks = [asyncio.create_task(worker(k)) for k in range(clients)]
        if on_tick is not None:
            tasks.append(asyncio.create_task(ticker()))
        await asyncio.gather(*tasks)
    finally:
        await session.close()
    lat.sort()
    n = len(lat)

    def pct(q: float) -> float | None:
        return round(lat[min(n - 1, int(q * n))] * 1e3, 2) if n else None

    return {"clients": clients, "seconds": duration, "requests": n, "requests_per_s": round(n / duration, 1),
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": round(lat[-1] * 1e3, 2) if n else None,
            "mean_ms": round(statistics.fmean(lat) * 1e3, 2) if n else None,
            "errors": errors, "error_kinds": error_kinds, "client": "aiohttp"}


def start_server(model: str, port: int, extra: list[str], log_path: Path, api_key: str | None,
                 pythonpath: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "captcha_crnn", "serve", model, "--port", str(port), "--log-level", "warning", *extra]
    env = dict(os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {}))
    if api_key:
        env["CAPTCHA_CRNN_API_KEY"] = api_key
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_ready(base: str, proc: subprocess.Popen, log_path: Path, timeout: float = 180.0) -> None:
    t_end = time.time() + timeout
    while time.time() < t_end:
        if proc.poll() is not None:
            sys.exit(f"server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    sys.exit(f"server not ready after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def server(model: str, extra: list[str], api_key: str, pythonpath: str | None = None) -> Iterator[tuple[str, Any]]:
    """A `captcha-crnn serve` subprocess on a free port, ready: (base URL, process); stopped on exit."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.mkstemp(prefix="serve_load_", suffix=".log")[1])
    proc = start_server(model, port, extra, log_path, api_key, pythonpath)
    try:
        wait_ready(base, proc, log_path)
        yield base, proc
    finally:
        stop_server(proc)


def loop_checks(a: argparse.Namespace, images: list[bytes], api_key: str) -> list[dict]:
    """The service loop at 32 clients (module doc): steady, keep-unsure at 10% unsure, swap, flood."""
    from captcha_crnn.model.modelfile import load_bundle, save_bundle
    from captcha_crnn.model.zoo import resolve_model

    headers = {"authorization": f"Bearer {api_key}"}
    bodies = [variant(images[i % len(images)], i) for i in range(10_000)]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        model, other = Path(tmp) / "model.safetensors", Path(tmp) / "other.safetensors"
        b = load_bundle(resolve_model(a.model))
        save_bundle(b, model)
        b.info = {**b.info, "note": "the same weights, another file"}
        save_bundle(b, other)

        def phase(name: str, extra: list[str], seconds: float, swap_at: float | None = None) -> dict:
            with server(str(model), extra, api_key, a.pythonpath) as (base, _):
                trace: list = []
                timer = threading.Timer(swap_at, lambda: os.replace(other, model)) if swap_at else None
                if timer:
                    timer.start()
                r = asyncio.run(run_level(f"{base}/v1/read", bodies, 32, seconds, a.warmup, headers, trace=trace))
                models = httpx.get(f"{base}/v1/models", headers=headers).json()["models"][0]
            r.update(phase=name, sha256=models["sha256"][:12], recent=models["recent"])
            if swap_at:
                half = min(5.0, a.duration / 2)  # the 10 s around the swap
                near = sorted(lat for t, lat, _ in trace if abs(t - swap_at) <= half)
                rest = sorted(lat for t, lat, _ in trace if t >= a.warmup and abs(t - swap_at) > half)
                p99 = [round(x[int(0.99 * len(x))] * 1e3, 2) for x in (near, rest)]
                r.update(failed=sum(not ok for *_, ok in trace), swap_p99_ms=p99[0], rest_p99_ms=p99[1],
                         p99_ratio=round(p99[0] / p99[1], 2))
            print(f"{name}: {r['requests_per_s']} req/s, p99 {r['p99_ms']} ms, {r['errors']} errors", flush=True)
            rows.append(r)
            return r

        with server(str(model), [], api_key, a.pythonpath) as (base, _):  # the confidences: 10% under `below`
            confs = sorted(httpx.post(f"{base}/v1/read", content=im, headers={"content-type": "image/png", **headers}
                                      ).json()["confidence"] for im in images)
        below = (confs[len(confs) // 10] + confs[len(confs) // 10 - 1]) / 2
        steady = phase("steady", [], a.duration)
        kept = phase("keep_unsure", ["--keep-unsure", f"{tmp}/kept", "--below", f"{below:.6f}"], a.duration)
        kept.update(below=below, unsure_share=kept["recent"]["unsure_share"],
                    throughput_ratio=round(kept["requests_per_s"] / steady["requests_per_s"], 3))
        phase("swap", [], 3 * a.duration, swap_at=a.warmup + 1.5 * a.duration)
        flood = phase("flood", ["--keep-unsure", f"{tmp}/flood", "--below", "1", "--keep-max", "1000"],
                      len(bodies) / steady["requests_per_s"])
        files = [p for p in Path(f"{tmp}/flood").iterdir() if p.suffix == ".png"]
        flood.update(kept_images=len(files), cap_images=1000)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="captcha_v2", help="model file, run folder or shipped name (default captcha_v2)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 128], help="concurrent clients per level")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    ap.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="then 32 clients this long, with RSS")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of PNG captchas to send")
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "serve_load.json")
    ap.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                    help="extra `captcha-crnn serve` argument, e.g. --server-arg=--workers=2 (repeatable)")
    ap.add_argument("--loop", action="store_true", help="the service loop's checks instead of the levels")
    ap.add_argument("--pythonpath", default=None, metavar="DIR", help="serve the code in DIR (another checkout's src)")
    a = ap.parse_args()

    images = load_images(a.data)
    gc.collect()
    gc.freeze()  # the client's own full collections would otherwise add pauses to the latencies it measures
    api_key = "bench-key"
    headers = {"authorization": f"Bearer {api_key}"}
    if a.loop:
        from harness import provenance, save_runs

        rows = loop_checks(a, images, api_key)
        save_runs(a.out, [{**r, **provenance()} for r in rows], model=a.model, pythonpath=a.pythonpath)
        return print(f"wrote {a.out}")
    t0 = time.time()
    with server(a.model, a.server_arg, api_key, a.pythonpath) as (base, proc):
        print(f"server pid {proc.pid} ready in {time.time() - t0:.1f} s; model {a.model}; "
              f"{len(images)} images of {statistics.fmean(len(b) for b in images) / 1024:.1f} KB; "
              f"{os.cpu_count()} cores", flush=True)
        url = f"{base}/v1/read"
        probe = httpx.post(url, content=images[0], headers={"content-type": "image/png", **headers}, timeout=30)
        probe.raise_for_status()
        levels = []
        print(f"{'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>6} {'batch':>6}")
        for n in a.levels:
            s0, c0 = batch_stats(base, headers)
            r = asyncio.run(run_level(url, images, n, a.duration, a.warmup, headers))
            s1, c1 = batch_stats(base, headers)
            r["mean_batch"] = round((s1 - s0) / (c1 - c0), 2) if c1 > c0 else None
            r["rss_mb"] = round(rss_mb(proc.pid), 1)
            levels.append(r)
            print(f"{n:>7} {r['requests_per_s']:>8} {r['p50_ms']!s:>8} {r['p99_ms']!s:>8} {r['max_ms']!s:>8} "
                  f"{r['errors']:>6} {r['mean_batch']!s:>6}", flush=True)
        soak = None
        if a.soak > 0:
            samples: list[tuple[float, float]] = []
            ts = time.perf_counter()
            samples.append((0.0, rss_mb(proc.pid)))
            r = asyncio.run(run_level(url, images, 32, a.soak, 0.0, headers,
                                      on_tick=lambda: samples.append((time.perf_counter() - ts, rss_mb(proc.pid)))))
            samples.append((time.perf_counter() - ts, rss_mb(proc.pid)))
            rss = [m for _, m in samples]
            half = [(t, m) for t, m in samples if t >= a.soak / 2]
            slope = None
            if len(half) >= 3:
                mt, mm = statistics.fmean(t for t, _ in half), statistics.fmean(m for _, m in half)
                var = sum((t - mt) ** 2 for t, _ in half)
                slope = round(sum((t - mt) * (m - mm) for t, m in half) / var * 60, 3) if var else None
            soak = {**r, "rss_start_mb": round(rss[0], 1), "rss_end_mb": round(rss[-1], 1),
                    "rss_max_mb": round(max(rss), 1), "rss_growth_mb": round(rss[-1] - rss[0], 1),
                    "rss_growth_pct": round(100 * (rss[-1] - rss[0]) / rss[0], 2) if rss[0] else None,
                    "rss_slope_second_half_mb_per_min": slope,
                    "rss_samples": [(round(t, 1), round(m, 1)) for t, m in samples]}
            print(f"soak {a.soak:.0f} s at 32 clients: {r['requests_per_s']} req/s, p50 {r['p50_ms']} ms, "
                  f"p99 {r['p99_ms']} ms, {r['errors']} errors; RSS {soak['rss_start_mb']} -> {soak['rss_end_mb']} MB "
                  f"(max {soak['rss_max_mb']}, growth {soak['rss_growth_mb']} MB, "
                  f"second-half slope {slope} MB/min)", flush=True)
    from harness import provenance, save_runs  # only now: they import torch, which the client measured without

    save_runs(a.out, [{**r, **provenance()} for r in levels], model=a.model, server_args=a.server_arg,
              images=len(images), duration_s=a.duration, soak=soak)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
