"""Image loading and the one preprocessing used by training, evaluation, inference and export.

Any input (path, bytes, PIL image, numpy array) in any mode (RGBA, P, L, CMYK, 16-bit) becomes a
uint8 array of shape (C, H, W) at the model's height, composited onto white. The network sees
``ink(x) = (255 - x) / 255``: white background is 0, so padding with zeros is padding with paper.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import CaptchaError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class Preprocess:
    """How an image becomes model input. Stored in every model file.

    height: rows fed to the network. width: fixed width, or None to keep the aspect ratio
    (then widths are padded per batch). channels: 1 (grey) or 3 (RGB).
    """

    height: int = 32
    width: int | None = 128
    channels: int = 1
    min_width: int = 16
    max_width: int = 1024
    max_pixels: int = 40_000_000
    max_bytes: int = 50_000_000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def target_width(self, w: int, h: int) -> int:
        """Width after resizing an image of w x h pixels (a multiple of 4)."""
        if self.width is not None:
            return max(4, self.width // 4 * 4)
        tw = round(w * self.height / max(h, 1))
        tw = max(self.min_width, min(self.max_width, tw))
        return max(4, min((tw + 3) // 4 * 4, self.max_width // 4 * 4))


def describe(src: Any) -> str:
    """A short name for an input, used in error messages."""
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    if isinstance(src, np.ndarray):
        return f"<array {src.shape} {src.dtype}>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.mode} {src.size}>"
    return f"<{type(src).__name__}>"


def open_image(src: ImageInput, pre: Preprocess | None = None) -> Image.Image:
    """Open any supported input as a PIL image (first frame), raising CaptchaError on failure."""
    pre = pre or Preprocess()
    name = describe(src)
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        return _from_array(src, name)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise CaptchaError(f"{name}: no such file")
        size = path.stat().st_size
        if size == 0:
            raise CaptchaError(f"{name}: empty file (0 bytes)")
        if size > pre.max_bytes:
            raise CaptchaError(f"{name}: file too large ({size} bytes > {pre.max_bytes})")
        data = path.read_bytes()
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise CaptchaError(f"{name}: empty input (0 bytes)")
        if len(data) > pre.max_bytes:
            raise CaptchaError(f"{name}: input too large ({len(data)} bytes > {pre.max_bytes})")
    else:
        raise CaptchaError(f"{name}: not an image (expected a path, bytes, PIL image or array)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > pre.max_pixels:
                raise CaptchaError(f"{name}: image too large ({w}x{h} > {pre.max_pixels} pixels)")
            im.seek(0)
            im.load()
    except CaptchaError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CaptchaError(f"{name}: not a readable image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise CaptchaError(f"{name}: corrupt or truncated image ({e})") from None
    return im


def _from_array(a: np.ndarray, name: str) -> Image.Image:
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.size == 0:
        raise CaptchaError(f"{name}: array must be (H, W), (H, W, 3|4) or (C, H, W)")
    if a.dtype != np.uint8:
        a = np.asarray(a, dtype=np.float64)
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
        a = np.clip(a, 0, 255).astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[a.ndim if a.ndim == 2 else a.shape[-1]]
    return Image.fromarray(np.ascontiguousarray(a), mode=mode)


def to_mode(im: Image.Image, channels: int) -> Image.Image:
    """Composite onto white and convert to L (channels=1) or RGB (channels=3)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = a.max(initial=0)
        scale = 255.0 / 65535.0 if hi > 255 else 1.0
        im = Image.fromarray(np.clip(a * scale, 0, 255).astype(np.uint8), mode="L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    target = "L" if channels == 1 else "RGB"
    return im if im.mode == target else im.convert(target)


def load_image(src: ImageInput, pre: Preprocess) -> np.ndarray:
    """Load and preprocess one image to uint8 (C, H, W) at the model's height and width."""
    im = to_mode(open_image(src, pre), pre.channels)
    w, h = im.size
    tw = pre.target_width(w, h)
    if (w, h) != (tw, pre.height):
        im = im.resize((tw, pre.height), Image.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def image_size(src: ImageInput) -> tuple[int, int]:
    """(width, height) of an image without decoding its pixels."""
    if isinstance(src, (str, os.PathLike)):
        try:
            with Image.open(src) as im:
                return im.size
        except (OSError, ValueError, SyntaxError) as e:
            raise CaptchaError(f"{src}: not a readable image ({e})") from None
    return open_image(src).size


def stack_padded(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack uint8 (C, H, W_i) arrays into (B, C, H, W_max), padding with white; return widths."""
    widths = np.array([a.shape[-1] for a in arrays], dtype=np.int64)
    c, h = arrays[0].shape[:2]
    out = np.full((len(arrays), c, h, int(widths.max())), 255, dtype=np.uint8)
    for i, a in enumerate(arrays):
        out[i, :, :, : a.shape[-1]] = a
    return out, widths


def to_ink(batch_u8: np.ndarray) -> np.ndarray:
    """uint8 (B, C, H, W) pixels -> float32 ink in [0, 1] (white = 0). The network's input."""
    return (255.0 - batch_u8.astype(np.float32)) * (1.0 / 255.0)
