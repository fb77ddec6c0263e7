"""The service's one FastAPI app factory. ``serve``'s reading API (app.py) and ``label``'s page
(labelling.py) are routers built into an app here, so both get the same middleware (API key, body
limit, request ids, metrics: middleware.py), the same JSON errors (``{"detail": ...}``) and
``GET /metrics``; server.py runs either under uvicorn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..errors import CaptchaError
from ..version import __version__
from .metrics import Metrics
from .middleware import ServiceMiddleware
from .schemas import _errors


def build_app(
    routers: Sequence[APIRouter], *, title: str, api_key: str | None, protected: tuple[str, ...], max_body: int,
    metrics: Metrics | None = None, description: str = "", lifespan: Any = None,
) -> FastAPI:
    """An app serving `routers` and ``GET /metrics``; with an `api_key`, paths that start with one of
    `protected` need it (401); a declared body over `max_body` bytes is refused (413); a CaptchaError
    out of a route is a 422 naming the problem."""
    metrics = metrics or Metrics()
    app = FastAPI(title=title, version=__version__, description=description, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.metrics = metrics
    routers = [*routers, _metrics_router(metrics)]
    for router in routers:
        app.include_router(router)
    # the routes by path pattern (the app's own, /openapi.json, and the routers'): metrics name a
    # request the middleware refuses, before routing, by the route it was for
    routes = [r for r in app.router.routes if hasattr(r, "path")] + [r for rt in routers for r in rt.routes]
    app.add_middleware(ServiceMiddleware, metrics=metrics, api_key=api_key, protected=protected, max_body=max_body,
                       routes=routes)
    app.add_exception_handler(CaptchaError, _unprocessable)
    app.add_exception_handler(Exception, _internal_error)
    return app


async def _unprocessable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "internal error"}, status_code=500)


def _metrics_router(metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", summary="Prometheus metrics", response_model=None,
                responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(401)})
    async def prometheus() -> Response:
        data, ctype = metrics.render()
        return Response(data, media_type=ctype)

    return router
