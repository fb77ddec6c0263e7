"""Dynamic micro-batching: images from requests that arrive together share one forward pass.

Each model has one ``Batcher``: a two-stage pipeline of worker threads fed by a queue. A request
handler (on the event loop) puts its images on the queue and awaits one asyncio future per image.

1. The decode thread turns image bytes into model input (``load_image``), so decoding overlaps
   with the forward pass of the previous batch; an unreadable image is answered at once.
2. The batch thread takes the first decoded image, then keeps taking images until it holds
   ``max_batch`` or ``max_wait`` seconds have passed, but only waits while more images are on
   their way (being decoded, or in a request handler that has not queued them yet): a lone
   request is not held back. It runs the model once per distinct set of decoding options and
   hands the results back to the event loop with one ``call_soon_threadsafe`` per batch.

Each job is read by the model that decoded it (``Served``): ``swap`` puts a new model in for the
jobs decoded after it, while those already decoded finish on the old one, so a reload fails no
request. Each reading's confidence goes to the metrics and, under the model's threshold, to the
``unsure`` hook (``serve --keep-unsure``: keep.py) with the image's bytes.

Neither decoding nor inference ever runs on the event loop. The queues are thread-safe
``queue.SimpleQueue``s rather than ``asyncio.Queue``s: the consumers are threads, and the batcher
then serves any event loop (uvicorn's, or a test client's).
"""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.images import Preprocess, load_image
from ..errors import CaptchaError
from .metrics import Metrics

log = logging.getLogger("captcha_crnn.service")

Options = tuple[int, "int | None", "str | None"]  # beam, length, charset


@dataclass(frozen=True, eq=False)
class Served:
    """The model a batcher reads with now: its reader, its input (limited by the server's), and the confidence
    under which a reading counts as unsure."""

    recognizer: Any
    preprocess: Preprocess
    threshold: float = 0.0


Unsure = Callable[[str, bytes, str, float], None]  # (model name, image bytes, reading, confidence)


class ServiceError(Exception):
    """An error with the HTTP status it becomes."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class QueueFull(ServiceError):
    def __init__(self, detail: str):
        super().__init__(503, detail)


@dataclass(eq=False)
class Job:
    """One image of one request, waiting for its batch."""

    data: bytes
    options: Options
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float
    deadline: float
    cancelled: bool = False
    array: np.ndarray | None = None
    error: BaseException | None = None
    result: Any = field(default=None)
    served: Served | None = None  # the model that decoded it, and reads it


def probe(data: bytes, max_pixels: int) -> None:
    """Raise ServiceError 415 if ``data`` is no image format, 413 if it has too many pixels.

    Reads the header only (no pixel decoding); the full decode happens in ``load_image``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        raise ServiceError(413, "image has too many pixels") from None
    except UnidentifiedImageError:
        raise ServiceError(415, f"not an image: {len(data)} bytes in no known image format") from None
    except Exception as e:  # any parser failure on the header is bad input, not a server error
        raise ServiceError(422, f"corrupt image header ({type(e).__name__}: {e})") from None
    if w * h > max_pixels:
        raise ServiceError(413, f"image too large: {w}x{h} = {w * h} pixels > {max_pixels}")
    if w <= 0 or h <= 0:
        raise ServiceError(422, f"image has no pixels ({w}x{h})")


def decode(data: bytes, pre: Preprocess) -> np.ndarray:
    """Image bytes -> the model's uint8 (C, H, W) input, or ServiceError (413 / 415 / 422)."""
    probe(data, pre.max_pixels)
    try:
        return load_image(data, pre)
    except CaptchaError as e:
        msg = str(e).split(": ", 1)[-1]
        raise ServiceError(413 if "too large" in msg else 422, msg) from None
    except Exception as e:  # Pillow can raise many types on hostile input; never a 500 for bad input
        raise ServiceError(422, f"could not decode image ({type(e).__name__}: {e})") from None


