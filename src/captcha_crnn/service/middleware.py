"""The ASGI middleware in front of every route: the API key check and request metrics."""

from __future__ import annotations

import hmac
import time
from typing import Any

from .metrics import Metrics

PROTECTED = ("/v1/", "/metrics")


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
