"""Decoded images as uint8, in memory or in an on-disk cache, and batches of them.

A training set is decoded once into a cache folder: ``pixels.u8`` holds every preprocessed image
(uint8 (C, H, W_i), C-order) back to back, ``index.npy`` its sample row, byte offset and width,
``index.json`` the preprocessing and the skipped files. The folder's name is a hash of the
preprocessing and of every source file's path, size and modification time, so a changed file or
setting makes a new cache and an unchanged one is reused (by --resume, by a second run). Batches
are read with positioned reads (os.preadv), so a process holds one batch of pixels, not the set.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from ..errors import CaptchaError
from ..progress import bar_disable
from .images import Preprocess, load_image, stack_padded, to_ink
from .labels import Sample

CACHE_VERSION = 1
T = TypeVar("T")


class DiskImages(Sequence[np.ndarray]):
    """The images of a cache folder (or a selection of them), read from disk on demand."""

    def __init__(self, folder: str | Path, offsets: np.ndarray, widths: np.ndarray, channels: int, height: int):
        self.folder = Path(folder)
        self.offsets, self.widths = offsets.astype(np.int64), widths.astype(np.int64)  # (N,), (N,)
        self.channels, self.height = channels, height
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:  # an open file does not travel to another process
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
            self._fd, self._pid = os.open(self.folder / "pixels.u8", flags), os.getpid()
        return self._fd

    def __len__(self) -> int:
        return len(self.widths)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        out = np.empty((self.channels, self.height, int(self.widths[i])), dtype=np.uint8)
        self._read_into(int(i), out)
        return out

    def _read_into(self, i: int, out: np.ndarray) -> None:
        """Fill the C-contiguous array `out` with image i's bytes."""
        fd, view, offset = self._file(), memoryview(out).cast("B"), int(self.offsets[i])
        while len(view):
            if hasattr(os, "preadv"):
                n = os.preadv(fd, [view], offset)
            else:  # Windows has no positioned reads
                os.lseek(fd, offset, os.SEEK_SET)
                n = os.readv(fd, [view])
            if n <= 0:
                raise CaptchaError(f"{self.folder / 'pixels.u8'}: image cache is truncated")
            view, offset = view[n:], offset + n

    def select(self, idx: Sequence[int]) -> DiskImages:
        """The images at positions idx, sharing the file."""
        idx = np.asarray(idx, dtype=np.int64)
        return DiskImages(self.folder, self.offsets[idx], self.widths[idx], self.channels, self.height)

    def batch(self, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, C, H, W_max) white-padded pixels and the true widths, read straight into the batch."""
        widths = self.widths[np.asarray(idx, dtype=np.int64)]
        out = np.full((len(idx), self.channels, self.height, int(widths.max())), 255, dtype=np.uint8)
        for k, i in enumerate(idx):
            if widths[k] == out.shape[-1]:
                self._read_into(int(i), out[k])  # a full-width row is contiguous: no copy
            else:
                out[k, :, :, : widths[k]] = self[int(i)]
        return out, widths


@dataclass
class ImageSet:
    """Preprocessed images (uint8 (C, H, W_i) each, a list or a DiskImages) with labels and source paths."""

    images: Sequence[np.ndarray]
    labels: list[str]
    paths: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def widths(self) -> np.ndarray:
        """Each image's width in pixels, without reading pixels from disk."""
        if isinstance(self.images, DiskImages):
            return self.images.widths
        return np.array([a.shape[-1] for a in self.images], dtype=np.int64)

    def subset(self, idx: Sequence[int]) -> ImageSet:
        images = self.images.select(idx) if isinstance(self.images, DiskImages) else [self.images[i] for i in idx]
        return ImageSet(images, [self.labels[i] for i in idx], [self.paths[i] for i in idx])

    def batch(self, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, C, H, W_max) white-padded pixels and the true widths."""
        if isinstance(self.images, DiskImages):
            return self.images.batch(idx)
        return stack_padded([self.images[i] for i in idx])

    def ink(self, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """What a model takes: float ink (B, C, H, W_max) of images idx, and their true widths."""
        u8, widths = self.batch(idx)
        return to_ink(u8), widths


def _decode(s: Sample, pre: Preprocess) -> np.ndarray | str:
    try:
        return load_image(s.path, pre)
    except CaptchaError as e:
        return str(e)


def decoded(samples: Sequence[Sample], pre: Preprocess, threads: int = 2,
            ahead: int = 256) -> Iterator[np.ndarray | str]:
    """Each sample's pixels (or the error message), in order, decoded on a thread pool a window ahead."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        window: deque = deque()
        for s in samples:
            window.append(pool.submit(_decode, s, pre))
            if len(window) >= ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _report_skipped(skipped: list[str]) -> None:
    for r in skipped[:5]:
        print(f"warning: skipped {r}", file=sys.stderr)
    if len(skipped) > 5:
        print(f"warning: skipped {len(skipped)} unreadable images in all", file=sys.stderr)


