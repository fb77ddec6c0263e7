"""The on-disk cache of decoded images and the prefetching batch loader."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captcha_crnn.data import dataset
from captcha_crnn.data.dataset import (
    DiskImages,
    Prefetcher,
    build_cache,
    cache_folder,
    cached_samples,
    load_samples,
)
from captcha_crnn.data.images import Preprocess, stack_padded
from captcha_crnn.data.labels import Sample
from captcha_crnn.training import TrainConfig, train


@pytest.fixture()
def samples(tmp_path: Path) -> list[Sample]:
    """Images of several sizes (so widths differ when the aspect is kept), one of them unreadable."""
    rng = np.random.default_rng(0)
    out = []
    for i, w in enumerate([40, 64, 100, 64, 150, 80]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, w, 3), dtype=np.uint8)).save(p)
        out.append(Sample(str(p), f"l{i}"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out.insert(2, Sample(str(bad), "bad"))
    return out


@pytest.mark.parametrize("width", [None, 96])
def test_cache_reads_what_memory_holds(tmp_path: Path, samples: list[Sample], width: int | None) -> None:
    pre = Preprocess(height=32, width=width, channels=3)
    mem = load_samples(samples, pre, progress=False)
    disk = cached_samples(samples, pre, tmp_path / "cache", progress=False)
    assert isinstance(disk.images, DiskImages)
    assert disk.labels == mem.labels and disk.paths == mem.paths and len(disk.skipped) == len(mem.skipped) == 1
    assert disk.widths().tolist() == mem.widths().tolist()
    for i in range(len(mem)):
        assert np.array_equal(disk.images[i], mem.images[i])
    idx = [4, 0, 2, 2]
    for (a, wa), (b, wb) in [(disk.batch(idx), mem.batch(idx)), (disk.subset(idx).batch([3, 1]), mem.batch([2, 0]))]:
        assert np.array_equal(a, b) and np.array_equal(wa, wb)
    assert np.array_equal(mem.batch(idx)[0], stack_padded([mem.images[i] for i in idx])[0])


def test_cache_is_reused_until_a_file_or_the_preprocessing_changes(tmp_path: Path, samples: list[Sample],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pre = Preprocess(height=32, width=None, channels=1)
    root = tmp_path / "cache"
    first = cache_folder(samples, pre, root)
    cached_samples(samples, pre, root, progress=False)
    built = []
    monkeypatch.setattr(dataset, "build_cache", lambda *a, **k: built.append(a) or build_cache(*a, **k))
    cached_samples(samples, pre, root, progress=False)
    assert built == [] and sorted(p.name for p in root.iterdir()) == [first.name]
    st = os.stat(samples[0].path)
    os.utime(samples[0].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed
    assert cache_folder(samples, pre, root) != first
    assert cache_folder(samples, Preprocess(height=48, width=None, channels=1), root) != first
    cached_samples(samples, pre, root, progress=False)
    assert len(built) == 1


def test_two_builders_of_one_cache_both_succeed(tmp_path: Path, samples: list[Sample]) -> None:
    pre = Preprocess(height=32, width=64, channels=1)
    folder = cache_folder(samples, pre, tmp_path / "cache")
    build_cache(samples, pre, folder, progress=False)
    build_cache(samples, pre, folder, progress=False)  # lost the race to rename: keeps the first
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]
    assert len(cached_samples(samples, pre, folder.parent, progress=False)) == len(samples) - 1


def test_other_processes_wait_for_the_builder(tmp_path: Path, samples: list[Sample]) -> None:
    pre = Preprocess(height=32, width=64, channels=1)
    root = tmp_path / "cache"
    builder = threading.Timer(0.3, build_cache, (samples, pre, cache_folder(samples, pre, root)), {"progress": False})
    builder.start()
    ds = cached_samples(samples, pre, root, build=False, wait_s=0.05)
    builder.join()
    assert len(ds) == len(samples) - 1


def test_prefetcher_keeps_order_passes_errors_and_stops_early() -> None:
    p = Prefetcher(lambda i: i * i, range(20), depth=2)
    assert list(p) == [i * i for i in range(20)]
    assert p.busy_s >= 0 and p.wait_s >= 0

    def fail(i: int) -> int:
        if i == 3:
            raise ValueError("bad batch")
        return i

    with pytest.raises(ValueError, match="bad batch"):
        list(Prefetcher(fail, range(10)))
    slow = Prefetcher(lambda i: time.sleep(0.01) or i, range(10**6), depth=2)
    assert next(iter(slow)) == 0
    slow.close()  # returns although the producer had a million items to go
    assert not slow._thread.is_alive()


def test_training_with_images_in_memory_writes_no_cache(tmp_path: Path, clean_dir: Path) -> None:
    cfg = dict(epochs=1, preset="tiny", label_sep="-", progress=False, init="none", threads=1)
    train(str(clean_dir), TrainConfig(out=str(tmp_path / "mem"), cache_dir="memory", **cfg))
    assert not (tmp_path / "mem" / "cache").exists()
    train(str(clean_dir), TrainConfig(out=str(tmp_path / "disk"), cache_dir=str(tmp_path / "shared"), **cfg))
    assert len(list((tmp_path / "shared").iterdir())) == 3  # train, val and test sets
    assert not (tmp_path / "disk" / "cache").exists()
