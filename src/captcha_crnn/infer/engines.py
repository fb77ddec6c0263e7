"""Inference engines: run the network on a float32 ink batch (B, C, H, W) -> log-probs (B, T, classes).

``torch``: the CRNN in eager PyTorch. ``onnx``: an ONNX Runtime session (all graph optimisations,
intra-op threads = every core unless told otherwise) over an .onnx file, or over a model exported
from a .safetensors file on load (cached by file hash, see ``onnx_for``). ``auto``: onnx when
onnxruntime is importable and the device is the CPU, else torch.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CaptchaError
from ..files import atomic_write, cache_dir

ENGINES = ("auto", "onnx", "torch")
_MEMO: dict[str, bytes] = {}  # file hash -> exported ONNX bytes, for this process


def onnx_available() -> bool:
    """Whether onnxruntime (and onnx, for exporting) can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def pick_engine(engine: str, device: str = "cpu") -> str:
    """The concrete engine ("onnx" or "torch") for a requested one."""
    if engine not in ENGINES:
        raise CaptchaError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "auto":
        return "onnx" if device == "cpu" and onnx_available() else "torch"
    if engine == "onnx":
        if device != "cpu":
            raise CaptchaError(f"engine onnx runs on the CPU only (device {device!r} asked)")
        if not onnx_available():
            raise CaptchaError("engine onnx needs onnxruntime: pip install onnxruntime")
    return engine


class TorchEngine:
    """The CRNN in eager PyTorch."""

    name = "torch"
    lanes = 1  # torch threads are process-wide: batches run one after another

    def __init__(self, model: Any, device: str = "cpu", threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval().to(device)
        self.device = device
        self.fixed_width: int | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()


def _session(data: bytes | str, threads: int, source: str) -> Any:
    """An ONNX Runtime CPU session with every graph optimisation and `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own error types for bad files
        raise CaptchaError(f"{source}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None


class OnnxEngine:
    """An ONNX Runtime session over an ONNX model (bytes or a file).

    ``run`` uses one session with every thread (best for one small batch: a single image's latency).
    ``run_lane`` uses a second, single-threaded session that several threads call at once: the
    recurrent layer's time steps are small matrix products that threads cannot share well, so
    independent batches on independent threads (``lanes`` of them) read more images per second.
    """

    name = "onnx"

    def __init__(self, model: bytes | str | Path, threads: int | None = None, source: str = "<onnx>"):
        self.lanes = threads or os.cpu_count() or 1
        self._data = model if isinstance(model, bytes) else str(model)
        self._source = source
        self.session = _session(self._data, self.lanes, source)
        self._lane_session: Any = None
        self._lock = threading.Lock()
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        w = inp.shape[3] if len(inp.shape) == 4 else None
        self.fixed_width: int | None = w if isinstance(w, int) else None
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def _check(self, x: np.ndarray) -> None:
        if self.fixed_width is not None and x.shape[-1] != self.fixed_width:
            raise CaptchaError(f"this ONNX model takes images {self.fixed_width} pixels wide, got {x.shape[-1]}")

    def run(self, x: np.ndarray) -> np.ndarray:
        self._check(x)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def run_lane(self, x: np.ndarray) -> np.ndarray:
        """Like run, on the single-threaded session; safe to call from several threads at once."""
        if self.lanes <= 1:
            return self.run(x)
        with self._lock:
            if self._lane_session is None:
                self._lane_session = _session(self._data, 1, self._source)
        self._check(x)
        return self._lane_session.run([self.output_name], {self.input_name: x})[0]


def onnx_for(path: Path, bundle_loader: Any) -> bytes:
    """ONNX bytes for a .safetensors model file: from memory, the disk cache, or a fresh export.

    The key is the file's SHA-256 with the exporter and torch versions, so a changed file or a new
    exporter never reuses a stale graph. bundle_loader() gives the ModelBundle when an export is needed.
    """
    import torch

    from .export import EXPORT_VERSION, export_bytes

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    key = f"{digest}-e{EXPORT_VERSION}-torch{torch.__version__.split('+')[0]}"
    if key in _MEMO:
        return _MEMO[key]
    cdir = cache_dir("onnx")
    cached = cdir / f"{key}.onnx" if cdir else None
    if cached is not None and cached.is_file():
        try:
            data = cached.read_bytes()
        except OSError:
            data = b""
        if data:
            _MEMO[key] = data
            return data
    data = export_bytes(bundle_loader())
    if cached is not None:
        try:
            atomic_write(cached, lambda f: f.write(data))
        except OSError:
            pass  # a read-only cache only costs an export per process
    _MEMO[key] = data
    return data
