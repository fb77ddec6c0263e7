"""A model swap without a restart: the files a server was started with are watched, and a changed one (or
``POST /v1/models/{name}/reload``) is loaded and warmed beside the serving model, then swapped in
(batcher.Batcher.swap: the images already decoded finish on the old one, so no request fails). A file that
fails to load leaves the old model serving, with one log line naming the file and the reason.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace
from typing import Any

from ..model.format import one_line
from .batcher import Batcher, Served
from .config import ServiceConfig
from .metrics import Metrics
from .models import ModelEntry, file_hash

log = logging.getLogger("captcha_crnn.service")


class ReloadError(Exception):
    """A reload that failed; the old model still serves."""


def served(entry: ModelEntry, cfg: ServiceConfig) -> Served:
    """What a batcher reads `entry` with: its reader, its input limited by the server's, its threshold."""
    pre = entry.recognizer.preprocess
    pre = replace(pre, max_pixels=min(cfg.max_pixels, pre.max_pixels), max_bytes=min(cfg.max_body_bytes, pre.max_bytes))
    return Served(entry.recognizer, pre, entry.threshold)


def warm(entry: ModelEntry) -> None:
    """One read of two blank images, so the first request after a (re)load pays no start-up cost."""
    import numpy as np

    pre = entry.recognizer.preprocess
    blank = np.full((pre.channels, pre.height, pre.width or pre.height * 4), 255, dtype=np.uint8)
    entry.recognizer.read_arrays([blank, blank])


class Reloader:
    """Reloads the models of one app, on request or when their files change (a thread polling every
    cfg.watch_s seconds)."""

    def __init__(self, entries: dict[str, ModelEntry], batchers: dict[str, Batcher], cfg: ServiceConfig,
                 metrics: Metrics | None = None, load_kwargs: dict[str, Any] | None = None):
        self.entries, self.batchers, self.cfg, self.metrics = entries, batchers, cfg, metrics
        self.load_kwargs = load_kwargs or {}
        self.seen = {name: stamp(e) for name, e in entries.items()}  # (mtime, size) per watched file
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reload(self, name: str) -> ModelEntry:
        """Load `name`'s file again, warm it, swap it in; ReloadError (old model serving) when it fails."""
        with self._lock:
            old = self.entries[name]
            if old.file is None:
                raise ReloadError(f"model {name!r} was not loaded from a file")
            try:
                new = ModelEntry.load(name, str(old.file), self.cfg.keep_below, **self.load_kwargs)
                new.source = old.source
                warm(new)
            except Exception as e:  # noqa: BLE001 - any failure to load keeps the old model, said in one line
                self._count(name, "failed")
                why = f"{old.file}: {one_line(e)}"
                log.error("captcha-crnn: model %r not reloaded, the old one keeps serving: %s", name, why)
                raise ReloadError(why) from None
            self.batchers[name].swap(served(new, self.cfg))
            self.entries[name] = new
            self._count(name, "ok")
            log.warning("captcha-crnn: model %r reloaded from %s (sha256 %s)", name, new.file, new.sha256[:12])
            return new

    def _count(self, name: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.reloads.labels(name, outcome).inc()

    def check(self) -> list[str]:
        """Reload each model whose file changed since last seen (a new hash, not only a touch); the names."""
        done = []
        for name, entry in list(self.entries.items()):
            now = stamp(entry)
            if now is None or now == self.seen.get(name):
                continue
            self.seen[name] = now
            try:
                if entry.file is not None and file_hash(entry.file) == entry.sha256:
                    continue
                self.reload(name)
                done.append(name)
            except (ReloadError, OSError):
                continue  # said in the log; tried again when the file changes again
        return done

    def start(self) -> None:
        if self.cfg.watch_s > 0 and any(e.file for e in self.entries.values()):
            self._thread = threading.Thread(target=self._loop, name="model-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.cfg.watch_s):
            self.check()


def stamp(entry: ModelEntry) -> tuple[int, int] | None:
    """(mtime in ns, size) of the entry's file; None when it has none or it is gone (mid-replace)."""
    try:
        st = os.stat(entry.file) if entry.file is not None else None
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size) if st else None
