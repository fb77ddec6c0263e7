"""The HTTP service: every endpoint and error, micro-batching, an OpenAPI fuzz, the CLI and a real browser."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from conftest import render_clean  # noqa: E402

with warnings.catch_warnings():  # starlette's notice about httpx2; httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402
from browser import CHROMIUM, CHROMIUM_ARGS, free_port, run_server, sync_playwright  # noqa: E402
from PIL import Image  # noqa: E402

from captcha_crnn.infer import Recognizer  # noqa: E402
from captcha_crnn.service import ServiceConfig, create_app  # noqa: E402
from captcha_crnn.service.models import ModelEntry, model_name  # noqa: E402

LABELS = ["123", "4567", "890", "2468", "1357", "0909"]


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def png_header(w: int, h: int) -> bytes:
    """A PNG claiming w x h pixels with almost no pixel data (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def rec(trained) -> Recognizer:
    return Recognizer.load(trained.model_path)


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [png(render_clean(t, seed=500 + i)) for i, t in enumerate(LABELS)]


@pytest.fixture(scope="module")
def app(rec):
    return create_app([ModelEntry("digits", rec, "a"), ModelEntry("digits2", rec, "b")], ServiceConfig())


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def make_client(rec, **cfg) -> TestClient:
    return TestClient(create_app([ModelEntry("digits", rec)], ServiceConfig(warmup=False, **cfg)))


def test_healthz_models_openapi_page(client, rec):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "models": ["digits", "digits2"]}
    m = client.get("/v1/models").json()
    assert m["default"] == "digits"
    assert [x["name"] for x in m["models"]] == ["digits", "digits2"]
    pre = rec.preprocess
    assert m["models"][0]["alphabet"] == rec.alphabet.chars
    assert m["models"][0]["input"] == {"height": pre.height, "width": pre.width, "channels": pre.channels}
    spec = client.get("/openapi.json").json()
    assert {"/v1/read", "/v1/models", "/healthz", "/metrics"} <= set(spec["paths"])
    assert {"image/png", "multipart/form-data", "application/json"} <= set(
        spec["paths"]["/v1/read"]["post"]["requestBody"]["content"])
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "v1/read" in html and "v1/models" in html and "paste" in html
    assert "http://" not in html and "https://" not in html and "<script src" not in html  # self-contained


