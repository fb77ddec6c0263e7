"""Image loading and the one preprocessing used by training, evaluation, inference and export.

Any input (path, bytes, PIL image, numpy array) in any mode (RGBA, P, L, CMYK, 16-bit) becomes a
uint8 array of shape (C, H, W) at the model's height, composited onto white. The network sees
``ink(x) = (255 - x) / 255``: white background is 0, so padding with zeros is padding with paper.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageFilter, UnidentifiedImageError

from ..errors import CaptchaError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# Pillow formats that are read (JPEG includes MPO), whatever a file's suffix says: a PNG named .jpg
# loads. Others (EPS, which Pillow hands to Ghostscript, PSD, ...) are refused, so no user bytes
# reach an outside program.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "TGA", "ICO")
# What Pillow raises on a damaged or hostile file (its plugins are not consistent about it).
PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError, struct.error,
              ZeroDivisionError, OverflowError, MemoryError)
ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

ImageFile.LOAD_TRUNCATED_IMAGES = False


GREY_MODES = ("luma", "contrast")


@dataclass
class Preprocess:
    """How an image becomes model input. Stored in every model file.

    height: rows fed to the network. width: fixed width, or None to keep the aspect ratio
    (then widths are padded per batch). channels: 1 (grey) or 3 (RGB). crop: cut the image to the
    box around its text first (``crop_to_ink``), for small text in wide blank margins. grey: how a
    colour image becomes grey (channels 1): "luma" (Pillow's L), or "contrast" (the distance from the
    background colour, stretched, so that pale coloured text on white turns dark; ``contrast_grey``).
    """

    height: int = 32
    width: int | None = 128
    channels: int = 1
    crop: bool = False
    grey: str = "luma"
    min_width: int = 16
    max_width: int = 1024
    max_pixels: int = 40_000_000
    max_bytes: int = 50_000_000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """From a model file's metadata; ValueError names a missing, mistyped or out-of-range field."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocessing must be a JSON object, not {type(d).__name__}")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known).validate()

    def validate(self) -> Preprocess:
        """Check every field's type and range (ValueError naming the field); return self."""
        for name in ("height", "channels", "min_width", "max_width", "max_pixels", "max_bytes"):
            _positive_int(name, getattr(self, name))
        if self.width is not None:
            _positive_int("width", self.width)
        if self.channels not in (1, 3):
            raise ValueError(f"preprocessing: channels must be 1 or 3, not {self.channels}")
        if self.grey not in GREY_MODES:
            raise ValueError(f"preprocessing: grey must be {' or '.join(GREY_MODES)}, not {self.grey!r}")
        if not isinstance(self.crop, bool):
            raise ValueError(f"preprocessing: crop must be true or false, not {self.crop!r}")
        return self

    def target_width(self, w: int, h: int) -> int:
        """Width after resizing an image of w x h pixels (a multiple of 4)."""
        if self.width is not None:
            return max(4, self.width // 4 * 4)
        tw = round(w * self.height / max(h, 1))
        tw = max(self.min_width, min(self.max_width, tw))
        return max(4, min((tw + 3) // 4 * 4, self.max_width // 4 * 4))


def time_steps(widths: Any) -> np.ndarray:
    """CRNN time steps (CTC frames) for input widths: the backbone pools the width by 4; at least 1.
    The one rule for training, the torch reader and the ONNX reader (which runs without torch)."""
    return np.maximum(np.asarray(widths, dtype=np.int64) // 4, 1)


def _positive_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"preprocessing: {name} must be a positive integer, not {v!r}")


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
    """Open any supported input as a PIL image (first frame), raising CaptchaError on failure.

    Limits (pre.max_bytes on encoded input, pre.max_pixels on the image's size) are checked before
    any pixel is decoded, so a decompression bomb costs a header read. The format is sniffed from
    the bytes, never from the file name.
    """
    pre = pre or Preprocess()
    name = describe(src)
    if isinstance(src, Image.Image):
        _check_pixels(src.size, pre, name)
        return src
    if isinstance(src, np.ndarray):
        im = _from_array(src, name)
        _check_pixels(im.size, pre, name)
        return im
    data = _read_bytes(src, pre, name)
    try:
        with _quiet_pil():
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            _check_pixels(im.size, pre, name)
            im.seek(0)
            im.load()
    except CaptchaError:
        raise
    except UnidentifiedImageError:
        raise CaptchaError(f"{name}: not a readable image (no supported image format)") from None
    except Image.DecompressionBombError as e:
        raise CaptchaError(f"{name}: image too large ({e})") from None
    except PIL_ERRORS as e:
        raise CaptchaError(f"{name}: corrupt or truncated image ({_one_line(e)})") from None
    return im


@contextlib.contextmanager
def _quiet_pil() -> Iterator[None]:
    """Pillow's warnings off: our own max_pixels check decides on size, and its chatter about
    damaged files is not shown (the error, if any, is)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


def _read_bytes(src: Any, pre: Preprocess, name: str) -> bytes:
    """The encoded bytes of a path or bytes-like input, within pre.max_bytes."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise CaptchaError(f"{name}: {'not a file' if path.exists() else 'no such file'}")
        size = path.stat().st_size
        if size == 0:
            raise CaptchaError(f"{name}: empty file (0 bytes)")
        if size > pre.max_bytes:
            raise CaptchaError(f"{name}: file too large ({size} bytes > {pre.max_bytes})")
        try:
            return path.read_bytes()
        except OSError as e:
            raise CaptchaError(f"{name}: cannot read file ({e.strerror or e})") from None
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise CaptchaError(f"{name}: empty input (0 bytes)")
        if len(data) > pre.max_bytes:
            raise CaptchaError(f"{name}: input too large ({len(data)} bytes > {pre.max_bytes})")
        return data
    raise CaptchaError(f"{name}: not an image (expected a path, bytes, PIL image or array)")


def _check_pixels(size: tuple[int, ...], pre: Preprocess, name: str) -> None:
    w, h = (int(x) for x in size)
    if w * h > pre.max_pixels:
        raise CaptchaError(f"{name}: image too large ({w}x{h} > {pre.max_pixels} pixels)")
    if w < 1 or h < 1:
        raise CaptchaError(f"{name}: image has no pixels ({w}x{h})")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def _from_array(a: np.ndarray, name: str) -> Image.Image:
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.size == 0:
        raise CaptchaError(f"{name}: array must be (H, W), (H, W, 3|4) or (C, H, W)")
    if a.dtype != np.uint8:
        if a.dtype.kind not in "biuf":
            raise CaptchaError(f"{name}: array must hold numbers (bool, int or float), not {a.dtype}")
        a = np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
        a = np.clip(a, 0, 255).astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[a.ndim if a.ndim == 2 else a.shape[-1]]
    return Image.fromarray(np.ascontiguousarray(a), mode=mode)


def to_mode(im: Image.Image, channels: int, name: str | None = None) -> Image.Image:
    """Composite onto white and convert to L (channels=1) or RGB (channels=3).

    A mode Pillow cannot convert raises CaptchaError naming `name` (default: a description of im).
    """
    try:
        return _to_mode(im, channels)
    except PIL_ERRORS as e:
        raise CaptchaError(f"{name or describe(im)}: cannot convert image mode {im.mode} ({_one_line(e)})") from None


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = a.max(initial=0)
        scale = 255.0 / 65535.0 if hi > 255 else 1.0
        im = Image.fromarray(np.clip(np.nan_to_num(a * scale), 0, 255).astype(np.uint8), mode="L")
    if im.mode == "LAB":
        im = _lab_to_rgb(im) if channels == 3 else im.getchannel("L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("La", "PA"):
        im = im.convert("LA" if im.mode == "La" else "RGBA")
    target = "L" if channels == 1 else "RGB"
    if im.mode in ("RGBA", "LA") and im.getchannel("A").getextrema()[0] == 255:
        return im.convert(target)  # opaque: nothing to composite onto white
    if im.mode in ("RGBA", "LA", "RGBa"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im if im.mode == target else im.convert(target)


def _lab_to_rgb(im: Image.Image) -> Image.Image:
    """CIELAB to sRGB through LittleCMS, or the lightness as grey where Pillow lacks it."""
    try:
        from PIL import ImageCms

        t = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        out = ImageCms.applyTransform(im, t)
    except Exception:  # no LittleCMS in this Pillow build (ImportError, PyCMSError, ...)
        out = None
    return out if out is not None else im.getchannel("L").convert("RGB")


INK_LEVEL = 24  # darker than white by more than this (in the palest channel) counts as ink


def ink_box(im: Image.Image, min_ink: int = 3) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) around the text of an image on white, or None when it is blank.

    Ink is any pixel darker than white by more than INK_LEVEL in some channel. Bold glyphs: a 3x3
    minimum filter removes strokes one or two pixels thin (noise lines) and the box follows what
    is left. When that loses most of the ink (a thin font), the box spans instead the columns with
    at least `min_ink` ink pixels (a thin line adds one or two per column), and their inked rows.
    """
    a = np.asarray(im)
    ink = (255 - (a.min(-1) if a.ndim == 3 else a)) > INK_LEVEL  # (H, W) bool
    thick = Image.fromarray(ink.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(3)).getbbox()
    if thick is not None:
        h, w = ink.shape  # the filter took one pixel off every side of a glyph: give it back
        left, top = max(0, thick[0] - 1), max(0, thick[1] - 1)
        right, bottom = min(w, thick[2] + 1), min(h, thick[3] + 1)
        if ink[top:bottom, left:right].sum() >= 0.5 * ink.sum():
            return left, top, right, bottom
    cols = np.flatnonzero(ink.sum(0) >= min_ink)
    if not len(cols):
        return None
    left, right = int(cols[0]), int(cols[-1]) + 1
    rows = np.flatnonzero(ink[:, left:right].sum(1) >= min_ink)
    if not len(rows):
        return None
    return left, int(rows[0]), right, int(rows[-1]) + 1


def crop_to_ink(im: Image.Image, margin: float = 0.15) -> Image.Image:
    """The image cut to its ink box plus a margin (a share of the box height); unchanged when blank."""
    box = ink_box(im)
    if box is None:
        return im
    left, top, right, bottom = box
    m = max(2, round(margin * (bottom - top)))
    return im.crop((max(0, left - m), max(0, top - m), min(im.width, right + m), min(im.height, bottom + m)))


def load_image(src: ImageInput, pre: Preprocess) -> np.ndarray:
    """Load and preprocess one image to uint8 (C, H, W) at the model's height and width.

    Every failure (unreadable, damaged, too large, an unconvertible mode) is a CaptchaError naming src.
    """
    name = describe(src)
    contrast = pre.channels == 1 and pre.grey == "contrast"
    im = to_mode(open_image(src, pre), 3 if contrast else pre.channels, name)
    if pre.crop:
        im = crop_to_ink(im)
    w, h = im.size
    tw = pre.target_width(w, h)
    try:
        if (w, h) != (tw, pre.height):
            im = im.resize((tw, pre.height), Image.BILINEAR)
        if contrast:
            im = contrast_grey(im)  # after resizing: fewer pixels to measure
        a = np.asarray(im, dtype=np.uint8)
    except PIL_ERRORS as e:
        raise CaptchaError(f"{name}: cannot resize image ({_one_line(e)})") from None
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


CONTRAST_FLOOR = 48  # a distance from the background that is stretched to full ink at most


def contrast_grey(im: Image.Image) -> Image.Image:
    """RGB -> L as the distance from the background colour (the median of the border pixels), the
    largest channel difference, stretched so that the 99th percentile is full ink: light yellow, green
    or pink text on white comes out as dark as black text would."""
    rgb = np.asarray(im, dtype=np.int16)  # (H, W, 3)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])  # (2W + 2H, 3)
    d = np.abs(rgb - np.partition(border, len(border) // 2, axis=0)[len(border) // 2])  # from the median colour
    dist = np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])  # (H, W) in 0..255
    counts = np.cumsum(np.bincount(dist.ravel(), minlength=256))
    top = max(int(np.searchsorted(counts, 0.99 * dist.size)), CONTRAST_FLOOR)  # the 99th percentile
    paper = (255.0 - np.minimum(np.arange(256) * (255.0 / top), 255.0)).astype(np.uint8)  # distance -> grey
    return Image.fromarray(paper[dist], mode="L")


def image_size(src: ImageInput) -> tuple[int, int]:
    """(width, height) of an image without decoding its pixels."""
    if isinstance(src, (str, os.PathLike)):
        try:
            with _quiet_pil(), Image.open(src, formats=IMAGE_FORMATS) as im:
                return im.size
        except Image.DecompressionBombError as e:
            raise CaptchaError(f"{src}: image too large ({e})") from None
        except PIL_ERRORS as e:
            raise CaptchaError(f"{src}: not a readable image ({_one_line(e)})") from None
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
