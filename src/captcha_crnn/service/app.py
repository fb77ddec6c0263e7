"""The HTTP service (FastAPI): routes, request parsing, limits, errors and the web page.

``create_app(models, config)`` builds the app from loaded models (see ``models.load_models``);
``captcha-crnn serve`` runs it under uvicorn. Routes:

- ``POST /v1/read``: the image as the raw body, as multipart files (one or many) or as JSON
  base64 (``{"image": B64}`` / ``{"images": [B64, ...]}``); options ``model``, ``beam``,
  ``length``, ``charset`` in the query, the JSON object or multipart fields.
- ``GET /v1/models``, ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /openapi.json``,
  ``GET /`` (the web page).

Status codes: 401 missing/wrong API key, 404 unknown model, 413 body/pixels/image count over
the limits, 415 not an image, 422 corrupt image or bad options, 503 queue full, 504 timeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import os
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from .. import __version__
from .batcher import Batcher, ServiceError
from .metrics import Metrics
from .models import ModelEntry

MAX_BEAM = 64
MAX_LENGTH = 256
MAX_CHARSET = 4096
OPTION_KEYS = ("model", "beam", "length", "charset")
PROTECTED = ("/v1/", "/metrics")
ENV_CONFIG = "CAPTCHA_CRNN_SERVE"


@dataclass
class ServiceConfig:
    """Limits and batching settings of one server."""

    api_key: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024  # whole request body -> 413
    max_pixels: int = 4_000_000  # per image (header check before decoding) -> 413
    max_images: int = 64  # per request -> 413
    max_batch: int = 64  # images per forward pass
    max_wait_ms: float = 2.0  # how long a batch waits for more images
    max_queue: int = 4096  # images waiting per model -> 503
    timeout_s: float = 10.0  # per request -> 504
    warmup: bool = True  # one dummy read per model at start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- OpenAPI models (documentation; responses are serialised directly for speed) -------------


class ReadResult(BaseModel):
    text: str = Field(description="the text read")
    confidence: float = Field(description="probability of the whole text")
    char_confidences: list[float] = Field(description="probability of each character")
    ms: float = Field(description="milliseconds from the request's arrival to this image's result")
    filename: str | None = Field(None, description="multipart file name")


class ReadResponse(BaseModel):
    model: str
    ms: float = Field(description="milliseconds the request took in the server")
    results: list[ReadResult] = Field(description="one per image, in request order")
    text: str | None = Field(None, description="single-image requests: the text (also in results[0])")
    confidence: float | None = None
    char_confidences: list[float] | None = None


class ReadJSON(BaseModel):
    image: str | None = Field(None, description="base64 image (a data: URL works too)")
    images: list[str] | None = Field(None, description="several base64 images")
    model: str | None = None
    beam: int | None = Field(None, ge=1, le=MAX_BEAM)
    length: int | None = Field(None, ge=1, le=MAX_LENGTH)
    charset: str | None = Field(None, min_length=1, max_length=MAX_CHARSET)


class InputSize(BaseModel):
    height: int
    width: int | None = Field(description="fixed width, or null when the aspect ratio is kept")
    channels: int


class ModelInfo(BaseModel):
    name: str
    alphabet: str
    input: InputSize
    source: str
    default: bool


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    models: list[str]


class ErrorResponse(BaseModel):
    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse} for c in codes}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
READ_BODY = {
    "requestBody": {
        "description": "One image as the raw body, multipart files, or JSON with base64 images.",
        "required": True,
        "content": {
            "image/png": _BINARY,
            "image/jpeg": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "model": {"type": "string"},
                        "beam": {"type": "integer", "minimum": 1, "maximum": MAX_BEAM},
                        "length": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH},
                        "charset": {"type": "string", "minLength": 1},
                    },
                }
            },
            "application/json": {"schema": ReadJSON.model_json_schema()},
        },
    }
}


# -- request parsing -------------------------------------------------------------------------


def _fail(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


async def _read_body(request: Request, limit: int) -> bytes:
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise _fail(400, "bad Content-Length header") from None
        if n > limit:
            raise _fail(413, f"request body too large ({n} bytes > {limit})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _fail(413, f"request body too large (over {limit} bytes)")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _b64(s: Any, i: int) -> bytes:
    where = f"images[{i}]" if i >= 0 else "image"
    if not isinstance(s, str):
        raise _fail(422, f"{where}: expected a base64 string")
    if s.startswith("data:"):
        s = s.partition(",")[2]
    if any(c.isspace() for c in s[:80]) or any(c.isspace() for c in s[-80:]):
        s = "".join(s.split())
    if "-" in s or "_" in s:
        s = s.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise _fail(422, f"{where}: not valid base64") from None
    if not data:
        raise _fail(422, f"{where}: empty image")
    return data


def _parse_json(body: bytes, max_images: int) -> tuple[list[bytes], bool, dict[str, Any]]:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise _fail(422, "body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _fail(422, 'JSON body must be an object: {"image": BASE64} or {"images": [BASE64, ...]}')
    if ("image" in obj) == ("images" in obj):
        raise _fail(422, 'JSON body needs exactly one of "image" (base64) or "images" (list of base64)')
    if "image" in obj:
        images, single = [_b64(obj["image"], -1)], True
    else:
        items = obj["images"]
        if not isinstance(items, list) or not items:
            raise _fail(422, '"images" must be a non-empty list of base64 strings')
        if len(items) > max_images:
            raise _fail(413, f"too many images ({len(items)} > {max_images})")
        images, single = [_b64(x, i) for i, x in enumerate(items)], False
    return images, single, {k: obj[k] for k in OPTION_KEYS if obj.get(k) is not None}


async def _parse_multipart(
    request: Request, body: bytes, max_images: int
) -> tuple[list[bytes], list[str | None], dict[str, Any]]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=max_images, max_fields=32,
                                     max_part_size=64 * 1024).parse()
    except MultiPartException as e:
        msg = str(e.message)
        raise _fail(413 if "Too many files" in msg else 422, f"multipart: {msg}") from None
    except Exception as e:
        raise _fail(422, f"multipart: could not parse the form ({type(e).__name__})") from None
    images: list[bytes] = []
    names: list[str | None] = []
    opts: dict[str, Any] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                if not data:
                    raise _fail(422, f"multipart: file {value.filename or key!r} is empty")
                images.append(data)
                names.append(value.filename)
            elif key in OPTION_KEYS and value != "":
                opts[key] = value
    finally:
        await form.close()
    if not images:
        raise _fail(422, "multipart: no image files in the form")
    return images, names, opts


def _as_int(v: Any, name: str, lo: int, hi: int) -> int | None:
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            raise _fail(422, f"{name} must be an integer") from None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(422, f"{name} must be an integer")
    if not lo <= v <= hi:
        raise _fail(422, f"{name} must be between {lo} and {hi}")
    return v


def _as_str(v: Any, name: str, max_len: int) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise _fail(422, f"{name} must be a string")
    if not v or len(v) > max_len:
        raise _fail(422, f"{name} must have 1 to {max_len} characters")
    return v


def _check_api_key(scope: dict[str, Any], key: bytes) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key):
                return True
        elif name == b"x-api-key" and hmac.compare_digest(value.strip(), key):
            return True
    return False


class ServiceMiddleware:
    """Pure ASGI middleware: API key check and request metrics (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: Any, metrics: Metrics, api_key: str | None):
        self.app = app
        self.metrics = metrics
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope["path"]
        status = 500
        try:
            if self.key is not None and path.startswith(PROTECTED) and not _check_api_key(scope, self.key):
                status = 401
                body = b'{"detail":"missing or wrong API key (send Authorization: Bearer KEY or X-API-Key: KEY)"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return

            async def send_status(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(path, scope.get("method", ""), status, time.perf_counter() - t0)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":"), ensure_ascii=False), status_code=status,
                    media_type="application/json")