def load_samples(
    samples: Sequence[Sample],
    pre: Preprocess,
    desc: str = "loading",
    progress: bool = True,
    threads: int = 2,
) -> ImageSet:
    """Decode and preprocess samples into memory; unreadable images are skipped with a warning and counted."""
    from tqdm import tqdm

    images, labels, paths, skipped = [], [], [], []
    bar = tqdm(decoded(samples, pre, threads), total=len(samples), desc=desc, unit="img", disable=bar_disable(progress),
               leave=False, file=sys.stderr)
    for s, r in zip(samples, bar):
        if isinstance(r, str):
            skipped.append(r)
            continue
        images.append(r)
        labels.append(s.label)
        paths.append(s.path)
    _report_skipped(skipped)
    return ImageSet(images, labels, paths, skipped)


def cache_key(samples: Sequence[Sample], pre: Preprocess) -> str:
    """A hash of the preprocessing and every source file's path, size and modification time."""
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "pre": pre.to_dict()}, sort_keys=True).encode())
    for s in samples:
        try:
            st = os.stat(s.path)
            h.update(f"{s.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{s.path}\0missing\n".encode())
    return h.hexdigest()[:20]


def cache_folder(samples: Sequence[Sample], pre: Preprocess, root: str | Path) -> Path:
    """Where the cache of these samples under this preprocessing lives (it may not exist yet)."""
    return Path(root) / cache_key(samples, pre)


def is_cached(folder: str | Path) -> bool:
    return (Path(folder) / "index.json").is_file()


def build_cache(samples: Sequence[Sample], pre: Preprocess, folder: str | Path, desc: str = "decoding",
                progress: bool = True, threads: int = 2) -> None:
    """Decode samples into the cache `folder`, streaming (one window of images in memory).

    Written into a temporary folder and renamed into place, so a killed build leaves no cache and
    two processes building the same one at once both end with a complete folder.
    """
    from tqdm import tqdm

    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    rows, offsets, widths, skipped, pos = [], [], [], [], 0
    try:
        with open(tmp / "pixels.u8", "wb") as f:
            bar = tqdm(decoded(samples, pre, threads), total=len(samples), desc=desc, unit="img",
                       disable=bar_disable(progress), leave=False, file=sys.stderr)
            for row, r in enumerate(bar):
                if isinstance(r, str):
                    skipped.append(r)
                    continue
                f.write(memoryview(np.ascontiguousarray(r)).cast("B"))
                rows.append(row)
                offsets.append(pos)
                widths.append(r.shape[-1])
                pos += r.nbytes
            f.flush()
            os.fsync(f.fileno())
        np.save(tmp / "index.npy", np.array([rows, offsets, widths], dtype=np.int64).reshape(3, -1).T)
        meta = {"version": CACHE_VERSION, "n": len(rows), "of": len(samples), "bytes": pos,
                "channels": pre.channels, "height": pre.height, "pre": pre.to_dict(), "skipped": skipped}
        (tmp / "index.json").write_text(json.dumps(meta))
        _publish(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, folder: Path) -> None:
    try:
        os.rename(tmp, folder)
    except OSError:
        if not is_cached(folder):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same cache first