def test_read_raw_matches_recognizer(client, rec, images):
    want = rec.predict(images)
    for data, w in zip(images, want):
        r = client.post("/v1/read", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        j = r.json()
        assert j["model"] == "digits" and j["ms"] > 0
        assert j["text"] == w.text == j["results"][0]["text"]
        assert j["confidence"] == pytest.approx(w.confidence, abs=1e-5)
        assert j["char_confidences"] == pytest.approx(w.char_confidences, abs=1e-5)
        assert len(j["char_confidences"]) == len(j["text"])
        assert j["results"][0]["ms"] > 0
    # no content type at all still reads the body as an image
    r = client.post("/v1/read", content=images[0], headers={"content-type": ""})
    assert r.status_code == 200 and r.json()["text"] == want[0].text


def test_read_multipart_many_files(client, rec, images):
    want = [p.text for p in rec.predict(images)]
    files = [("file", (f"{i}.png", d, "image/png")) for i, d in enumerate(images)]
    r = client.post("/v1/read", files=files, data={"model": "digits2"})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["model"] == "digits2"
    assert [x["text"] for x in j["results"]] == want
    assert [x["filename"] for x in j["results"]] == [f"{i}.png" for i in range(len(images))]
    assert "text" not in j  # several images: only the results list
    one = client.post("/v1/read", files={"image": ("a.png", images[1], "image/png")})
    assert one.status_code == 200 and one.json()["text"] == want[1]


def test_read_json_base64(client, rec, images):
    want = [p.text for p in rec.predict(images)]
    b64 = [base64.b64encode(d).decode() for d in images]
    r = client.post("/v1/read", json={"image": b64[0]})
    assert r.status_code == 200 and r.json()["text"] == want[0]
    r = client.post("/v1/read", json={"image": "data:image/png;base64," + b64[2]})
    assert r.status_code == 200 and r.json()["text"] == want[2]
    r = client.post("/v1/read", json={"images": b64, "model": "digits2"})
    assert r.status_code == 200
    assert [x["text"] for x in r.json()["results"]] == want and r.json()["model"] == "digits2"
    urlsafe = base64.urlsafe_b64encode(images[3]).decode().rstrip("=")
    assert client.post("/v1/read", json={"image": urlsafe}).json()["text"] == want[3]


def test_read_options_query_json_form(client, rec, images):
    want = [p.text for p in rec.predict(images, beam=4, length=3, charset="0123456789")]
    for i, d in enumerate(images[:3]):
        q = client.post("/v1/read?beam=4&length=3&charset=0123456789", content=d)
        j = client.post("/v1/read", json={"image": base64.b64encode(d).decode(), "beam": 4, "length": 3,
                                          "charset": "0123456789"})
        f = client.post("/v1/read", files={"file": ("x.png", d, "image/png")},
                        data={"beam": "4", "length": "3", "charset": "0123456789"})
        assert q.json()["text"] == j.json()["text"] == f.json()["text"] == want[i]
        assert len(want[i]) == 3
    only = rec.predict(images[0], charset="13579")
    assert client.post("/v1/read?charset=13579", content=images[0]).json()["text"] == only.text


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"content": b"certainly not an image"}, 415, "not an image"),
        ({"content": b""}, 422, "empty body"),
        ({"json": {"image": "!!!notbase64"}}, 422, "base64"),
        ({"json": {"image": 5}}, 422, "base64"),
        ({"json": {"images": []}}, 422, "non-empty"),
        ({"json": {"nothing": 1}}, 422, "exactly one"),
        ({"json": ["a"]}, 422, "object"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "JSON"),
        ({"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 422, "multipart"),
        ({"data": {"model": "digits"}, "files": {}}, 422, "no image"),
        ({"content": b"GIF89a" + b"\x00" * 20}, 415, "not an image"),
    ],
)
def test_bad_input_is_4xx(client, kwargs, status, words):
    if kwargs.get("files") == {}:  # a multipart form with only a text field
        kwargs = {"files": {"note": (None, "hi")}, "data": kwargs["data"]}
    r = client.post("/v1/read", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_corrupt_image_and_bad_options(client, images):
    r = client.post("/v1/read", content=images[0][: len(images[0]) // 2])
    assert r.status_code == 422 and "truncated" in r.json()["detail"]
    r = client.post("/v1/read", files=[("f", ("ok.png", images[0], "image/png")), ("f", ("bad.png", b"zz", "x/y"))])
    assert r.status_code == 415 and "image 2 (bad.png)" in r.json()["detail"]
    assert client.post("/v1/read?model=nope", content=images[0]).status_code == 404
    assert "digits2" in client.post("/v1/read?model=nope", content=images[0]).json()["detail"]  # lists the models
    b64 = base64.b64encode(images[0]).decode()
    assert client.post("/v1/read", json={"image": b64, "model": "x"}).status_code == 404
    assert client.post("/v1/read?charset=abc", content=images[0]).status_code == 422
    assert client.post("/v1/read?beam=0", content=images[0]).status_code == 422
    assert client.post("/v1/read?length=-1", content=images[0]).status_code == 422
    assert client.post("/v1/read?beam=x", content=images[0]).status_code == 422
    assert client.post("/v1/read", json={"image": b64, "beam": "many"}).status_code == 422
    assert client.post("/v1/read", json={"image": b64, "beam": True}).status_code == 422
    assert client.post("/v1/read", json={"image": b64, "length": 10_000}).status_code == 422
    assert client.post("/v1/read", json={"image": b64, "charset": 7}).status_code == 422
    assert client.post("/v1/read", files={"f": ("a.png", images[0])}, data={"beam": "zero"}).status_code == 422
    assert client.get("/v1/read").status_code == 405


def test_limits_413(rec, images):
    with make_client(rec, max_body_bytes=4000, max_pixels=5000, max_images=3) as c:
        big = png(Image.effect_noise((80, 60), 60).convert("L"))  # 4800 pixels, incompressible
        assert len(big) > 4000
        r = c.post("/v1/read", content=big)
        assert r.status_code == 413 and "too large" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit holds while streaming
            for _ in range(10):
                yield b"\0" * 1000

        assert c.post("/v1/read", content=chunks()).status_code == 413
        wide = png(Image.new("L", (200, 30), 255))  # 6000 pixels, a few hundred bytes
        r = c.post("/v1/read", content=wide)
        assert r.status_code == 413 and "pixels" in r.json()["detail"]
        bomb = png_header(100_000, 100_000)  # header only: refused before any decoding
        assert c.post("/v1/read", content=bomb).status_code == 413
        small = [base64.b64encode(images[0]).decode()] * 4
        assert c.post("/v1/read", json={"images": small}).status_code == 413
    with make_client(rec, max_images=3) as c:
        files = [("f", (f"{i}.png", images[0], "image/png")) for i in range(4)]
        r = c.post("/v1/read", files=files)
        assert r.status_code == 413, r.text
        assert c.post("/v1/read", files=files[:3]).status_code == 200


def test_api_key(rec, images):
    with make_client(rec, api_key="s3cret") as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/").status_code == 200
        assert c.get("/openapi.json").status_code == 200
        r = c.post("/v1/read", content=images[0])
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/read", content=images[0], headers={"authorization": "Bearer nope"}).status_code == 401
        assert c.post("/v1/read", content=images[0], headers={"x-api-key": "s3cre"}).status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.post("/v1/read", content=images[0], headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/v1/read", content=images[0], headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"x-api-key": "s3cret"}).status_code == 200


class SlowRecognizer:
    """A recognizer that takes `delay` seconds per batch."""

    def __init__(self, rec: Recognizer, delay: float):
        self.rec, self.delay = rec, delay
        self.alphabet, self.preprocess, self.info = rec.alphabet, rec.preprocess, rec.info

    def read_arrays(self, arrays, **kw):  # what the service's batcher calls
        time.sleep(self.delay)
        return self.rec.read_arrays(arrays, **kw)


def test_timeout_504_and_busy_503(rec, images):
    app = create_app([ModelEntry("slow", SlowRecognizer(rec, 0.5))], ServiceConfig(timeout_s=0.1, max_queue=2))
    with TestClient(app) as c:
        t = time.perf_counter()
        r = c.post("/v1/read", content=images[0])
        assert r.status_code == 504 and "timed out" in r.json()["detail"]
        assert time.perf_counter() - t < 0.45
        r = c.post("/v1/read", json={"images": [base64.b64encode(images[0]).decode()] * 3})
        assert r.status_code == 503 and "busy" in r.json()["detail"]


def test_metrics(rec, images):
    with make_client(rec) as c:
        for d in images[:3]:
            assert c.post("/v1/read", content=d).status_code == 200
        assert c.post("/v1/read", content=b"nope").status_code == 415
        assert c.get("/nowhere").status_code == 404
        r = c.get("/metrics")
        assert len(r.headers["x-request-id"]) == 16
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        t = r.text
        assert 'captcha_crnn_http_requests_total{method="POST",route="/v1/read",status="200"} 3.0' in t
        assert 'captcha_crnn_http_errors_total{route="/v1/read",status="415"} 1.0' in t
        assert 'captcha_crnn_http_errors_total{route="other",status="404"} 1.0' in t
        assert 'captcha_crnn_http_request_duration_seconds_count{route="/v1/read"} 4.0' in t
        assert 'captcha_crnn_batch_size_count{model="digits"}' in t
        assert 'captcha_crnn_images_total{model="digits",outcome="ok"} 3.0' in t


def test_micro_batching_batches_concurrent_requests(rec, images):
    app = create_app([ModelEntry("digits", rec)], ServiceConfig(warmup=False, max_wait_ms=30, max_batch=64))
    want = [p.text for p in rec.predict(images)]

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(*(c.post("/v1/read", content=images[i % len(images)]) for i in range(48)))

    rs = asyncio.run(burst())
    assert all(r.status_code == 200 for r in rs)
    assert [r.json()["text"] for r in rs] == [want[i % len(images)] for i in range(48)]
    reg = app.state.metrics.registry
    batches = reg.get_sample_value("captcha_crnn_batch_size_count", {"model": "digits"})
    total = reg.get_sample_value("captcha_crnn_batch_size_sum", {"model": "digits"})
    singles = reg.get_sample_value("captcha_crnn_batch_size_bucket", {"model": "digits", "le": "1.0"})
    assert total == 48
    assert batches < 48 and singles < batches  # some forward passes carried several requests' images
    for b in app.state.batchers.values():
        b.stop()


def test_batcher_mixed_options_and_errors(rec, images):
    """One batch with two option sets and a bad image: each request gets its own answer."""
    app = create_app([ModelEntry("digits", rec)], ServiceConfig(warmup=False, max_wait_ms=30))
    want = rec.predict(images[0], length=3).text

    async def burst():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await asyncio.gather(c.post("/v1/read", content=images[0]),
                                        c.post("/v1/read?length=3", content=images[0]),
                                        c.post("/v1/read", content=images[0][:300]))

    a, b, bad = asyncio.run(burst())
    assert a.json()["text"] == rec.predict(images[0]).text
    assert b.json()["text"] == want
    assert bad.status_code == 422
    for bt in app.state.batchers.values():
        bt.stop()


def test_lone_request_is_not_held_for_max_wait(rec, images):
    """max_wait only applies while more images are on their way."""
    with make_client(rec, max_wait_ms=3000) as c:
        t = time.perf_counter()
        assert c.post("/v1/read", content=images[0]).status_code == 200
        assert time.perf_counter() - t < 1.5


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_mutated_images_never_500(client, images):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    im = Image.open(io.BytesIO(images[0]))
    bases = [images[0]]
    for fmt in ("JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        bases.append(buf.getvalue())

    @given(st.sampled_from(bases), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
           st.one_of(st.none(), st.integers(1, 4000)))
    @settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(base, flips, cut):
        data = bytearray(base)
        for pos, v in flips:
            data[pos % len(data)] = v
        data = bytes(data[:cut])
        r = client.post("/v1/read", content=data)
        assert r.status_code in (200, 413, 415, 422), (r.status_code, r.text)

    run()


def test_openapi_fuzz_finds_no_500(app):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    try:
        from schemathesis.python.asgi import get_client
    except ImportError:  # older schemathesis: one client per call
        get_client = None
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    strategy = st.one_of(schema.as_strategy(), schema.as_strategy(GenerationMode.NEGATIVE))
    seen: set[int] = set()
    with get_client(app) if get_client else contextlib.nullcontext() as session:

        @given(case=strategy)
        @settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case):
            r = case.call(session=session)
            seen.add(r.status_code)
            assert r.status_code < 500, f"{case.method} {case.path} -> {r.status_code}: {r.text[:300]}"

        run()
    assert any(400 <= s < 500 for s in seen)


def test_model_names_and_empty_zoo(tmp_path, monkeypatch, capsys, trained):
    from captcha_crnn.cli import main
    from captcha_crnn.model import zoo
    from captcha_crnn.service.models import load_models

    assert model_name(str(trained.model_path)) == "model"
    assert model_name(str(trained.out)) == Path(trained.out).name
    assert model_name("v2=" + str(trained.model_path)) == "v2"
    entries = load_models(["a=" + str(trained.model_path), str(trained.out)])
    assert [e.name for e in entries] == ["a", Path(trained.out).name]
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    assert main(["serve"]) == 2
    assert "no model given and no shipped models" in capsys.readouterr().err
    assert main(["serve", str(trained.model_path), str(trained.model_path)]) == 2
    assert "two models named" in capsys.readouterr().err


def test_cli_serve_subprocess(trained, images):
    """`captcha-crnn serve` in its own process: binds 127.0.0.1, answers, stops on SIGINT."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "captcha_crnn", "serve", f"digits={trained.model_path}",
                             "--port", str(port), "--api-key", "k", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.25)
        h = {"authorization": "Bearer k"}
        assert httpx.get(f"{base}/v1/models", headers=h).json()["models"][0]["name"] == "digits"
        r = httpx.post(f"{base}/v1/read", content=images[0], headers=h)
        assert r.status_code == 200 and "text" in r.json()
        assert httpx.post(f"{base}/v1/read", content=images[0]).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, proc.stdout.read().decode()


def test_browser_page(app, rec, images, tmp_path):
    """The web page in headless Chromium: models listed, choose / paste / drop an image, bars drawn."""
    sync_api = sync_playwright()
    want = [p.text for p in rec.predict(images)]
    base, stop = run_server(app)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 880, "height": 620})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                external: list[str] = []
                page.on("request", lambda r: None if r.url.startswith(base) or r.url.startswith(("blob:", "data:"))
                        else external.append(r.url))
                page.goto(base + "/")
                page.wait_for_selector("body[data-ready='1']", timeout=15000)
                options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
                assert options == ["digits", "digits2"]
                page.select_option("#model", "digits2")
                # choose a file
                page.set_input_files("#file", files=[{"name": "a.png", "mimeType": "image/png", "buffer": images[0]}])
                page.wait_for_selector(".card[data-done='1']", timeout=15000)
                assert page.inner_text(".card .text") == (want[0] or "(nothing read)")
                assert page.locator(".card .char").count() == len(want[0])
                assert "digits2" in page.inner_text(".card .meta")
                # paste and drop
                js = """([b64, kind]) => {
                    const bin = atob(b64); const a = new Uint8Array(bin.length);
                    for (let i = 0; i < bin.length; i++) a[i] = bin.charCodeAt(i);
                    const dt = new DataTransfer(); dt.items.add(new File([a], kind + ".png", {type: "image/png"}));
                    if (kind === "paste")
                        document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: dt, bubbles: true}));
                    else
                        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt}));
                }"""
                page.evaluate(js, [base64.b64encode(images[1]).decode(), "paste"])
                page.locator(".card[data-done='1']").nth(1).wait_for(timeout=15000)
                page.evaluate(js, [base64.b64encode(images[2]).decode(), "drop"])
                page.locator(".card[data-done='1']").nth(2).wait_for(timeout=15000)
                texts = page.eval_on_selector_all(".card .text", "es => es.map(e => e.textContent)")
                assert texts == [w or "(nothing read)" for w in (want[2], want[1], want[0])]  # newest first
                # a non-image shows the server's error, not a crash
                page.set_input_files("#file", files=[{"name": "x.png", "mimeType": "image/png", "buffer": b"nope"}])
                page.locator(".card").first.locator(".text", has_text="error 415").wait_for(timeout=15000)
                assert "not an image" in page.locator(".card").first.locator(".meta").inner_text()
                shot = tmp_path / "serve.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 1000
                assert not errors, errors
                assert not external, external
            finally:
                browser.close()
    finally:
        stop()


def test_freeze_heap_moves_startup_objects_out_of_the_collector():
    """serve() freezes the heap after loading: full collections then skip the models and libraries."""
    import gc

    from captcha_crnn.service.server import freeze_heap

    try:
        before = gc.get_freeze_count()
        freeze_heap()
        assert gc.get_freeze_count() > before
        assert gc.get_freeze_count() > 10_000  # imported modules and the loaded model objects
    finally:
        gc.unfreeze()
