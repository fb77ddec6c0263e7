"""Helpers for tests that serve an app on loopback and drive it in headless Chromium (Debian's
chromium through the playwright package; never `playwright install`)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server(app: Any) -> tuple[str, Any]:
    """Serve `app` with uvicorn on a free loopback port in a thread; returns (base url, stop)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        th.join(10)

    return f"http://127.0.0.1:{port}", stop


def sync_playwright() -> Any:
    """playwright's sync API, or a skip naming what is missing."""
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); browser test skipped")
    return pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
