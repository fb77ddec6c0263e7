"""The HTTP service (FastAPI): routes, request parsing, limits, errors and the web page.

``create_app(models, config)`` builds the app from loaded models (see ``models.load_models``);
``captcha-crnn serve`` runs it under uvicorn. Routes:

- ``POST /v1/read``: the image as the raw body, as multipart files (one or many) or as JSON
  base64 (``{"image": B64}`` / ``{"images": [B64, ...]}``); options ``model``, ``beam``,
  ``length``, ``charset`` in the query, the JSON object or multipart fields.
- ``GET /v1/models`` (each model's file hash, load time, unsure threshold and share of unsure readings over
  the last minutes), ``POST /v1/models/{name}/reload`` (reload.py), ``GET /healthz``, ``GET /metrics``
  (Prometheus), ``GET /openapi.json``, ``GET /`` (the web page).

The routes are routers on the service's one app factory (factory.py: middleware, errors, metrics).

Status codes: 401 missing/wrong API key, 404 unknown model, 413 body/pixels/image count over
the limits, 415 not an image, 422 corrupt image or bad options, 503 queue full, 504 timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import Response

from ..evaluate import model_threshold
from .batcher import Batcher, ServiceError, Unsure
from .config import ENV_CONFIG, MAX_BEAM, MAX_CHARSET, MAX_LENGTH, ServiceConfig, api_key_setting
from .factory import build_app
from .metrics import Metrics
from .middleware import PROTECTED, ServiceMiddleware
from .models import ModelEntry
from .reload import Reloader, ReloadError, served, warm
from .requests import OPTION_KEYS, _as_int, _as_str, _fail, _parse_json, _parse_multipart, _read_body
from .schemas import READ_BODY, Health, ModelsResponse, ReadResponse, _errors

# Names that lived here before the split, still importable from this module.
__all__ = ["ENV_CONFIG", "MAX_BEAM", "MAX_CHARSET", "MAX_LENGTH", "OPTION_KEYS", "PROTECTED", "READ_BODY",
           "ServiceConfig", "ServiceMiddleware", "app_from_env", "create_app"]


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":"), ensure_ascii=False), status_code=status,
                    media_type="application/json")


class _Reader:
    """``POST /v1/read`` for a set of models: parse and check a request, queue its images, gather the results."""

    def __init__(self, cfg: ServiceConfig, entries: list[ModelEntry], batchers: dict[str, Batcher],
                 arriving: list[int]):
        self.cfg = cfg
        self.default = entries[0].name
        self.batchers = batchers
        self.arriving = arriving  # /v1/read requests being parsed: a batch waits for them (up to max_wait)

    async def __call__(
        self, request: Request, model: str | None, beam: int | None, length: int | None, charset: str | None
    ) -> Response:
        t0 = time.perf_counter()
        self.arriving[0] += 1
        try:
            name, jobs, names, single = await self._queue(request, model, beam, length, charset)
        finally:
            self.arriving[0] -= 1
        results = await self._gather(jobs, names, t0)
        out: dict[str, Any] = {"model": name, "ms": round((time.perf_counter() - t0) * 1e3, 3), "results": results}
        if single:
            r0 = results[0]
            out.update(text=r0["text"], confidence=r0["confidence"], char_confidences=r0["char_confidences"])
        return _json(out)

    async def _gather(self, jobs: list[Any], names: list[str | None] | None, t0: float) -> list[dict[str, Any]]:
        """Wait for the jobs' results (504 past the timeout); the first failed image fails the request."""
        cfg = self.cfg
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
        return results

    async def _images(self, request: Request) -> tuple[list[bytes], list[str | None] | None, bool, dict[str, Any]]:
        """The request's images, their file names (multipart), whether it sent one image, and body options."""
        cfg = self.cfg
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
        return images, names, single, opts

    async def _queue(
        self, request: Request, model: str | None, beam: int | None, length: int | None, charset: str | None
    ) -> tuple[str, list[Any], list[str | None] | None, bool]:
        """Read and check the request, queue its images: (model name, jobs, file names, single image)."""
        images, names, single, opts = await self._images(request)
        name = _as_str(opts.get("model", model), "model", 100) or self.default
        batcher = self.batchers.get(name)
        if batcher is None:
            raise _fail(404, f"no model named {name!r}; models: {', '.join(self.batchers)}")
        beam_ = _as_int(opts.get("beam", beam), "beam", 1, MAX_BEAM) or 1
        length_ = _as_int(opts.get("length", length), "length", 1, MAX_LENGTH)
        charset_ = _as_str(opts.get("charset", charset), "charset", MAX_CHARSET)
        if charset_ is not None:
            unknown = batcher.recognizer.alphabet.unknown(charset_)
            if unknown:
                raise _fail(422, f"charset has characters model {name!r} does not know: {''.join(sorted(unknown))!r}")
        try:
            jobs = batcher.submit(images, (beam_, length_, charset_), self.cfg.timeout_s)
        except ServiceError as e:
            raise _fail(e.status, e.detail) from None
        return name, jobs, names, single


