"""Bad images: empty, truncated, not images, wrong suffixes, bombs, odd sizes, frames, modes and arrays."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from bad_input import (
    MODEL,
    PRE,
    captcha,
    encode,
    own_cache,  # noqa: F401 (autouse: ONNX exports go to the session's folder)
    raises_naming,
    run_cli,
)
from PIL import Image

from captcha_crnn.data.images import Preprocess, image_size, load_image, open_image
from captcha_crnn.infer import Recognizer

# ---------------------------------------------------------------- helpers


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w x h grey pixels and holds a few bytes of them: what a bomb's header reads."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_16bit_rgb(w: int = 8, h: int = 4) -> bytes:
    """A real 16-bit-per-channel RGB PNG (Pillow cannot write one): left half black, right half white."""
    row = b"\0" + (b"\0" * 6) * (w // 2) + (b"\xff" * 6) * (w - w // 2)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(row * h))
            + png_chunk(b"IEND", b""))




# ---------------------------------------------------------------- images: empty, truncated, not images


def test_zero_byte_file_through_every_entry_point(tmp_path: Path, capsys) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    raises_naming(load_image, p, PRE, needles=(str(p), "empty"))
    raises_naming(open_image, str(p), needles=(str(p), "empty"))
    raises_naming(Recognizer.load(MODEL, engine="torch", threads=1).predict, p, needles=(str(p),))
    code, out, err = run_cli(["predict", MODEL, p, "--engine", "torch", "--threads", "1"], capsys)
    assert code == 1 and out == "" and "Traceback" not in err
    assert f"error: {p}: empty file" in err


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_images_of_every_format(fmt: str, keep: float, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 256, (40, 90), np.uint8)), fmt)
    cut = data[: int(len(data) * keep)]
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(cut)
    raises_naming(load_image, p, PRE, needles=(str(p),))
    raises_naming(load_image, cut, PRE, needles=(f"<{len(cut)} bytes>",))


@pytest.mark.parametrize(
    "blob",
    [
        b"%PDF-1.4\n1 0 obj\n<< >>\nendobj\n",
        b"PK\x03\x04" + b"\0" * 40,
        b"\x7fELF\x02\x01\x01" + b"\0" * 60,
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",  # never handed to Ghostscript
        b"8BPS\0\x01" + b"\0" * 40,  # a PSD header: not a format we read
        "caf\u00e9 na\u00efve text\n".encode(),
        b"\x00" * 100,
    ],
)
def test_non_image_files_are_one_line_errors(blob: bytes, tmp_path: Path) -> None:
    p = tmp_path / "thing.png"
    p.write_bytes(blob)
    raises_naming(load_image, p, PRE, needles=(str(p), "not a readable image"))
    raises_naming(load_image, blob, PRE, needles=("bytes>",))


def test_eps_is_refused_even_where_pillow_reads_it(tmp_path: Path) -> None:
    eps = encode(Image.new("RGB", (8, 8), "white"), "EPS") if _can_write("EPS") else None
    if eps is None:
        pytest.skip("this Pillow cannot write EPS")
    raises_naming(load_image, eps, PRE, needles=("not a readable image",))


def _can_write(fmt: str) -> bool:
    try:
        encode(Image.new("RGB", (2, 2)), fmt)
    except (OSError, KeyError, ValueError):
        return False
    return True


def test_folder_and_special_paths_are_not_images(tmp_path: Path) -> None:
    raises_naming(load_image, tmp_path, PRE, needles=(str(tmp_path), "not a file"))
    raises_naming(load_image, tmp_path / "missing.png", PRE, needles=("missing.png", "no such file"))


# ---------------------------------------------------------------- images: suffixes lie, the bytes decide


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".jpg"), ("JPEG", ".png"), ("GIF", ".bmp"), ("BMP", ".gif"),
                                         ("PNG", ".txt"), ("TIFF", ".webp"), ("PNG", "")])
def test_wrongly_suffixed_images_still_load(fmt: str, suffix: str, tmp_path: Path) -> None:
    im = captcha()
    p = tmp_path / f"img{suffix}"
    p.write_bytes(encode(im, fmt))
    out = load_image(p, PRE)
    assert out.shape == (1, 32, PRE.target_width(200, 50)) and out.dtype == np.uint8
    assert out.min() < 100 < 250 <= out.max()  # text on paper survived


def test_text_file_named_like_an_image_is_an_error(tmp_path: Path) -> None:
    for suffix in (".png", ".jpg", ".gif"):
        p = tmp_path / f"notes{suffix}"
        p.write_text("not an image\n")
        raises_naming(load_image, p, PRE, needles=(str(p), "not a readable image"))


def test_predict_reads_a_png_named_jpg_and_reports_a_text_named_png(tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(encode(captcha(), "PNG"))
    bad = tmp_path / "bad.png"
    bad.write_text("hello")
    code, out, err = run_cli(["predict", MODEL, good, bad, "--engine", "torch", "--threads", "1"], capsys)
    assert code == 1 and "Traceback" not in err
    assert out.startswith(f"{good}\t") and len(out.strip().splitlines()) == 1
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [f"error: {bad}: not a readable image "
                                                                          "(no supported image format)"]


# ---------------------------------------------------------------- images: bombs and huge dimensions


def test_decompression_bomb_header_is_refused_before_decoding() -> None:
    bomb = png_header_only(60_000, 60_000)  # 3.6 gigapixels claimed (beyond Pillow's own bomb limit)
    t = time.perf_counter()
    raises_naming(load_image, bomb, PRE, needles=("too large",))
    raises_naming(load_image, png_header_only(10_000, 5_000), PRE, needles=("too large", "10000x5000"))
    assert time.perf_counter() - t < 1.0


def test_real_compressed_bomb_respects_configured_max_pixels(tmp_path: Path) -> None:
    data = encode(Image.new("L", (3000, 3000), 255))  # 9 megapixels in a few kilobytes
    assert len(data) < 50_000
    small = Preprocess(height=32, width=None, max_pixels=1_000_000)
    raises_naming(load_image, data, small, needles=("too large", "3000x3000", "1000000"))
    p = tmp_path / "bomb.png"
    p.write_bytes(data)
    raises_naming(load_image, p, small, needles=(str(p), "too large"))
    assert load_image(data, PRE).shape[:2] == (1, 32)  # the default limit (40 megapixels) lets it through


def test_max_bytes_is_configurable(tmp_path: Path) -> None:
    data = encode(captcha())
    tight = Preprocess(height=32, width=None, max_bytes=len(data) - 1)
    raises_naming(load_image, data, tight, needles=("too large", str(len(data))))
    p = tmp_path / "heavy.png"
    p.write_bytes(data)
    raises_naming(load_image, p, tight, needles=(str(p), "file too large"))
    load_image(p, Preprocess(height=32, width=None, max_bytes=len(data)))


def test_pixel_limit_applies_to_pil_images_and_arrays_too() -> None:
    small = Preprocess(height=32, width=None, max_pixels=999)
    raises_naming(load_image, Image.new("L", (100, 10)), small, needles=("too large",))
    raises_naming(load_image, np.zeros((10, 100), np.uint8), small, needles=("too large",))
    raises_naming(load_image, np.zeros((3, 10, 100), np.uint8), small, needles=("too large",))


def test_image_size_of_a_bomb_is_a_captcha_error(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(60_000, 60_000))  # over Pillow's DecompressionBombError limit
    raises_naming(image_size, p, needles=(str(p), "too large"))


@pytest.mark.parametrize("size", [(40_000, 1), (1, 40_000), (20_000, 3), (3, 5_000)])
def test_extreme_aspect_ratios_give_bounded_arrays(size: tuple[int, int]) -> None:
    data = encode(Image.new("L", size, 0))
    for pre in (PRE, Preprocess(height=32, width=128)):
        out = load_image(data, pre)
        assert out.shape[1] == 32 and pre.min_width <= out.shape[2] <= pre.max_width


def test_image_without_pixels() -> None:
    raises_naming(load_image, Image.new("L", (0, 0)), PRE, needles=("no pixels",))


# ---------------------------------------------------------------- images: frames, bit depths, colour spaces


def test_animated_png_and_multipage_tiff_use_the_first_frame(tmp_path: Path) -> None:
    black, white, grey = (Image.new("L", (16, 8), v) for v in (0, 255, 128))
    pre = Preprocess(height=8, width=16)
    for fmt in ("PNG", "TIFF", "GIF", "WEBP"):
        kw = {"lossless": True} if fmt == "WEBP" else {}
        data = encode(black, fmt, save_all=True, append_images=[white, grey], **kw)
        assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3, fmt
        assert (load_image(data, pre) == 0).all(), fmt
        p = tmp_path / f"anim.{fmt.lower()}"
        p.write_bytes(data)
        assert (load_image(p, pre) == 0).all(), fmt


def test_sixteen_bit_rgb_png() -> None:
    data = png_16bit_rgb()
    out = load_image(data, Preprocess(height=4, width=8))
    assert (out[0, :, :4] == 0).all() and (out[0, :, 4:] == 255).all()
    out3 = load_image(data, Preprocess(height=4, width=8, channels=3))
    assert out3.shape == (3, 4, 8) and (out3[:, :, 4:] == 255).all()


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_files(fmt: str) -> None:
    im = Image.new("CMYK", (16, 8), (0, 0, 0, 0))
    im.paste((0, 0, 0, 255), (0, 0, 8, 8))
    out = load_image(encode(im, fmt), Preprocess(height=8, width=16))
    assert out[0, :, :6].max() < 40 and out[0, :, 10:].min() > 215  # ink left, paper right


@pytest.mark.parametrize("mode", ["LAB", "La", "PA", "RGBa", "I", "F", "I;16B", "HSV", "YCbCr", "1"])
@pytest.mark.parametrize("channels", [1, 3])
def test_unusual_modes_convert_or_fail_cleanly(mode: str, channels: int) -> None:
    im = Image.new(mode, (16, 8))
    out = load_image(im, Preprocess(height=8, width=16, channels=channels))
    assert out.shape == (channels, 8, 16) and out.dtype == np.uint8


def test_lab_tiff_file_loads() -> None:
    lab = Image.new("LAB", (16, 8), (255, 128, 128))  # L = 100%: white
    lab.paste((0, 128, 128), (0, 0, 8, 8))  # L = 0: black
    data = encode(lab, "TIFF")
    for ch in (1, 3):
        out = load_image(data, Preprocess(height=8, width=16, channels=ch))
        assert out[:, :, :8].max() < 30 and out[:, :, 8:].min() > 225


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint16, bool])
def test_arrays_with_nan_inf_and_odd_dtypes(dtype) -> None:
    a = np.zeros((8, 16), dtype=np.float64)
    a[:, 8:] = 1.0
    if np.issubdtype(dtype, np.floating):
        a[0, 0], a[0, 1], a[0, 2] = np.nan, np.inf, -np.inf
    out = load_image(a.astype(dtype), Preprocess(height=8, width=16))
    assert out.dtype == np.uint8 and out.shape == (1, 8, 16)


@pytest.mark.parametrize("a", [np.array([["a", "b"]]), np.zeros((4, 4), dtype=complex), np.empty((4, 4), object)])
def test_arrays_of_non_numbers_are_errors(a: np.ndarray) -> None:
    raises_naming(load_image, a, PRE, needles=("array",))
