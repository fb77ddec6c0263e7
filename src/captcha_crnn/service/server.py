"""``captcha-crnn serve``: load the models, then run the app under uvicorn (``run_app``, the
launcher of ``captcha-crnn label`` too)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .config import ENV_API_KEY, ENV_CONFIG, ServiceConfig, api_key_setting
from .runtime import default_threads, freeze_heap, load_kwargs, set_threads

__all__ = ["default_threads", "freeze_heap", "load_kwargs", "run_app", "serve", "set_threads"]  # runtime.py: 4


def run_app(app: Any, host: str, port: int, log_level: str = "info", access_log: bool = False, **kwargs: Any) -> None:
    """Run an app of factory.py (or, with ``factory=True``, the import path of a factory) until stopped."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, timeout_keep_alive=30,
                **kwargs)


def serve(models: Sequence[str], host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          api_key: str | None = None, config: ServiceConfig | None = None, threads: int | None = None,
          engine: str = "auto", log_level: str = "info", access_log: bool = False, **uvicorn_kwargs: Any) -> None:
    """Serve ``models`` (paths, run folders, shipped names, ``NAME=PATH``; none: the zoo) until stopped."""
    from .models import load_models

    cfg = replace(config or ServiceConfig(), api_key=api_key_setting(api_key))
    workers = max(1, int(workers))
    threads = threads or default_threads(workers)
    set_threads(threads)
    kw = load_kwargs(engine, threads)
    entries = load_models(models, cfg.keep_below, **kw)  # fail here, clearly, before binding the port
    names = ", ".join(e.name for e in entries)
    auth = " (API key required)" if cfg.api_key else ""
    print(f"captcha-crnn: serving {names} on http://{host}:{port}/ (POST /v1/read){auth}", file=sys.stderr)
    if cfg.keep_unsure:
        below = ", ".join(f"{e.name} under {e.threshold:.4g} ({e.threshold_source})" for e in entries)
        print(f"captcha-crnn: keeping unsure images in {cfg.keep_unsure} ({below}): they are images clients sent",
              file=sys.stderr)
        if workers > 1:  # each worker keeps its share of the cap, so together they never pass it
            cfg = replace(cfg, keep_max_images=cfg.keep_max_images and cfg.keep_max_images // workers,
                          keep_max_bytes=cfg.keep_max_bytes and cfg.keep_max_bytes // workers)
    common = dict(host=host, port=port, log_level=log_level, access_log=access_log, **uvicorn_kwargs)
    if workers == 1:
        from .app import create_app

        app = create_app(entries, cfg, kw)
        freeze_heap()
        run_app(app, **common)
        return
    # Several worker processes: each loads the models itself from the environment.
    specs = [f"{e.name}={e.source}" for e in entries]
    del entries
    conf = {k: v for k, v in cfg.to_dict().items() if k != "api_key"}
    os.environ[ENV_CONFIG] = json.dumps({"models": specs, "config": conf, "threads": threads, "engine": engine})
    if cfg.api_key:
        os.environ[ENV_API_KEY] = cfg.api_key  # inherited, not on the command line of workers
    with tempfile.TemporaryDirectory(prefix="captcha-crnn-metrics-") as d:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", d)
        run_app("captcha_crnn.service.app:app_from_env", factory=True, workers=workers, **common)
