"""Fuzzing the image readers: random and mutated image bytes give a result or a CaptchaError, nothing else.

Mutations of valid PNG / JPEG / GIF (and BMP, TIFF, WebP) files: bit flips, byte overwrites,
insertions and deletions, truncation and headers spliced onto other formats' bodies. Each goes to
data.images.open_image / load_image and to Recognizer.predict with a shipped model (torch and the
default engine). Any other exception, or an input that takes seconds, fails the test.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from captcha_crnn.data.images import Preprocess, load_image, open_image
from captcha_crnn.errors import CaptchaError
from captcha_crnn.infer import Prediction, Recognizer

MODEL = "captcha_v2"
SLOW = 3.0  # seconds: no single small input may take longer to be read or refused
PRE_VAR = Preprocess(height=32, width=None)
PRE_FIX = Preprocess(height=32, width=128, channels=3)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _seeds() -> dict[str, bytes]:
    """Small valid files of each format (60x24, with some structure so the codecs do real work)."""
    im = Image.new("L", (60, 24), 255)
    ImageDraw.Draw(im).text((4, 6), "2b4c5", fill=0)
    rgb = Image.merge("RGB", (im, im.rotate(3), im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    frames = [im, im.rotate(5), im.rotate(-5)]
    return {
        "png": _encode(im, "PNG"),
        "png_rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "png_palette": _encode(rgb.convert("P"), "PNG", transparency=0),
        "apng": _encode(im, "PNG", save_all=True, append_images=frames[1:]),
        "jpeg": _encode(rgb, "JPEG", quality=80),
        "jpeg_progressive": _encode(rgb, "JPEG", progressive=True),
        "jpeg_cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "gif": _encode(im, "GIF"),
        "gif_anim": _encode(im, "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0),
        "bmp": _encode(rgb, "BMP"),
        "tiff": _encode(rgb, "TIFF", compression="tiff_deflate"),
        "webp": _encode(rgb, "WEBP"),
    }


SEEDS = _seeds()
NAMES = sorted(SEEDS)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid seed file with one to four mutations applied."""
    data = bytearray(SEEDS[draw(st.sampled_from(NAMES))])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice", "header"]))
        k = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[k] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[k] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[k:k] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[k : k + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[k:]
        elif op == "splice":  # this file's start, another file's rest
            other = SEEDS[draw(st.sampled_from(NAMES))]
            data = data[:k] + other[draw(st.integers(0, len(other) - 1)) :]
        else:  # another format's header on this body
            other = SEEDS[draw(st.sampled_from(NAMES))]
            n = draw(st.integers(2, 64))
            data = bytearray(other[:n]) + data[n:]
    return bytes(data)


any_bytes = st.binary(min_size=0, max_size=512) | mutated() | st.sampled_from(
    [b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff\xe0", b"BM", b"II*\0", b"MM\0*", b"RIFF\0\0\0\0WEBP"]
)


def read_or_refuse(fn, *args):
    """fn(*args) or the CaptchaError it raised; anything else propagates and fails the test."""
    t = time.perf_counter()
    try:
        out = fn(*args)
    except CaptchaError as e:
        assert str(e) and "\n" not in str(e)
        out = e
    event("refused" if isinstance(out, CaptchaError) else "read")  # see --hypothesis-show-statistics
    assert time.perf_counter() - t < SLOW, "an input took seconds: a hang in waiting"
    return out


def test_seeds_are_valid() -> None:
    for name, data in SEEDS.items():
        assert load_image(data, PRE_VAR).shape[:2] == (1, 32), name


@settings(max_examples=1000, deadline=None, database=None)
@given(data=any_bytes)
def test_load_image_gives_pixels_or_a_captcha_error(data: bytes) -> None:
    for pre in (PRE_VAR, PRE_FIX):
        out = read_or_refuse(load_image, data, pre)
        if not isinstance(out, CaptchaError):
            assert out.dtype == np.uint8 and out.ndim == 3
            assert out.shape[:2] == (pre.channels, pre.height)
            assert pre.min_width <= out.shape[2] <= pre.max_width if pre.width is None else out.shape[2] == 128


@settings(max_examples=600, deadline=None, database=None)
@given(data=mutated())
def test_open_image_gives_an_image_or_a_captcha_error(data: bytes) -> None:
    out = read_or_refuse(open_image, data)
    if not isinstance(out, CaptchaError):
        assert isinstance(out, Image.Image) and out.size[0] * out.size[1] <= PRE_VAR.max_pixels


@settings(max_examples=60, deadline=None, database=None)
@given(data=mutated())
def test_files_on_disk_too(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    p = tmp_path_factory.mktemp("fuzz") / "img.png"
    p.write_bytes(data)
    out = read_or_refuse(load_image, p, PRE_VAR)
    if isinstance(out, CaptchaError):
        assert str(p) in str(out)


@pytest.fixture(scope="module")
def readers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Recognizer]:
    """The shipped model in torch and in the default engine (ONNX exports cached in the session's folder)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CAPTCHA_CRNN_CACHE", str(tmp_path_factory.getbasetemp() / "onnx-cache"))
    try:
        out = {"torch": Recognizer.load(MODEL, engine="torch", threads=1), "default": Recognizer.load(MODEL, threads=1)}
    finally:
        mp.undo()
    return out


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=any_bytes)
def test_recognizer_reads_or_refuses_one_image(readers: dict[str, Recognizer], data: bytes) -> None:
    for rec in readers.values():
        out = read_or_refuse(rec.predict, data)
        if not isinstance(out, CaptchaError):
            assert isinstance(out, Prediction) and set(out.text) <= set(rec.alphabet.chars)
            assert 0.0 <= out.confidence <= 1.0


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(mutated(), min_size=1, max_size=10), beam=st.sampled_from([1, 4]))
def test_recognizer_reads_or_refuses_a_batch(readers: dict[str, Recognizer], batch: list[bytes], beam: int) -> None:
    for rec in readers.values():
        out = read_or_refuse(rec.predict, batch, beam)
        if not isinstance(out, CaptchaError):
            assert len(out) == len(batch) and all(isinstance(p, Prediction) for p in out)
        good = rec.prepare(batch, errors="return")
        assert len(good) == len(batch)
        assert all(isinstance(g, (np.ndarray, CaptchaError)) for g in good)