def _warmup(entry: ModelEntry) -> None:
    import numpy as np

    pre = entry.recognizer.preprocess
    blank = np.full((pre.channels, pre.height, pre.width or pre.height * 4), 255, dtype=np.uint8)
    entry.recognizer.predict_arrays([blank, blank])


def create_app(models: Sequence[ModelEntry] | dict[str, Any], config: ServiceConfig | None = None) -> FastAPI:
    """The FastAPI app serving these models (the first is the default); see the module doc."""
    cfg = config or ServiceConfig()
    entries = [ModelEntry(k, v) for k, v in models.items()] if isinstance(models, dict) else list(models)
    if not entries:
        raise ValueError("create_app needs at least one model")
    by_name = {e.name: e for e in entries}
    default = entries[0].name
    metrics = Metrics()
    arriving = [0]  # /v1/read requests being parsed: a batch waits for them (up to max_wait), not for nobody
    batchers: dict[str, Batcher] = {}
    for e in entries:
        if cfg.warmup:
            _warmup(e)
        pre = replace(e.recognizer.preprocess, max_pixels=min(cfg.max_pixels, e.recognizer.preprocess.max_pixels),
                      max_bytes=min(cfg.max_body_bytes, e.recognizer.preprocess.max_bytes))
        batchers[e.name] = Batcher(e.name, e.recognizer, pre, metrics, cfg.max_batch, cfg.max_wait_ms / 1000.0,
                                   cfg.max_queue, arriving=lambda: arriving[0])
    models_body = json.dumps({"default": default,
                              "models": [{**e.describe(), "default": e.name == default} for e in entries]}).encode()
    health_body = json.dumps({"status": "ok", "models": list(by_name)}).encode()
    page = resources.files(__package__).joinpath("page.html").read_bytes()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for b in batchers.values():
            b.start()
        yield
        for b in batchers.values():
            b.stop()

    app = FastAPI(title="captcha-crnn", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Read text captchas with CRNN models. Send an image to POST /v1/read.")
    app.state.config = cfg
    app.state.metrics = metrics
    app.state.batchers = batchers
    app.state.models = by_name
    app.add_middleware(ServiceMiddleware, metrics=metrics, api_key=cfg.api_key)

    @app.post(
        "/v1/read",
        summary="Read one or more captcha images",
        response_model=None,
        responses={200: {"model": ReadResponse}, **_errors(400, 401, 404, 413, 415, 422, 503, 504)},
        openapi_extra=READ_BODY,
    )
    async def read(
        request: Request,
        model: str | None = Query(None, max_length=100, description="model name (default: the first)"),
        beam: int | None = Query(None, ge=1, le=MAX_BEAM, description="beam width (1 = greedy)"),
        length: int | None = Query(None, ge=1, le=MAX_LENGTH, description="read exactly this many characters"),
        charset: str | None = Query(None, min_length=1, max_length=MAX_CHARSET, description="only these characters"),
    ) -> Response:
        t0 = time.perf_counter()
        arriving[0] += 1
        try:
            name, jobs, names, single = await _queue(request, model, beam, length, charset)
        finally:
            arriving[0] -= 1
        futures = [j.future for j in jobs]
        done, _ = await asyncio.wait(futures, timeout=cfg.timeout_s)
        if len(done) < len(futures):
            for j in jobs:
                j.cancelled = True
                j.future.cancel()
            raise _fail(504, f"timed out after {cfg.timeout_s:g} s reading {len(jobs)} image(s)")
        results = []
        error: tuple[int, str] | None = None
        for i, f in enumerate(futures):
            exc = f.exception()
            if exc is not None:
                if error is None:
                    detail = getattr(exc, "detail", "internal error")
                    if len(futures) > 1:
                        detail = f"image {i + 1}{f' ({names[i]})' if names and names[i] else ''}: {detail}"
                    error = (getattr(exc, "status", 500), detail)
                continue
            p, t_done = f.result()
            r = {"text": p.text, "confidence": float(p.confidence),
                 "char_confidences": [float(c) for c in p.char_confidences], "ms": round((t_done - t0) * 1e3, 3)}
            if names is not None:
                r["filename"] = names[i]
            results.append(r)
        if error is not None:
            raise _fail(*error)
        out: dict[str, Any] = {"model": name, "ms": round((time.perf_counter() - t0) * 1e3, 3), "results": results}
        if single:
            r0 = results[0]
            out.update(text=r0["text"], confidence=r0["confidence"], char_confidences=r0["char_confidences"])
        return _json(out)

    async def _queue(
        request: Request, model: str | None, beam: int | None, length: int | None, charset: str | None
    ) -> tuple[str, list[Any], list[str | None] | None, bool]:
        """Read and check the request, queue its images: (model name, jobs, file names, single image)."""
        body = await _read_body(request, cfg.max_body_bytes)
        ctype = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        names: list[str | None] | None = None
        opts: dict[str, Any] = {}
        if ctype == "application/json" or ctype.endswith("+json"):
            if len(body) > 256 * 1024:
                from starlette.concurrency import run_in_threadpool

                images, single, opts = await run_in_threadpool(_parse_json, body, cfg.max_images)
            else:
                images, single, opts = _parse_json(body, cfg.max_images)
        elif ctype == "multipart/form-data":
            images, names, opts = await _parse_multipart(request, body, cfg.max_images)
            single = len(images) == 1
        else:
            if not body:
                raise _fail(422, "empty body: send the image as the body, as multipart files, or as JSON base64")
            images, single = [body], True
        name = _as_str(opts.get("model", model), "model", 100) or default
        entry = by_name.get(name)
        if entry is None:
            raise _fail(404, f"no model named {name!r}; models: {', '.join(by_name)}")
        beam_ = _as_int(opts.get("beam", beam), "beam", 1, MAX_BEAM) or 1
        length_ = _as_int(opts.get("length", length), "length", 1, MAX_LENGTH)
        charset_ = _as_str(opts.get("charset", charset), "charset", MAX_CHARSET)
        if charset_ is not None:
            unknown = entry.recognizer.alphabet.unknown(charset_)
            if unknown:
                raise _fail(422, f"charset has characters model {name!r} does not know: {''.join(sorted(unknown))!r}")
        try:
            jobs = batchers[name].submit(images, (beam_, length_, charset_), cfg.timeout_s)
        except ServiceError as e:
            raise _fail(e.status, e.detail) from None
        return name, jobs, names, single

    @app.get("/v1/models", summary="The models this server holds", response_model=None,
             responses={200: {"model": ModelsResponse}, **_errors(401)})
    async def list_models() -> Response:
        return Response(models_body, media_type="application/json")

    @app.get("/healthz", summary="Liveness", response_model=None, responses={200: {"model": Health}})
    async def healthz() -> Response:
        return Response(health_body, media_type="application/json")

    @app.get("/metrics", summary="Prometheus metrics", response_model=None,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(401)})
    async def prometheus() -> Response:
        data, ctype = metrics.render()
        return Response(data, media_type=ctype)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={
            "content-security-policy": "default-src 'self'; img-src 'self' blob: data:; "
                                       "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
            "cache-control": "no-cache"})

    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` workers: models and config from ``$CAPTCHA_CRNN_SERVE``."""
    from .models import load_models
    from .server import freeze_heap, load_kwargs, set_threads

    conf = json.loads(os.environ[ENV_CONFIG])
    threads = int(conf.get("threads") or 1)
    set_threads(threads)
    cfg = ServiceConfig(**conf["config"])
    cfg.api_key = os.environ.get("CAPTCHA_CRNN_API_KEY") or None
    app = create_app(load_models(conf["models"], **load_kwargs(conf.get("engine", "auto"), threads)), cfg)
    freeze_heap()
    return app