_STOP = object()


class Batcher:
    """Micro-batches reads for one model: a decode thread, then a batch (inference) thread."""

    def __init__(
        self,
        name: str,
        served: Served,
        metrics: Metrics | None = None,
        max_batch: int = 64,
        max_wait: float = 0.002,
        max_queue: int = 2048,
        arriving: Callable[[], int] | None = None,
        unsure: Unsure | None = None,
    ):
        self.name = name
        self.current = served
        self.unsure = unsure  # called with each reading under the threshold (keeps the image bytes until read)
        self.metrics = metrics
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait))
        self.max_queue = max(1, int(max_queue))
        self.arriving = arriving or (lambda: 0)  # requests parsed but not queued yet (any model)
        self._in: queue.SimpleQueue = queue.SimpleQueue()  # bytes, to the decode thread
        self._ready: queue.SimpleQueue = queue.SimpleQueue()  # arrays, to the batch thread
        self._undecoded = 0  # jobs queued but not yet handed to the batch thread
        self._count_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        if metrics is not None:
            self._m_batch = metrics.batch_size.labels(name)
            self._m_seconds = metrics.batch_seconds.labels(name)
            self._m_wait = metrics.queue_seconds.labels(name)
            self._m_ok = metrics.images.labels(name, "ok")
            self._m_bad = metrics.images.labels(name, "error")
            self._m_depth = metrics.queue_depth.labels(name)
            self._m_conf = metrics.confidence.labels(name)
            self._m_unsure = metrics.unsure.labels(name)
        self.recent = metrics.recent(name) if metrics is not None else None

    @property
    def recognizer(self) -> Any:
        return self.current.recognizer

    @property
    def preprocess(self) -> Preprocess:
        return self.current.preprocess

    def swap(self, served: Served) -> None:
        """Read the jobs decoded from now on with `served`; those decoded before finish on the model they had."""
        self.current = served

    # -- event loop side ---------------------------------------------------------------------

    def running(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def start(self) -> None:
        with self._lock:
            if self.running():
                return
            self._stop_threads()
            self._threads = [threading.Thread(target=self._decode_loop, name=f"decode-{self.name}", daemon=True),
                             threading.Thread(target=self._batch_loop, name=f"batch-{self.name}", daemon=True)]
            for t in self._threads:
                t.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stop_threads(timeout)

    def _stop_threads(self, timeout: float = 5.0) -> None:
        threads, self._threads = self._threads, []
        if threads:
            self._in.put(_STOP)  # the decode thread passes it on to the batch thread
            for t in threads:
                t.join(timeout)

    def submit(self, images: list[bytes], options: Options, timeout: float) -> list[Job]:
        """Queue images (call from a running event loop); await ``job.future`` for each."""
        if not self.running():
            self.start()
        queued = self._undecoded + self._ready.qsize()
        if queued + len(images) > self.max_queue:
            raise QueueFull(f"model {self.name!r} is busy ({queued} images queued); retry later")
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        jobs = [Job(d, options, loop, loop.create_future(), now, now + timeout) for d in images]
        with self._count_lock:
            self._undecoded += len(jobs)
        for j in jobs:
            self._in.put(j)
        if self.metrics is not None:
            self._m_depth.inc(len(jobs))
        return jobs

    # -- decode thread ---------------------------------------------------------------------

    def _decode_loop(self) -> None:
        while True:
            job = self._in.get()
            if job is _STOP:
                self._ready.put(_STOP)
                return
            try:
                if not job.cancelled and job.deadline > time.perf_counter():  # else: already answered 504
                    job.served = self.current
                    try:
                        job.array = decode(job.data, job.served.preprocess)
                    except ServiceError as e:
                        job.error = e
                    if self.unsure is None or job.error is not None:
                        job.data = b""
                    if job.error is not None:
                        if self.metrics is not None:
                            self._m_depth.dec()
                        self._deliver([job])
                    else:
                        self._ready.put(job)
                        continue
                elif self.metrics is not None:
                    self._m_depth.dec()
            finally:
                with self._count_lock:
                    self._undecoded -= 1

    # -- batch thread ----------------------------------------------------------------------

    def _more_coming(self) -> bool:
        return self._undecoded > 0 or self.arriving() > 0

    def _batch_loop(self) -> None:
        q = self._ready
        while True:
            first = q.get()
            if first is _STOP:
                return
            batch: list[Job] = [first]
            deadline = time.perf_counter() + self.max_wait
            stop = False
            while len(batch) < self.max_batch:
                try:
                    job = q.get_nowait()
                except queue.Empty:
                    left = deadline - time.perf_counter()
                    if left <= 0 or not self._more_coming():
                        break
                    try:
                        job = q.get(timeout=min(left, 0.0005))
                    except queue.Empty:
                        continue
                if job is _STOP:
                    stop = True
                    break
                batch.append(job)
            if self.metrics is not None:
                self._m_depth.dec(len(batch))
            now = time.perf_counter()
            batch = [j for j in batch if not j.cancelled and j.deadline > now]
            if batch:
                try:
                    self._process(batch)
                except Exception:  # keep the worker alive whatever happens
                    log.exception("batch failed")
                    for j in batch:
                        if j.result is None and j.error is None:
                            j.error = ServiceError(500, "internal error while reading")
                self._deliver(batch)
            if stop:
                return

    def _process(self, batch: list[Job]) -> None:
        t0 = time.perf_counter()
        groups: dict[tuple[Served, Options], list[Job]] = {}
        for j in batch:
            groups.setdefault((j.served or self.current, j.options), []).append(j)
        for (served, (beam, length, charset)), jobs in groups.items():
            try:
                preds = served.recognizer.read_arrays([j.array for j in jobs], beam=beam, length=length,
                                                      charset=charset, batch_size=self.max_batch)
            except CaptchaError as e:
                for j in jobs:
                    j.error = ServiceError(422, str(e))
                continue
            except Exception as e:
                log.exception("inference failed for model %s", self.name)
                for j in jobs:
                    j.error = ServiceError(500, f"inference failed ({type(e).__name__})")
                continue
            for j, p in zip(jobs, preds):
                j.result = p
            self._confidences(served.threshold, jobs)
        for j in batch:
            j.array, j.data = None, b""
        if self.metrics is not None:
            self._m_batch.observe(len(batch))
            self._m_seconds.observe(time.perf_counter() - t0)
            for j in batch:
                self._m_wait.observe(t0 - j.enqueued)

    def _confidences(self, threshold: float, jobs: list[Job]) -> None:
        """Each reading's confidence to the metrics; those under `threshold` to the unsure hook."""
        unsure = 0
        for j in jobs:
            c = float(j.result.confidence)
            if c < threshold:
                unsure += 1
                if self.unsure is not None and j.data:
                    self.unsure(self.name, j.data, j.result.text, c)
            if self.metrics is not None:
                self._m_conf.observe(c)
        if self.metrics is not None:
            if unsure:
                self._m_unsure.inc(unsure)
            self.recent.add(len(jobs), unsure)

    def _deliver(self, batch: list[Job]) -> None:
        done = time.perf_counter()
        by_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
        ok = 0
        for j in batch:
            ok += j.error is None
            by_loop.setdefault(j.loop, []).append(j)
        if self.metrics is not None:
            if ok:
                self._m_ok.inc(ok)
            if len(batch) - ok:
                self._m_bad.inc(len(batch) - ok)
        for loop, jobs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, jobs, done)
            except RuntimeError:  # that loop has closed: nobody is waiting
                pass


def _resolve(jobs: list[Job], done: float) -> None:
    for j in jobs:
        if j.future.done():
            continue
        if j.error is not None:
            j.future.set_exception(j.error)
        else:
            j.future.set_result((j.result, done))
