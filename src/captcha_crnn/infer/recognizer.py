"""The public reading API: ``Recognizer.load(path_or_name, engine="auto").predict(images)``.

A Recognizer is a ``Reader`` (reader.py): ``predict``, ``prepare`` + ``read_arrays``, ``alphabet``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.dataset import width_batches
from ..data.images import ImageInput, Preprocess, describe
from ..decode.ctc import check_options, decode_batch
from ..errors import CaptchaError
from ..model.format import check_onnx_metadata, parse_metadata
from ..model.run import run_batches
from ..model.zoo import resolve_model
from .batching import PARALLEL_MIN, default_threads, fill_in, load_many, stack_batch
from .engines import OnnxEngine, TorchEngine, onnx_for, pick_engine

if TYPE_CHECKING:  # model/ imports torch, which reading an .onnx file does without
    from ..model.modelfile import ModelBundle


@dataclass
class Prediction:
    """The text read from one image, its probability and each character's."""

    text: str
    confidence: float
    char_confidences: list[float] = field(default_factory=list)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recognizer:
    """Reads captchas with a trained CRNN. Load with ``Recognizer.load(path)``.

    The network runs on an engine (engines.py): ONNX Runtime by default when it is installed,
    else eager PyTorch; both give the same text. ``Recognizer(bundle)`` runs a bundle in torch.
    """

    def __init__(
        self,
        bundle: ModelBundle | None = None,
        device: str = "cpu",
        engine: TorchEngine | OnnxEngine | None = None,
        meta: dict[str, Any] | None = None,
        path: Path | None = None,
        threads: int | None = None,
    ):
        self._bundle = bundle
        self.device = device
        self.path = path
        self.threads = threads or default_threads()
        if bundle is not None:
            self.alphabet, self.preprocess, self._info = bundle.alphabet, bundle.preprocess, bundle.info
        elif meta is not None:
            spec = parse_metadata(meta, str(path or "<model>"))
            self.alphabet, self.preprocess, self._info = spec.alphabet, spec.preprocess, spec.info
        else:
            raise ValueError("Recognizer needs a bundle or model metadata")
        if engine is None:
            if bundle is None:
                raise ValueError("Recognizer without a bundle needs an engine")
            engine = TorchEngine(bundle.model, device, threads)
        self.engine = engine
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def load(
        cls, model: str | Path, device: str = "cpu", engine: str = "auto", threads: int | None = None
    ) -> Recognizer:
        """Load a model file (.safetensors or .onnx), a run folder, or a shipped model by name.

        engine: "auto" (onnx when onnxruntime is importable and device is cpu, else torch), "onnx"
        (a .safetensors model is exported to ONNX on load, cached by file hash) or "torch".
        threads: threads for the engine and for decoding images (default: every core).
        """
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise CaptchaError(f"threads must be a whole number of at least 1, got {threads!r}")
        path = resolve_model(model)
        kind = pick_engine(engine, device)
        if path.suffix.lower() == ".onnx":
            if kind != "onnx":
                why = "needs onnxruntime" if engine == "auto" else f"runs with engine onnx, not {engine}"
                raise CaptchaError(f"{path}: an ONNX model {why}")
            eng = OnnxEngine(path, threads, source=str(path))
            meta, _ = check_onnx_metadata(eng.metadata, str(path))
            rec = cls(None, device, eng, meta, path, threads)
            _check_onnx_input(eng, rec.preprocess, str(path))
            return rec
        from ..model.modelfile import load_bundle, read_metadata

        if kind == "torch":
            return cls(load_bundle(path, device=device), device, None, None, path, threads)
        meta = read_metadata(path)
        eng = OnnxEngine(onnx_for(path, lambda: load_bundle(path)), threads, source=str(path))
        return cls(None, device, eng, meta, path, threads)

    @property
    def bundle(self) -> ModelBundle:
        """The torch model bundle (loaded on first use when the engine is onnx)."""
        if self._bundle is None:
            if self.path is None or self.path.suffix.lower() == ".onnx":
                raise CaptchaError(f"{self.path}: an ONNX model has no torch weights")
            from ..model.modelfile import load_bundle

            self._bundle = load_bundle(self.path, device=self.device)
        return self._bundle

    @property
    def info(self) -> dict[str, Any]:
        return self._info

    @property
    def engine_name(self) -> str:
        return self.engine.name

    def _allowed(self, charset: str | None) -> list[int] | None:
        if charset is None:
            return None
        if not charset:
            raise CaptchaError("charset is empty: give the characters to read, or no charset")
        unknown = self.alphabet.unknown(charset)
        if unknown:
            raise CaptchaError(f"charset has characters the model does not know: {''.join(sorted(unknown))}")
        return [self.alphabet.index[c] for c in set(charset)]

    def _get_pool(self) -> ThreadPoolExecutor | None:
        if self.threads <= 1:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="captcha-crnn-read")
        return self._pool

    def close(self) -> None:
        """Stop the image-decoding threads (they are also stopped at exit)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def prepare(self, images: Sequence[ImageInput], errors: str = "raise") -> list[np.ndarray | CaptchaError]:
        """Decode and preprocess images in parallel to the uint8 (C, H, W) arrays ``read_arrays`` takes;
        errors="return" puts an unreadable image's CaptchaError in its place (else the first one raises)."""
        return load_many(images, self.preprocess, self._get_pool(), self.threads, errors)

    def _read_batches(
        self, arrays: Sequence[np.ndarray], run: Callable[[np.ndarray], np.ndarray], batch_size: int,
        beam: int, length: int | None, allowed: list[int] | None,
    ) -> list[Prediction]:
        """Read arrays on `run`, one width-grouped batch of at most batch_size after another."""
        decode: Callable[[list[int]], str] = self.alphabet.decode
        out: list[Prediction | None] = [None] * len(arrays)

        def load(idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
            return stack_batch([arrays[i] for i in idx])  # (B, C, H, W) float32 ink, widths

        for idx, lp, lens in run_batches([a.shape[-1] for a in arrays], batch_size, load, run):
            for i, d in zip(idx, decode_batch(lp, lens, beam=beam, length=length, allowed=allowed)):
                out[i] = Prediction(decode(d.indices), d.confidence, d.char_confidences)
        return out  # type: ignore[return-value]

    def _lanes_pool(self, n: int) -> ThreadPoolExecutor | None:
        """The thread pool when n images are worth spreading over the engine's lanes, else None."""
        return self._get_pool() if getattr(self.engine, "lanes", 1) > 1 and n >= 2 * PARALLEL_MIN else None

    def read_arrays(
        self,
        arrays: Sequence[np.ndarray],
        beam: int = 1,
        length: int | None = None,
        charset: str | None = None,
        batch_size: int = 128,
    ) -> list[Prediction]:
        """Read already-preprocessed uint8 (C, H, W) arrays (``prepare``), batch_size at a time.

        beam: beam width (1 = greedy); length: exactly this many characters; charset: only these.
        """
        if not len(arrays):
            return []
        if batch_size < 1:
            raise CaptchaError(f"batch size must be at least 1, got {batch_size}")
        allowed = self._allowed(charset)
        pool = self._lanes_pool(len(arrays))
        if pool is None:
            return self._read_batches(arrays, self.engine.run, batch_size, beam, length, allowed)
        lanes = self.engine.lanes
        bs = min(batch_size, -(-len(arrays) // lanes))  # every lane gets a batch: no thread idles
        out: list[Prediction | None] = [None] * len(arrays)

        def read(idx: list[int]) -> None:
            got = self._read_batches([arrays[i] for i in idx], self.engine.run_lane, bs, beam, length, allowed)
            for i, p in zip(idx, got):
                out[i] = p

        list(pool.map(read, width_batches([a.shape[-1] for a in arrays], bs)))
        return out  # type: ignore[return-value]

    def _read_images(
        self,
        images: Sequence[ImageInput],
        beam: int = 1,
        length: int | None = None,
        charset: str | None = None,
        batch_size: int = 128,
        errors: str = "raise",
    ) -> list[Prediction | CaptchaError]:
        """Decode and read images in order; errors="return" puts each unreadable image's error in its place.

        A fixed-width model reads in chunks, each decoded and then read on one thread: while one
        thread decodes (Python, holding the GIL) another runs the network (which releases it), so
        both cores stay busy. A variable-width model decodes every image first, so that batches
        group images of similar width.
        """
        if batch_size < 1:
            raise CaptchaError(f"batch size must be at least 1, got {batch_size}")
        check_options(beam, length)
        allowed = self._allowed(charset)  # a bad charset fails before any image is decoded
        pool = self._lanes_pool(len(images)) if self.preprocess.width is not None else None
        if pool is None:
            return fill_in(self.prepare(images, errors),
                           lambda ok: self.read_arrays(ok, beam, length, charset, batch_size))

        def chunk(part: Sequence[ImageInput]) -> list[Prediction | CaptchaError]:
            """This thread decodes its chunk, then runs the network on its own lane."""
            return fill_in(load_many(part, self.preprocess, None, 1, errors),
                           lambda ok: self._read_batches(ok, self.engine.run_lane, batch_size, beam, length, allowed))

        step = max(PARALLEL_MIN, min(batch_size, -(-len(images) // (4 * self.engine.lanes))))
        out: list[Prediction | CaptchaError] = []
        for r in pool.map(chunk, [images[i : i + step] for i in range(0, len(images), step)]):
            out.extend(r)
        return out

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        beam: int = 1,
        length: int | None = None,
        charset: str | None = None,
        batch_size: int = 128,
        errors: str = "raise",
    ) -> Any:
        """Read one image or a list of them (paths, bytes, PIL images, numpy arrays).

        A list gives a list of Predictions in the same order; a single image gives one. Images are
        decoded on a thread pool and read batch_size at a time.
        beam: beam width (1 = greedy); length: exactly this many characters; charset: only these.
        errors: "raise" (the first unreadable image raises CaptchaError) or "return" (its
        CaptchaError takes its place in the list).
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        preds: list[Prediction | CaptchaError] = []
        step = max(1, batch_size) * 8  # images decoded at once: batches of similar widths, bounded memory
        for s in range(0, max(len(items), 1), step):  # one call at least: an empty list still checks charset
            part = items[s : s + step]
            got = self._read_images(part, beam, length, charset, batch_size, errors)
            for p, src in zip(got, part):
                if isinstance(p, Prediction):
                    p.source = describe(src)
            preds.extend(got)
        return preds[0] if single else preds


def _check_onnx_input(eng: OnnxEngine, pre: Preprocess, source: str) -> None:
    """CaptchaError unless the graph takes (B, channels, height, W) input, as its metadata says."""
    shape = list(eng.session.get_inputs()[0].shape)
    want = (pre.channels, pre.height)
    if len(shape) != 4 or any(isinstance(d, int) and d != w for d, w in zip(shape[1:3], want)):
        raise CaptchaError(f"{source}: the ONNX graph takes input {shape}, its metadata says "
                           f"{pre.channels} channel(s) of height {pre.height}")