def _read_router(reader: _Reader) -> APIRouter:
    router = APIRouter()

    @router.post(
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
        return await reader(request, model, beam, length, charset)

    return router


def _info_router(entries: dict[str, ModelEntry], reloader: Reloader, metrics: Metrics) -> APIRouter:
    """GET /v1/models, POST /v1/models/{name}/reload, /healthz and the web page at /."""
    default = next(iter(entries))
    health_body = json.dumps({"status": "ok", "models": list(entries)}).encode()
    page = resources.files(__package__).joinpath("page.html").read_bytes()
    router = APIRouter()

    def describe(e: ModelEntry) -> dict[str, Any]:
        return {**e.describe(), "default": e.name == default, "recent": metrics.recent(e.name).summary()}

    @router.get("/v1/models", summary="The models this server holds", response_model=None,
             responses={200: {"model": ModelsResponse}, **_errors(401)})
    async def list_models() -> Response:
        return _json({"default": default, "models": [describe(e) for e in entries.values()]})

    @router.post("/v1/models/{name}/reload", summary="Load a model's file again and swap it in", response_model=None,
                 responses={**_errors(401, 404, 422)})
    async def reload(name: str) -> Response:
        if name not in entries:
            raise _fail(404, f"no model named {name!r}; models: {', '.join(entries)}")
        from starlette.concurrency import run_in_threadpool

        try:
            entry = await run_in_threadpool(reloader.reload, name)
        except ReloadError as e:
            raise _fail(422, f"not reloaded, the old model keeps serving: {e}") from None
        return _json(describe(entry))

    @router.get("/healthz", summary="Liveness", response_model=None, responses={200: {"model": Health}})
    async def healthz() -> Response:
        return Response(health_body, media_type="application/json")

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={
            "content-security-policy": "default-src 'self'; img-src 'self' blob: data:; "
                                       "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
            "cache-control": "no-cache"})

    return router


def _batchers(
    entries: list[ModelEntry], cfg: ServiceConfig, metrics: Metrics, arriving: list[int], unsure: Unsure | None
) -> dict[str, Batcher]:
    """One batcher per model (warmed up first when the config says so), its limits no looser than the config."""
    batchers: dict[str, Batcher] = {}
    for e in entries:
        if cfg.warmup:
            warm(e)
        batchers[e.name] = Batcher(e.name, served(e, cfg), metrics, cfg.max_batch, cfg.max_wait_ms / 1000.0,
                                   cfg.max_queue, arriving=lambda: arriving[0], unsure=unsure)
    return batchers


def _keeper(cfg: ServiceConfig, metrics: Metrics) -> Any:
    """--keep-unsure's Keeper (keep.py: the folder's writer thread), None when off."""
    if not cfg.keep_unsure:
        return None
    from .keep import Keeper

    return Keeper(cfg.keep_unsure, cfg.keep_max_images, cfg.keep_max_bytes,
                  lambda outcome: metrics.kept.labels(outcome).inc())


def create_app(models: Sequence[ModelEntry] | dict[str, Any], config: ServiceConfig | None = None,
               load_kwargs: dict[str, Any] | None = None) -> FastAPI:
    """The FastAPI app serving these models (the first is the default); see the module doc. `load_kwargs`:
    Recognizer.load's options for a reload."""
    cfg = config or ServiceConfig()
    entries = ([ModelEntry(k, v, threshold=model_threshold(getattr(v, "info", {}))[0]) for k, v in models.items()]
               if isinstance(models, dict) else list(models))
    if not entries:
        raise ValueError("create_app needs at least one model")
    metrics = Metrics()
    arriving = [0]  # /v1/read requests being parsed: a batch waits for them (up to max_wait), not for nobody
    keeper = _keeper(cfg, metrics)
    batchers = _batchers(entries, cfg, metrics, arriving, keeper.offer if keeper else None)
    by_name = {e.name: e for e in entries}
    reloader = Reloader(by_name, batchers, cfg, metrics, load_kwargs)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for b in batchers.values():
            b.start()
        reloader.start()
        yield
        reloader.stop()
        for b in batchers.values():
            b.stop()

    app = build_app([_read_router(_Reader(cfg, entries, batchers, arriving)),
                     _info_router(by_name, reloader, metrics)],
                    title="captcha-crnn", api_key=cfg.api_key, protected=PROTECTED, max_body=cfg.max_body_bytes,
                    metrics=metrics, lifespan=lifespan,
                    description="Read text captchas with CRNN models. Send an image to POST /v1/read.")
    app.state.config = cfg
    app.state.batchers = batchers
    app.state.models = by_name  # the entries in service now (a reload replaces one)
    app.state.reloader = reloader
    app.state.keep = keeper  # the Keeper, where --keep-unsure is on
    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` workers: models and config from ``$CAPTCHA_CRNN_SERVE``."""
    from .models import load_models
    from .runtime import freeze_heap, load_kwargs, set_threads

    conf = json.loads(os.environ[ENV_CONFIG])
    threads = int(conf.get("threads") or 1)
    set_threads(threads)
    cfg = ServiceConfig(**conf["config"])
    cfg.api_key = api_key_setting()
    kw = load_kwargs(conf.get("engine", "auto"), threads)
    app = create_app(load_models(conf["models"], cfg.keep_below, **kw), cfg, kw)
    freeze_heap()
    return app
