"""Process set-up of a server or worker: inference threads, the frozen heap, ``Recognizer.load`` options."""

from __future__ import annotations

import gc
import os
from typing import Any


def default_threads(workers: int = 1) -> int:
    """Inference threads per worker: the cores left after each worker's event loop (at least 1)."""
    cores = os.cpu_count() or 2
    return max(1, cores // max(1, workers) - 1)


def set_threads(threads: int) -> None:
    """Intra-op threads for torch (the onnx engine takes its threads from ``Recognizer.load``)."""
    try:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    except ImportError:
        pass


def freeze_heap() -> None:
    """Collect, then move every object alive after start-up (libraries, models) out of the
    collector's sight (``gc.freeze``). A full collection no longer walks them: under load those
    walks were pauses of about 100 ms that set the p99 latency (benchmarks/serve_load.py: p99 at 32
    clients 127-188 ms without, 59-70 ms with)."""
    gc.collect()
    gc.freeze()


def load_kwargs(engine: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """The ``Recognizer.load`` options this version of the library accepts."""
    import inspect

    from ..errors import CaptchaError
    from ..infer import Recognizer

    params = inspect.signature(Recognizer.load).parameters
    kw: dict[str, Any] = {}
    if "engine" in params:
        kw["engine"] = engine
    elif engine not in ("auto", "torch"):
        raise CaptchaError(f"engine {engine!r} is not available in this version")
    if "threads" in params and threads is not None:
        kw["threads"] = threads
    return kw
