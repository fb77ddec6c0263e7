"""The ASGI middleware in front of every route of every app (factory.py): the API key check, the
request body limit, a request id on every response, and request metrics."""

from __future__ import annotations

import hmac
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match

from .metrics import Metrics

PROTECTED = ("/v1/", "/metrics")  # `serve`'s paths that need the API key when one is set
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}\Z")  # a client's X-Request-ID that is passed on as it is


def _check_api_key(scope: dict[str, Any], key: bytes) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key):
                return True
        elif name == b"x-api-key" and hmac.compare_digest(value.strip(), key):
            return True
    return False


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v
    return None


def _request_id(scope: dict[str, Any]) -> bytes:
    """The client's X-Request-ID when it is a plain token, else a new random one."""
    given = _header(scope, b"x-request-id")
    return given if given is not None and _REQUEST_ID.match(given) else os.urandom(8).hex().encode()


def _body_size(scope: dict[str, Any]) -> int:
    """The Content-Length the client declared (0 when none or unreadable: the route reads the body)."""
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else 0


class ServiceMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): 401 without the API key on the
    `protected` paths, 413 for a declared body over `max_body`, X-Request-ID on every response,
    and each request counted in `metrics` under its route."""

    def __init__(self, app: Any, metrics: Metrics, api_key: str | None, protected: tuple[str, ...] = PROTECTED,
                 max_body: int | None = None, routes: Sequence[BaseRoute] = ()):
        self.app = app
        self.metrics = metrics
        self.key = api_key.encode() if api_key else None
        self.protected = protected
        self.max_body = max_body
        self.routes = routes  # to name the route of a request that was not routed (refused here, or 404)

    def _refusal(self, scope: dict[str, Any]) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        if self.key is not None and scope["path"].startswith(self.protected) and not _check_api_key(scope, self.key):
            return 401, "missing or wrong API key (send Authorization: Bearer KEY or X-API-Key: KEY)", [
                (b"www-authenticate", b"Bearer")]
        if self.max_body is not None and (n := _body_size(scope)) > self.max_body:
            return 413, f"request body too large ({n} bytes > {self.max_body})", []
        return None

    def _route(self, scope: dict[str, Any]) -> str:
        """The route's path pattern (``/api/item/{name}``), for metrics; "other" where none matches."""
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", None) or "other"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        request_id = _request_id(scope)

        async def send_tagged(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is None:
                await self.app(scope, receive, send_tagged)
                return
            status, detail, headers = refusal
            body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
            await send_tagged({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
            await send_tagged({"type": "http.response.body", "body": body})
        finally:
            self.metrics.observe_request(self._route(scope), scope.get("method", ""), status,
                                         time.perf_counter() - t0)
