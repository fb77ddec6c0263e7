"""Tests for captcha_crnn.data.images: every input type, every mode, sizes and errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captcha_crnn.data.images import (
    Preprocess,
    describe,
    image_size,
    load_image,
    open_image,
    stack_padded,
    to_ink,
    to_mode,
)
from captcha_crnn.errors import CaptchaError

H, W = 4, 8  # small test images; preprocessing at the same size means no resampling
PRE1 = Preprocess(height=H, width=W, channels=1)
PRE3 = Preprocess(height=H, width=W, channels=3)


def halves() -> np.ndarray:
    """(H, W) uint8: left half black, right half white."""
    a = np.full((H, W), 255, dtype=np.uint8)
    a[:, : W // 2] = 0
    return a


EXPECTED = halves()[None]  # (1, H, W)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noisy_png(w: int = 120, h: int = 60) -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))


# ---------------------------------------------------------------- input types


def _src_str(tmp: Path):
    p = tmp / "img.png"
    Image.fromarray(halves()).save(p)
    return str(p)


def _src_path(tmp: Path):
    p = tmp / "img.png"
    Image.fromarray(halves()).save(p)
    return p


INPUTS = {
    "path-str": _src_str,
    "pathlib": _src_path,
    "bytes": lambda t: encode(Image.fromarray(halves())),
    "bytearray": lambda t: bytearray(encode(Image.fromarray(halves()))),
    "memoryview": lambda t: memoryview(encode(Image.fromarray(halves()))),
    "pil-L": lambda t: Image.fromarray(halves()),
    "pil-RGB": lambda t: Image.fromarray(halves()).convert("RGB"),
    "np-HW-u8": lambda t: halves(),
    "np-HW1-u8": lambda t: halves()[..., None],
    "np-HW3-u8": lambda t: np.stack([halves()] * 3, axis=-1),
    "np-HW4-u8": lambda t: np.dstack([halves()] * 3 + [np.full((H, W), 255, np.uint8)]),
    "np-CHW3-u8": lambda t: np.stack([halves()] * 3, axis=0),
    "np-CHW1-u8": lambda t: halves()[None],
    "np-CHW4-u8": lambda t: np.stack([halves()] * 3 + [np.full((H, W), 255, np.uint8)]),
    "np-HW-f64-unit": lambda t: halves() / 255.0,
    "np-HW3-f32-unit": lambda t: np.stack([halves()] * 3, axis=-1).astype(np.float32) / 255,
    "np-CHW3-f64-unit": lambda t: np.stack([halves()] * 3, axis=0) / 255.0,
    "np-HW-f64-0-255": lambda t: halves().astype(np.float64),
    "np-HW-bool": lambda t: halves() > 0,
}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_every_input_type_gives_the_same_pixels(kind, tmp_path):
    src = INPUTS[kind](tmp_path)
    out = load_image(src, PRE1)
    assert out.dtype == np.uint8
    assert out.shape == (1, H, W)
    np.testing.assert_array_equal(out, EXPECTED)


@pytest.mark.parametrize("kind", ["path-str", "bytes", "pil-L", "np-HW-u8", "np-CHW3-u8"])
def test_every_input_type_three_channels(kind, tmp_path):
    out = load_image(INPUTS[kind](tmp_path), PRE3)
    assert out.shape == (3, H, W) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[c], halves())


def test_float_array_in_unit_range_is_scaled_to_255():
    a = np.full((H, W), 0.5)
    out = load_image(a, PRE1)
    assert set(np.unique(out)) <= {127, 128}
    out = load_image(np.zeros((H, W), np.float32), PRE1)
    assert (out == 0).all()


def test_float_array_out_of_range_is_clipped():
    a = np.full((H, W), 300.0)
    a[:, :2] = -5.0
    out = load_image(a, PRE1)
    assert (out[0, :, :2] == 0).all()
    assert (out[0, :, 2:] == 255).all()


def test_colour_array_keeps_colour_with_three_channels():
    a = np.zeros((H, W, 3), np.uint8)
    a[..., 0] = 255  # pure red
    out = load_image(a, PRE3)
    assert (out[0] == 255).all() and (out[1] == 0).all() and (out[2] == 0).all()
    grey = load_image(a, PRE1)
    assert abs(int(grey[0, 0, 0]) - 76) <= 1  # ITU-R 601 luma of red


def test_chw_array_channels_are_moved_last():
    a = np.zeros((3, H, W), np.uint8)
    a[2] = 255  # pure blue in the last channel
    out = load_image(a, PRE3)
    assert (out[2] == 255).all() and (out[0] == 0).all() and (out[1] == 0).all()


# ---------------------------------------------------------------- modes


def test_rgba_fully_transparent_becomes_white():
    a = np.zeros((H, W, 4), np.uint8)  # black, alpha 0
    a[:, : W // 2, 3] = 255  # left half opaque black
    im = Image.fromarray(a, mode="RGBA")
    for src in (im, encode(im), a):
        out = load_image(src, PRE1)
        np.testing.assert_array_equal(out, EXPECTED)
        out3 = load_image(src, PRE3)
        assert (out3[:, :, W // 2 :] == 255).all() and (out3[:, :, : W // 2] == 0).all()


def test_rgba_half_transparent_black_is_mid_grey():
    a = np.zeros((H, W, 4), np.uint8)
    a[..., 3] = 128
    out = load_image(Image.fromarray(a, mode="RGBA"), PRE1)
    assert np.abs(out.astype(int) - 127).max() <= 1


def _palette_image(transparent: bool) -> Image.Image:
    idx = np.zeros((H, W), np.uint8)
    idx[:, : W // 2] = 1  # left: palette entry 1 (black); right: entry 0 (red)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([255, 0, 0, 0, 0, 0] + [0] * (256 * 3 - 6))
    if transparent:
        im.info["transparency"] = 0
    return im


def test_palette_with_transparency_composited_on_white():
    im = _palette_image(transparent=True)
    for src in (im, encode(im, "PNG", transparency=0), encode(im, "GIF", transparency=0)):
        out = load_image(src, PRE1)
        assert (out[0, :, : W // 2] == 0).all()
        assert (out[0, :, W // 2 :] == 255).all(), "transparent palette entry must be white"


def test_palette_without_transparency_keeps_colours():
    im = _palette_image(transparent=False)
    for src in (im, encode(im, "PNG")):
        out = load_image(src, PRE1)
        assert (out[0, :, : W // 2] == 0).all()
        assert np.abs(out[0, :, W // 2 :].astype(int) - 76).max() <= 1  # red -> luma 76


def test_la_transparent_becomes_white():
    lum = Image.fromarray(np.zeros((H, W), np.uint8))  # all black
    alpha = Image.fromarray(np.where(halves() == 0, 255, 0).astype(np.uint8))
    im = Image.merge("LA", [lum, alpha])
    assert im.mode == "LA"
    for src in (im, encode(im)):
        np.testing.assert_array_equal(load_image(src, PRE1), EXPECTED)


def test_l_and_rgb_and_bilevel_modes():
    l_im = Image.fromarray(halves())
    np.testing.assert_array_equal(load_image(l_im, PRE1), EXPECTED)
    np.testing.assert_array_equal(load_image(l_im.convert("RGB"), PRE1), EXPECTED)
    np.testing.assert_array_equal(load_image(l_im.convert("1"), PRE1), EXPECTED)
    out3 = load_image(l_im, PRE3)
    assert out3.shape == (3, H, W)


def test_cmyk_converted():
    im = Image.new("CMYK", (W, H), (0, 0, 0, 0))  # white
    im.paste((0, 0, 0, 255), (0, 0, W // 2, H))  # left half black ink
    for src in (im, encode(im, "TIFF")):
        np.testing.assert_array_equal(load_image(src, PRE1), EXPECTED)
        out3 = load_image(src, PRE3)
        assert (out3[:, :, W // 2 :] == 255).all() and (out3[:, :, : W // 2] == 0).all()


def test_sixteen_bit_grey_scaled_to_eight_bit():
    a = np.full((H, W), 65535, np.uint16)
    a[:, : W // 2] = 0
    a[0, W // 2] = 32768
    im = Image.fromarray(a)
    assert im.mode.startswith("I;16")
    data = encode(im)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # a real 16-bit PNG
    for src in (im, data):
        out = load_image(src, PRE1)
        assert out.dtype == np.uint8
        assert (out[0, :, : W // 2] == 0).all()
        assert out[0, 1, W // 2] == 255
        assert out[0, 0, W // 2] in (127, 128)


def test_to_mode_returns_requested_mode():
    for mode in ("RGBA", "LA", "L", "RGB", "CMYK", "1", "I;16", "I", "F"):
        im = Image.new(mode, (W, H))
        assert to_mode(im, 1).mode == "L"
        assert to_mode(im, 3).mode == "RGB"


@pytest.mark.parametrize("first", [0, 255])
def test_multiframe_gif_uses_first_frame(first, tmp_path):
    frames = [Image.new("L", (W, H), first), Image.new("L", (W, H), 255 - first)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(path), "n_frames", 1) == 2
    for src in (path, path.read_bytes()):
        out = load_image(src, PRE1)
        assert (out == first).all()


# ---------------------------------------------------------------- sizes


def test_fixed_width_output_shape_and_dtype():
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 100), np.uint8))
    for ch in (1, 3):
        out = load_image(im, Preprocess(height=32, width=128, channels=ch))
        assert out.shape == (ch, 32, 128)
        assert out.dtype == np.uint8
        assert out.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize(
    "size, kw, expected",
    [
        ((100, 50), {}, 64),  # aspect kept: 100 * 32 / 50
        ((90, 50), {}, 60),  # 57.6 -> 58 -> next multiple of 4
        ((33, 32), {}, 36),  # 33 -> 36
        ((10, 100), {}, 16),  # min_width
        ((10, 100), {"min_width": 40}, 40),
        ((5000, 10), {}, 1024),  # max_width
        ((5000, 10), {"max_width": 200}, 200),
    ],
)
def test_width_none_keeps_aspect(size, kw, expected):
    pre = Preprocess(height=32, width=None, **kw)
    assert pre.target_width(*size) == expected
    out = load_image(Image.new("L", size, 255), pre)
    assert out.shape == (1, 32, expected)
    assert out.shape[-1] % 4 == 0


@pytest.mark.parametrize("w, h", [(1, 1), (7, 3), (123, 45), (640, 32), (17, 999)])
def test_width_none_always_multiple_of_four_within_limits(w, h):
    pre = Preprocess(height=32, width=None, min_width=16, max_width=1024)
    tw = pre.target_width(w, h)
    assert tw % 4 == 0
    assert pre.min_width <= tw <= pre.max_width


def test_width_none_never_exceeds_max_width_not_multiple_of_four():
    pre = Preprocess(height=32, width=None, min_width=8, max_width=30)
    assert pre.target_width(1000, 32) <= 30


def test_preprocess_dict_round_trip():
    pre = Preprocess(height=48, width=None, channels=3, min_width=8, max_width=512)
    d = pre.to_dict()
    assert Preprocess.from_dict({**d, "unknown_key": 1}) == pre


# ---------------------------------------------------------------- errors


def _raises_naming(src, name: str, pre: Preprocess = PRE1) -> str:
    with pytest.raises(CaptchaError) as ei:
        load_image(src, pre)
    msg = str(ei.value)
    assert name in msg
    return msg


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    assert "empty" in _raises_naming(p, str(p))
    _raises_naming(str(p), str(p))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_truncated_file(fmt, tmp_path):
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 256, (60, 120), np.uint8)), fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 2])
    _raises_naming(p, str(p))
    _raises_naming(data[: len(data) // 2], f"<{len(data) // 2} bytes>")


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    msg = _raises_naming(p, str(p))
    assert "not a readable image" in msg


def test_missing_file(tmp_path):
    p = tmp_path / "nope" / "missing.png"
    assert "no such file" in _raises_naming(p, str(p))
    _raises_naming(str(p), str(p))


def test_folder_is_not_an_image(tmp_path):
    _raises_naming(tmp_path, str(tmp_path))


def test_image_over_max_pixels(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (20, 20), 255).save(p)
    pre = Preprocess(height=H, width=W, max_pixels=399)
    assert "too large" in _raises_naming(p, str(p), pre)
    _raises_naming(p.read_bytes(), "bytes>", pre)
    load_image(p, Preprocess(height=H, width=W, max_pixels=400))  # exactly at the limit is fine


def test_bytes_over_max_bytes(tmp_path):
    data = noisy_png()
    pre = Preprocess(height=H, width=W, max_bytes=len(data) - 1)
    assert "too large" in _raises_naming(data, f"<{len(data)} bytes>", pre)
    p = tmp_path / "heavy.png"
    p.write_bytes(data)
    _raises_naming(p, str(p), pre)
    load_image(data, Preprocess(height=H, width=W, max_bytes=len(data)))


def test_empty_bytes():
    _raises_naming(b"", "<0 bytes>")


@pytest.mark.parametrize("src", [12345, 1.5, None, [1, 2, 3], {"a": 1}, object()])
def test_unsupported_type(src):
    msg = _raises_naming(src, f"<{type(src).__name__}>")
    assert "not an image" in msg


@pytest.mark.parametrize(
    "shape", [(6, W, 2), (0, 5), (5, 0), (2, 2, 2, 2), (7,), (6, W, 5), (2, 6, W)]
)
def test_bad_array_shapes(shape):
    a = np.zeros(shape, np.uint8)
    _raises_naming(a, "array")


def test_open_image_errors_are_captcha_errors_not_pil_errors(tmp_path):
    for blob in (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b"GIF89a", b"\xff\xd8\xff", b"BM" + b"\0" * 10):
        with pytest.raises(CaptchaError):
            open_image(blob)


def test_describe_names():
    assert describe("a/b.png") == "a/b.png"
    assert describe(Path("x.png")) == "x.png"
    assert describe(b"abc") == "<3 bytes>"
    assert "(2, 3)" in describe(np.zeros((2, 3)))
    assert "PIL image L" in describe(Image.new("L", (3, 2)))


def test_image_size(tmp_path):
    p = tmp_path / "s.png"
    Image.new("RGB", (37, 11)).save(p)
    assert image_size(p) == (37, 11)
    assert image_size(str(p)) == (37, 11)
    assert image_size(p.read_bytes()) == (37, 11)
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    with pytest.raises(CaptchaError, match="bad.png"):
        image_size(bad)
    with pytest.raises(CaptchaError, match="missing.png"):
        image_size(tmp_path / "missing.png")


# ---------------------------------------------------------------- batching


def test_stack_padded_pads_with_white_and_returns_widths():
    a = np.zeros((1, H, 3), np.uint8)
    b = np.full((1, H, 5), 10, np.uint8)
    c = np.full((1, H, 1), 20, np.uint8)
    out, widths = stack_padded([a, b, c])
    assert out.shape == (3, 1, H, 5) and out.dtype == np.uint8
    assert widths.tolist() == [3, 5, 1]
    assert (out[0, :, :, :3] == 0).all() and (out[0, :, :, 3:] == 255).all()
    assert (out[1] == 10).all()
    assert (out[2, :, :, :1] == 20).all() and (out[2, :, :, 1:] == 255).all()


def test_stack_padded_three_channels():
    arrays = [np.zeros((3, H, w), np.uint8) for w in (4, 8)]
    out, widths = stack_padded(arrays)
    assert out.shape == (2, 3, H, 8)
    assert widths.tolist() == [4, 8]
    assert (out[0, :, :, 4:] == 255).all()


def test_to_ink():
    x = np.array([[[[255, 0, 51, 204]]]], np.uint8)
    ink = to_ink(x)
    assert ink.dtype == np.float32
    assert ink.shape == x.shape
    np.testing.assert_allclose(ink.ravel(), [0.0, 1.0, 0.8, 0.2], atol=1e-6)
    # padding with white is padding with zero ink
    out, _ = stack_padded([np.zeros((1, 2, 1), np.uint8), np.zeros((1, 2, 3), np.uint8)])
    assert (to_ink(out)[0, :, :, 1:] == 0).all()