def read_cache(folder: str | Path, of: int | None = None) -> tuple[dict[str, Any], np.ndarray, DiskImages]:
    """A cache folder's metadata, index ((N, 3): sample row, byte offset, width) and images.

    CaptchaError when it is another cache version, incomplete, or (given `of`) built for another
    number of samples.
    """
    folder = Path(folder)
    meta = json.loads((folder / "index.json").read_text())
    index = np.load(folder / "index.npy")  # (N, 3): sample row, byte offset, width
    if meta.get("version") != CACHE_VERSION or (of is not None and meta["of"] != of) or len(index) != meta["n"]:
        raise CaptchaError(f"{folder}: image cache does not match its samples; delete the folder")
    return meta, index, DiskImages(folder, index[:, 1], index[:, 2], meta["channels"], meta["height"])


def open_cache(folder: str | Path, samples: Sequence[Sample], report: bool = True) -> ImageSet:
    """The cached images of `samples` (as built by build_cache for exactly these samples)."""
    meta, index, images = read_cache(folder, len(samples))
    rows = index[:, 0].tolist()
    if report:
        _report_skipped(meta["skipped"])
    return ImageSet(images, [samples[r].label for r in rows], [samples[r].path for r in rows], meta["skipped"])


def cached_samples(samples: Sequence[Sample], pre: Preprocess, root: str | Path, desc: str = "decoding",
                   progress: bool = True, threads: int = 2, build: bool = True, wait_s: float = 0.5) -> ImageSet:
    """The samples' images through the cache under `root`: built when missing (if `build`), else awaited."""
    folder = cache_folder(samples, pre, root)
    if not is_cached(folder):
        if build:
            build_cache(samples, pre, folder, desc, progress, threads)
        while not is_cached(folder):  # another process (a distributed run's first on this machine) builds it
            time.sleep(wait_s)
    return open_cache(folder, samples, report=build)


class Prefetcher(Generic[T]):
    """Runs `fetch` over `items` in a background thread, `depth` results ahead of the consumer.

    Iterating yields the results in order; `busy_s` is the thread's working time, `wait_s` the time
    the consumer spent blocked waiting for a result. Errors in `fetch` are raised in the consumer.
    """

    _END = object()

    def __init__(self, fetch: Callable[[Any], T], items: Iterable[Any], depth: int = 3):
        self.busy_s = self.wait_s = 0.0
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fetch, items), daemon=True)
        self._thread.start()

    def _run(self, fetch: Callable[[Any], T], items: Iterable[Any]) -> None:
        try:
            for item in items:
                t0 = time.perf_counter()
                result = fetch(item)
                self.busy_s += time.perf_counter() - t0
                if not self._put(result):
                    return
        except BaseException as e:  # handed to the consumer
            self._put(e)
        self._put(self._END)

    def _put(self, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            t0 = time.perf_counter()
            value = self._q.get()
            self.wait_s += time.perf_counter() - t0
            if value is self._END:
                return
            if isinstance(value, BaseException):
                raise value
            yield value

    def close(self) -> None:
        """Stop the thread (when the consumer leaves early)."""
        self._stop.set()
        self._thread.join()


def width_batches(widths: Sequence[int], batch_size: int, order: Sequence[int] | None = None) -> list[list[int]]:
    """Index batches of similar widths, so padding stays small (input order kept among equal widths).

    `order`: the indices to batch (default all of them, 0..len(widths)-1).
    """
    order = sorted(range(len(widths)) if order is None else order, key=lambda i: widths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def bucketed_order(order: list[int], widths: Sequence[int], batch_size: int, seed: int, pool: int = 50) -> list[int]:
    """A shuffled epoch order whose consecutive runs of `batch_size` indices have similar widths.

    The shuffled `order` is cut into pools of `pool` batches; each pool is sorted by width and cut
    into batches, and the full batches are shuffled (a short one goes last). Images of very
    different widths then rarely share a batch, so little time goes to padding, while every epoch
    still sees the images in a new random grouping. Equal widths: `order` unchanged.
    """
    if len(set(widths[i] for i in order)) <= 1:
        return order
    chunk = batch_size * pool
    batches = [b for s in range(0, len(order), chunk) for b in width_batches(widths, batch_size, order[s : s + chunk])]
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    perm = np.random.default_rng(seed).permutation(len(full)).tolist()
    return [i for k in perm for i in full[k]] + [i for b in short for i in b]
