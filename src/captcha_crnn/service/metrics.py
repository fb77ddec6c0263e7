"""Prometheus metrics for the service: requests, errors, latency, batch sizes, inference time.

Each app gets its own registry (so tests and several apps in one process do not collide). With
``--workers N`` the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start, and
``/metrics`` then sums the figures of all workers.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no *_created series: less noise for scrapers

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
WINDOW_S, SLOT_S = 300, 10  # the page's drift figure: readings of the last 5 minutes, in 10-second slots


class Recent:
    """Readings and unsure readings of one model over the last WINDOW_S seconds (the page's drift figure)."""

    def __init__(self) -> None:
        self.slots: deque[list[int]] = deque()  # [slot start, readings, unsure], oldest first
        self.lock = threading.Lock()

    def add(self, readings: int, unsure: int) -> None:
        slot = int(time.time() // SLOT_S) * SLOT_S
        with self.lock:
            if not self.slots or self.slots[-1][0] != slot:
                self.slots.append([slot, 0, 0])
            self.slots[-1][1] += readings
            self.slots[-1][2] += unsure
            while self.slots and self.slots[0][0] <= slot - WINDOW_S:
                self.slots.popleft()

    def summary(self) -> dict[str, float | int]:
        """{"minutes", "readings", "unsure", "unsure_share"} of the window (this process's readings)."""
        since = time.time() - WINDOW_S
        with self.lock:
            kept = [s for s in self.slots if s[0] > since - SLOT_S]
        n, u = sum(s[1] for s in kept), sum(s[2] for s in kept)
        return {"minutes": WINDOW_S / 60, "readings": n, "unsure": u, "unsure_share": u / n if n else 0.0}


class Metrics:
    """The service's metrics on one registry; ``render()`` gives the Prometheus text format.

    HTTP requests are counted by route pattern (``/v1/read``, ``/api/item/{name}``; "other" where no
    route matched), as the middleware names them.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        def histogram(name: str, doc: str, label: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
            return Histogram(name, doc, [label], buckets=buckets, registry=r)

        self.requests = Counter("captcha_crnn_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.errors = Counter("captcha_crnn_http_errors", "HTTP responses with status >= 400",
                              ["route", "status"], registry=r)
        self.latency = histogram("captcha_crnn_http_request_duration_seconds", "HTTP request latency", "route")
        self.batch_size = histogram("captcha_crnn_batch_size", "Images per model forward pass (micro-batching)",
                                    "model", BATCH_BUCKETS)
        self.batch_seconds = histogram("captcha_crnn_batch_seconds", "Forward pass + CTC decoding time per batch",
                                       "model")
        self.queue_seconds = histogram("captcha_crnn_queue_wait_seconds", "Time an image waited for its batch",
                                       "model")
        self.images = Counter("captcha_crnn_images", "Images read, by model and outcome",
                              ["model", "outcome"], registry=r)
        self.confidence = histogram("captcha_crnn_read_confidence", "Confidence of each reading (a style change "
                                    "moves it down)", "model", CONFIDENCE_BUCKETS)
        self.unsure = Counter("captcha_crnn_unsure_readings", "Readings under the model's unsure threshold",
                              ["model"], registry=r)
        self.kept = Counter("captcha_crnn_kept_images", "Unsure images offered to --keep-unsure, by outcome",
                            ["outcome"], registry=r)
        self.reloads = Counter("captcha_crnn_model_reloads", "Model reloads by model and outcome",
                               ["model", "outcome"], registry=r)
        self._recent: dict[str, Recent] = {}
        self.queue_depth = Gauge("captcha_crnn_queue_depth", "Images waiting for a batch", ["model"],
                                 registry=r, multiprocess_mode="livesum")
        self._http: dict[tuple[str, str, int], tuple] = {}

    def recent(self, model: str) -> Recent:
        """The drift window of `model` (one per name, kept across reloads)."""
        return self._recent.setdefault(model, Recent())

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._http.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route),
                        self.errors.labels(route, str(status)) if status >= 400 else None)
            if len(self._http) < 1000:
                self._http[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text exposition."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
