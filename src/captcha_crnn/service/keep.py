"""`serve --keep-unsure DIR`: the images the service reads under a confidence, kept for labelling.

The batch thread hands each unsure image to `Keeper.offer`, which only queues it (never blocking: a full queue
drops the image and counts it); one writer thread names it by its content (the same image twice is kept once),
writes it atomically, and appends its reading to DIR/kept.csv, which `captcha-crnn label DIR` pre-fills from
(least sure first). The cap (images and bytes) is checked before each write, so DIR never passes it, however
many unsure images arrive; the service answers all the same.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.images import IMAGE_SUFFIXES
from ..files import atomic_write

log = logging.getLogger("captcha_crnn.service")

KEPT_CSV = "kept.csv"  # filename,reading,confidence,model: the service's reading of each kept image
MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"), (b"II*\0", ".tif"),
         (b"MM\0*", ".tif"))  # file signatures (WebP: RIFF....WEBP, below)
QUEUE = 1024  # images waiting for the writer; past it an unsure image is dropped (counted), not waited for


def parse_cap(text: str) -> tuple[int | None, int | None]:
    """--keep-max: "5000" (images) or "200MB" / "1.5GB" / "800KB" (bytes) -> (images, bytes)."""
    t = text.strip().upper().removesuffix("B")
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(t[-1:], 0)
    try:
        if scale:
            return None, int(float(t[:-1]) * scale)
        return int(t), None
    except ValueError:
        raise ValueError(f"--keep-max {text!r}: give a number of images (5000) or a size (200MB)") from None


class Keeper:
    """The kept images of one server: counts, the writer thread, and what became of each offer."""

    def __init__(self, folder: str | Path, max_images: int | None = None, max_bytes: int | None = None,
                 count: Callable[[str], None] | None = None):
        self.max_images, self.max_bytes = max_images, max_bytes  # the cap (None: none)
        self.count = count  # count(outcome): the metrics' counter
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        kept = [p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        self.known = {p.stem for p in kept}
        self.images, self.bytes = len(kept), sum(p.stat().st_size for p in kept)
        self.counts = {"kept": 0, "duplicate": 0, "full": 0, "dropped": 0, "failed": 0}
        self._q: queue.Queue = queue.Queue(QUEUE)
        self._csv_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="keep-unsure", daemon=True)
        self._thread.start()

    def offer(self, model: str, data: bytes, text: str, confidence: float) -> None:
        """Queue one unsure image (from the batch thread); drops it when the writer is behind."""
        try:
            self._q.put_nowait((model, data, text, confidence))
        except queue.Full:
            self._counted("dropped")

    def _counted(self, outcome: str) -> None:
        self.counts[outcome] += 1
        if self.count is not None:
            self.count(outcome)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every image offered so far is written or refused (tests, shutdown)."""
        done = threading.Event()
        self._q.put((None, b"", "", 0.0, done), timeout=timeout)
        done.wait(timeout)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item[0] is None:
                item[4].set()
                continue
            try:
                self._counted(self._write(*item))
            except Exception as e:  # a full disk must not stop the service: count it, say it once per kind
                self._counted("failed")
                if self.counts["failed"] in (1, 100):
                    log.warning("captcha-crnn: could not keep an unsure image in %s: %s", self.folder, e)

    def _write(self, model: str, data: bytes, text: str, confidence: float) -> str:
        digest = hashlib.sha256(data).hexdigest()[:24]
        if digest in self.known:
            return "duplicate"
        if (self.max_images is not None and self.images + 1 > self.max_images) or \
                (self.max_bytes is not None and self.bytes + len(data) > self.max_bytes):
            return "full"
        suffix = image_suffix(data)
        if suffix is None:
            return "failed"
        name = digest + suffix
        atomic_write(self.folder / name, lambda f: f.write(data), sync=False)  # no fsync per image: kept for
        # labelling, not a record; a reader still never sees half a file
        self.known.add(digest)
        self.images, self.bytes = self.images + 1, self.bytes + len(data)
        self._append(name, text, confidence, model)
        return "kept"

    def _append(self, name: str, text: str, confidence: float, model: str) -> None:
        """One line of kept.csv, written whole with O_APPEND (a reader never sees half of it)."""
        path = self.folder / KEPT_CSV
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        with self._csv_lock:
            if not path.exists():
                w.writerow(["filename", "reading", "confidence", "model"])
            w.writerow([name, text, f"{confidence:.4f}", model])
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            try:
                os.write(fd, buf.getvalue().encode())
            finally:
                os.close(fd)


def image_suffix(data: bytes) -> str | None:
    """The file suffix of an image's format, from its signature (None: not one the library reads). The service
    has decoded the image already; this only names the file."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in MAGIC if data.startswith(magic)), None)


def kept_readings(folder: str | Path) -> dict[str, tuple[str, float]]:
    """The service's reading and confidence of each image kept in `folder` (empty without kept.csv)."""
    path = Path(folder) / KEPT_CSV
    if not path.is_file():
        return {}
    out: dict[str, tuple[str, float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                out[row["filename"]] = (row["reading"], float(row["confidence"]))
            except (KeyError, TypeError, ValueError):
                continue  # a damaged line costs its own pre-fill only
    return out


class KeptReader:
    """The service's readings of the kept images as a Reader for `captcha-crnn label DIR`'s pre-fill: each
    image's reading and confidence from DIR/kept.csv, without reading it again."""

    def __init__(self, folder: str | Path):
        self.readings = kept_readings(folder)

    def predict(self, paths: Any, errors: str = "return", **_: Any) -> list[Any]:
        from ..errors import CaptchaError
        from ..infer import Prediction

        out: list[Any] = []
        for p in paths:
            got = self.readings.get(Path(p).name)
            out.append(Prediction(got[0], got[1], source=str(p)) if got else CaptchaError(f"{p}: not in kept.csv"))
        return out
