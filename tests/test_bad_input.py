"""Every bad input a user can give: a one-line CaptchaError naming the file, or a counted, reported skip.

Images (empty, truncated, not images, wrong suffix, bombs, odd sizes and modes), labels and CSV files
(characters outside the alphabet, empty labels, duplicates, missing files, empty folders) and model
files (truncated, tampered, foreign formats), through the Python API and the command line.
"""

from __future__ import annotations

import io
import json
import random
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from captcha_crnn.cli import main
from captcha_crnn.data.images import Preprocess, image_size, load_image, open_image
from captcha_crnn.data.labels import LabelRule, Sample, read_csv, read_folder, read_samples
from captcha_crnn.errors import CaptchaError
from captcha_crnn.infer import Recognizer
from captcha_crnn.model.crnn import PRESETS
from captcha_crnn.model.modelfile import META_KEY, load_bundle, read_metadata
from captcha_crnn.model.zoo import zoo_path

PRE = Preprocess(height=32, width=None)
MODEL = "captcha_v2"  # a shipped model: 200x50 grey captchas, alphabet below
ALPHABET = "2345678bcdefgmnpwxy"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX exports of model files cached in the test session's folder, not the user's cache."""
    monkeypatch.setenv("CAPTCHA_CRNN_CACHE", str(tmp_path_factory.getbasetemp() / "onnx-cache"))


# ---------------------------------------------------------------- helpers


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def captcha(text: str = "2b4c5", size: tuple[int, int] = (200, 50)) -> Image.Image:
    """A plain dark-text-on-white image in captcha_v2's size."""
    im = Image.new("L", size, 255)
    ImageDraw.Draw(im).text((20, 15), text, fill=0)
    return im


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


def raises_naming(fn, *args, needles: tuple[str, ...] = (), **kw) -> str:
    """Call fn; it must raise a one-line CaptchaError containing every needle. Returns the message."""
    with pytest.raises(CaptchaError) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_cli_error(code: int, err: str, *needles: str) -> None:
    """Exit status 2 and exactly one `captcha-crnn: error: ...` line on stderr holding every needle."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("captcha-crnn: error")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


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


# ---------------------------------------------------------------- labels and CSV files


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        captcha(Path(n).stem[:5]).save(folder / n, "PNG")


def test_csv_empty_labels_and_file_names_are_skipped_and_counted(tmp_path: Path, capsys) -> None:
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    p = tmp_path / "labels.csv"
    p.write_text("filename,label\na.png,2b4\nb.png,\n,55\nc.png,77\n")
    samples = read_csv(p)
    assert [s.label for s in samples] == ["2b4", "77"]
    err = capsys.readouterr().err
    assert f"warning: {p}: skipped 2 rows with an empty file name or label (line 3, ...)" in err


def test_csv_of_only_empty_labels_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("filename,label\na.png,\nb.png,\n")
    raises_naming(read_csv, p, needles=(str(p), "no usable rows"))


@pytest.mark.parametrize("second", ["a.png", "./a.png", "sub/../a.png"])
def test_csv_duplicate_file_names_are_an_error_naming_both_lines(second: str, tmp_path: Path) -> None:
    p = tmp_path / "dup.csv"
    p.write_text(f"filename,label\na.png,2b4\nb.png,5\n{second},77\n")
    raises_naming(read_csv, p, needles=(str(p), "line 4", "duplicate file name", "first on line 2"))


def test_folder_files_without_a_label_are_counted(tmp_path: Path, capsys) -> None:
    write_images(tmp_path, ["2b4-0.png", "-1.png", "-2.png"])
    samples = read_folder(tmp_path, rule=LabelRule(sep="-"))
    assert [s.label for s in samples] == ["2b4"]
    assert "skipped 2 of 3 images whose name gave no label" in capsys.readouterr().err


def test_folder_with_no_images(tmp_path: Path, capsys) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    raises_naming(read_samples, tmp_path, needles=(str(tmp_path), "no images found"))
    for cmd in (["eval", MODEL, tmp_path], ["train", tmp_path, "--out", tmp_path / "o"]):
        code, _, err = run_cli(cmd, capsys)
        assert_cli_error(code, err, str(tmp_path), "no images found")
    code, _, err = run_cli(["predict", MODEL, tmp_path, "--engine", "torch", "--threads", "1"], capsys)
    assert_cli_error(code, err, str(tmp_path), "no images found")


def test_load_samples_skips_and_counts_unreadable_and_missing_files(tmp_path: Path, capsys) -> None:
    from captcha_crnn.data.dataset import load_samples

    write_images(tmp_path, ["good.png"])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(encode(captcha())[:60])
    samples = [Sample(str(tmp_path / n), "2b4") for n in ("good.png", "empty.png", "cut.png", "missing.png")]
    ds = load_samples(samples, PRE, progress=False)
    assert len(ds) == 1 and len(ds.skipped) == 3
    err = capsys.readouterr().err
    for name in ("empty.png", "cut.png", "missing.png: no such file"):
        assert name in err
    assert "Traceback" not in err


@pytest.fixture()
def eval_csv(tmp_path: Path) -> Path:
    """A CSV of five good captcha_v2-style images, two rows naming missing files, one empty label."""
    names = [f"{t}.png" for t in ("2b4c5", "wxy23", "nmpg7", "bcdef", "55567")]
    write_images(tmp_path, names)
    rows = [f"{n},{Path(n).stem}" for n in names] + ["gone.png,2b4c5", "sub/gone2.png,wxy23", "x.png,"]
    p = tmp_path / "labels.csv"
    p.write_text("filename,label\n" + "\n".join(rows) + "\n")
    return p


def test_eval_counts_and_reports_missing_files(eval_csv: Path, capsys) -> None:
    code, out, err = run_cli(["eval", MODEL, eval_csv, "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert rep["n"] == 5 and rep["skipped"] == 2
    assert "gone.png: no such file" in err and "gone2.png: no such file" in err
    assert "skipped 1 rows with an empty file name or label" in err
    code, out, err = run_cli(["eval", MODEL, eval_csv], capsys)
    assert code == 0 and "n=5" in out and "skipped 2 unreadable images (not scored)" in out


def test_eval_label_outside_the_alphabet_is_an_error(tmp_path: Path, capsys) -> None:
    write_images(tmp_path, ["2b4c5.png", "2bAz5.png"])
    code, _, err = run_cli(["eval", MODEL, tmp_path], capsys)
    assert_cli_error(code, err, "2bAz5.png", "outside the model's alphabet", "Az")


def test_eval_where_no_image_is_readable(tmp_path: Path, capsys) -> None:
    (tmp_path / "2b4c5.png").write_text("text")
    (tmp_path / "wxy23.png").write_bytes(b"")
    code, _, err = run_cli(["eval", MODEL, tmp_path], capsys)
    assert_cli_error(code, err, str(tmp_path), "no readable images")


# ---------------------------------------------------------------- model files


@pytest.fixture(scope="module")
def good_model() -> bytes:
    p = zoo_path(MODEL)
    assert p is not None
    return p.read_bytes()


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_safetensors(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def with_meta(data: bytes, change) -> bytes:
    """The model file with its captcha-crnn metadata changed by change(meta) (in place)."""
    header, body = split_safetensors(data)
    meta = json.loads(header["__metadata__"][META_KEY])
    change(meta)
    header["__metadata__"] = {META_KEY: json.dumps(meta)}
    return join_safetensors(header, body)


def _torch_pickle() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model.safetensors", b"\0" * 100)
    return buf.getvalue()


def bad_models(good: bytes) -> dict[str, bytes]:
    """name -> the bytes of a broken or foreign model file."""
    header, body = split_safetensors(good)
    swapped = json.loads(json.dumps(header))
    swapped["head.weight"]["shape"] = swapped["head.weight"]["shape"][::-1]
    bigger = json.loads(json.dumps(header))
    bigger["head.weight"]["shape"] = [bigger["head.weight"]["shape"][0] + 1, bigger["head.weight"]["shape"][1]]
    broken = json.loads(json.dumps(header))
    broken["__metadata__"] = {META_KEY: '{"format": "captcha-crnn", "version": 1, "alphabet": '}
    nan_weights = bytearray(good)
    s, e = header["head.weight"]["data_offsets"]
    off = len(good) - len(body)
    nan_weights[off + s : off + e] = np.full((e - s) // 4, np.nan, np.float32).tobytes()
    return {
        "empty": b"",
        "cut_header": good[:40],
        "cut_half": good[: len(good) // 2],
        "cut_last_bytes": good[:-3],
        "json_broken": join_safetensors(broken, body),
        "shapes_swapped": join_safetensors(swapped, body),
        "shape_bigger": join_safetensors(bigger, body),
        "nan_weights": bytes(nan_weights),
        "channels_mismatch": with_meta(good, lambda m: m["preprocess"].update(channels=3)),
        "height_mismatch": with_meta(good, lambda m: m["preprocess"].update(height=64)),
        "height_zero": with_meta(good, lambda m: m["preprocess"].update(height=0)),
        "width_text": with_meta(good, lambda m: m["preprocess"].update(width="wide")),
        "hidden_huge": with_meta(good, lambda m: m["model"].update(hidden=10**7)),
        "alphabet_short": with_meta(good, lambda m: m.update(alphabet=m["alphabet"][:-1])),
        "alphabet_list": with_meta(good, lambda m: m.update(alphabet=list(m["alphabet"]))),
        "no_model_key": with_meta(good, lambda m: m.pop("model")),
        "newer_version": with_meta(good, lambda m: m.update(version=99)),
        "zip": _zip(),
        "torch_pickle": _torch_pickle(),
        "text": b"this is a model, honest\n" * 10,
        "png": encode(captcha()),
    }


BAD_MODEL_NAMES = ["empty", "cut_header", "cut_half", "cut_last_bytes", "json_broken", "shapes_swapped",
                   "shape_bigger", "nan_weights", "channels_mismatch", "height_mismatch", "height_zero", "width_text",
                   "hidden_huge", "alphabet_short", "alphabet_list", "no_model_key", "newer_version", "zip",
                   "torch_pickle", "text", "png"]


@pytest.fixture(scope="module")
def bad_model_files(good_model: bytes, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-models")
    out = {}
    models = bad_models(good_model)
    assert list(models) == BAD_MODEL_NAMES
    for name, data in models.items():
        out[name] = d / f"{name}.safetensors"
        out[name].write_bytes(data)
    return out


@pytest.mark.parametrize("name", BAD_MODEL_NAMES)
def test_bad_model_files_via_the_python_api(name: str, bad_model_files: dict[str, Path]) -> None:
    p = bad_model_files[name]
    raises_naming(load_bundle, p, needles=(str(p),))
    for engine in ("torch", "auto"):
        raises_naming(Recognizer.load, p, engine=engine, needles=(str(p),))


@pytest.mark.parametrize("name", ["shapes_swapped", "channels_mismatch", "hidden_huge", "nan_weights", "zip"])
def test_bad_model_messages_say_what_is_wrong(name: str, bad_model_files: dict[str, Path]) -> None:
    h2 = 2 * PRESETS["small"]["hidden"]  # the good model's classifier input (bidirectional GRU)
    want = {"shapes_swapped": f"tensor head.weight has shape [{h2}, 20], the architecture needs [20, {h2}]",
            "channels_mismatch": "preprocessing gives 3 channel(s) of height 32, the network takes 1",
            "hidden_huge": "model hidden must be an integer from 1 to 8192",
            "nan_weights": "tensor head.weight holds NaN or infinite values",
            "zip": "not a captcha-crnn model file"}[name]
    raises_naming(load_bundle, bad_model_files[name], needles=(want,))


@pytest.mark.parametrize("name", BAD_MODEL_NAMES)
def test_bad_model_files_via_the_cli(name: str, bad_model_files: dict[str, Path], tmp_path: Path, capsys) -> None:
    p = bad_model_files[name]
    img = tmp_path / "2b4c5.png"
    captcha().save(img)
    for cmd in (["predict", p, img], ["predict", p, img, "--engine", "torch", "--threads", "1"], ["eval", p, tmp_path],
                ["info", p], ["info", p, "--json"]):
        code, out, err = run_cli(cmd, capsys)
        assert_cli_error(code, err, str(p))
        assert out == ""


def test_model_paths_that_are_not_files(tmp_path: Path, capsys) -> None:
    raises_naming(Recognizer.load, tmp_path, needles=(str(tmp_path),))  # a folder without model.safetensors
    raises_naming(Recognizer.load, "no_such_shipped_model", needles=("no_such_shipped_model",))
    code, _, err = run_cli(["info", tmp_path / "missing.safetensors"], capsys)
    assert_cli_error(code, err, "missing.safetensors")


def test_model_with_flipped_bytes_loads_or_fails_cleanly(good_model: bytes, tmp_path: Path) -> None:
    """Bytes flipped anywhere (header or weights): a working model or a one-line CaptchaError naming it."""
    rng = random.Random(0)
    n_header = struct.unpack("<Q", good_model[:8])[0] + 8
    img = np.asarray(captcha())
    outcomes = set()
    for i in range(24):
        data = bytearray(good_model)
        lo, hi = (0, n_header) if i % 2 else (n_header, len(data))  # half in the header, half in the weights
        for _ in range(rng.randint(1, 4)):
            k = rng.randrange(lo, hi)
            data[k] ^= 1 << rng.randrange(8)
        p = tmp_path / f"flip{i}.safetensors"
        p.write_bytes(bytes(data))
        try:
            rec = Recognizer.load(p, engine="torch", threads=1)
        except CaptchaError as e:
            assert str(p) in str(e) and "\n" not in str(e)
            outcomes.add("error")
            continue
        pred = rec.predict(img)
        assert isinstance(pred.text, str) and set(pred.text) <= set(rec.alphabet.chars)
        outcomes.add("loaded")
    assert outcomes == {"error", "loaded"}  # both kinds were exercised


def test_metadata_only_reads_reject_foreign_files(bad_model_files: dict[str, Path]) -> None:
    for name in ("zip", "torch_pickle", "text", "png", "json_broken", "empty", "cut_header"):
        raises_naming(read_metadata, bad_model_files[name], needles=(str(bad_model_files[name]),))


# ---------------------------------------------------------------- training skips and counts bad samples


def test_training_skips_and_counts_every_bad_sample(tmp_path: Path, capsys) -> None:
    """Missing files, empty files, empty labels, labels outside the alphabet: skipped, counted, reported."""
    from captcha_crnn.training import TrainConfig, train

    rng = random.Random(0)
    labels = ["".join(rng.choice("2345") for _ in range(3)) for _ in range(30)]
    names = [f"img{i}.png" for i in range(len(labels))]
    for n, lab in zip(names, labels):
        captcha(lab, size=(64, 32)).save(tmp_path / n)
    (tmp_path / "zero.png").write_bytes(b"")
    rows = [f"{n},{lab}" for n, lab in zip(names[:24], labels)]
    rows += ["gone.png,234", "zero.png,345", "img0.png,", "sub/gone2.png,22"]
    train_csv, val_csv = tmp_path / "train.csv", tmp_path / "val.csv"
    train_csv.write_text("filename,label\n" + "\n".join(rows) + "\n")
    val_rows = [f"{n},{lab}" for n, lab in zip(names[24:], labels[24:])] + ["img0.png,2z9"]
    val_csv.write_text("filename,label\n" + "\n".join(val_rows) + "\n")
    t = time.perf_counter()
    r = train(str(train_csv), TrainConfig(out=str(tmp_path / "run"), epochs=1, preset="tiny", init="none",
                                          progress=False, threads=1, width=64, channels=1, augment=0.0,
                                          val_data=str(val_csv), test=0.0))
    assert time.perf_counter() - t < 60
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{train_csv}: skipped 1 rows with an empty file name or label (line 28)" in err
    assert "gone.png: no such file" in err and "gone2.png: no such file" in err and "zero.png: empty file" in err
    assert "'2z9' has characters outside the alphabet" in err
    assert r.model_path.is_file()


# ---------------------------------------------------------------- ONNX model files


@pytest.fixture(scope="module")
def onnx_bytes(good_model: bytes) -> bytes:
    """captcha_v2 exported to ONNX once (with its metadata)."""
    pytest.importorskip("onnxruntime")
    from captcha_crnn.infer.export import export_bytes

    return export_bytes(load_bundle(zoo_path(MODEL)))  # type: ignore[arg-type]


def onnx_with_meta(data: bytes, change) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    for p in proto.metadata_props:
        if p.key == META_KEY:
            p.value = change(p.value)
    return proto.SerializeToString()


def _meta_channels_3(text: str) -> str:
    meta = json.loads(text)
    meta["preprocess"]["channels"] = meta["model"]["in_channels"] = 3
    return json.dumps(meta)


@pytest.mark.parametrize("name", ["cut", "text", "safetensors_inside", "json_broken", "channels_vs_graph",
                                  "no_alphabet"])
def test_bad_onnx_files(name: str, onnx_bytes: bytes, good_model: bytes, tmp_path: Path, capsys) -> None:
    data = {
        "cut": onnx_bytes[: len(onnx_bytes) // 3],
        "text": b"not a graph\n" * 20,
        "safetensors_inside": good_model,
        "json_broken": onnx_with_meta(onnx_bytes, lambda t: t[:-5]),
        "channels_vs_graph": onnx_with_meta(onnx_bytes, _meta_channels_3),
        "no_alphabet": onnx_with_meta(onnx_bytes, lambda t: json.dumps({**json.loads(t), "alphabet": None})),
    }[name]
    p = tmp_path / "model.onnx"
    p.write_bytes(data)
    msg = raises_naming(Recognizer.load, p, threads=1, needles=(str(p),))
    if name == "channels_vs_graph":
        assert "the ONNX graph takes input ['batch', 1, 32, 128], its metadata says 3 channel(s)" in msg
    img = tmp_path / "2b4c5.png"
    captcha().save(img)
    cmds = [["predict", p, img], ["eval", p, tmp_path], ["info", p]]
    for cmd in cmds[:2] if name == "safetensors_inside" else cmds:  # info reads a model file by its content
        code, out, err = run_cli(cmd, capsys)
        assert_cli_error(code, err, str(p))


def test_an_onnx_file_named_safetensors_is_an_error(onnx_bytes: bytes, tmp_path: Path) -> None:
    p = tmp_path / "model.safetensors"
    p.write_bytes(onnx_bytes)
    for engine in ("torch", "auto"):
        raises_naming(Recognizer.load, p, engine=engine, needles=(str(p), "not a captcha-crnn model file"))


# ---------------------------------------------------------------- options: bad numbers are errors, not tracebacks


@pytest.mark.parametrize("opts, needle", [
    (["--beam", "0"], "argument --beam"), (["--beam", "100000"], "argument --beam"),
    (["--length", "0"], "argument --length"), (["--length", "x"], "argument --length"),
    (["--threads", "-1"], "argument --threads"), (["--batch-size", "0"], "argument --batch-size"),
])
def test_predict_option_out_of_range_is_a_usage_error(opts: list[str], needle: str, tmp_path: Path, capsys) -> None:
    img = tmp_path / "2b4c5.png"
    captcha().save(img)
    with pytest.raises(SystemExit) as ei:
        main(["predict", MODEL, str(img), *opts])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and "Traceback" not in err
    assert f"captcha-crnn predict: error: {needle}" in err


def test_empty_or_unknown_charset(tmp_path: Path, capsys) -> None:
    img = tmp_path / "2b4c5.png"
    captcha().save(img)
    for charset, needle in (("", "charset is empty"), ("Z", "does not know: Z")):
        code, _, err = run_cli(["predict", MODEL, img, "--charset", charset, "--engine", "torch", "--threads", "1"],
                               capsys)
        assert_cli_error(code, err, needle)


def test_python_api_rejects_bad_decoding_options() -> None:
    rec = Recognizer.load(MODEL, engine="torch", threads=1)
    img = np.asarray(captcha())
    raises_naming(rec.predict, img, beam=0, needles=("beam must be",))
    raises_naming(rec.predict, img, length=0, needles=("length must be",))
    raises_naming(rec.predict, img, length=-2, needles=("length must be",))
    raises_naming(rec.predict, img, charset="", needles=("charset is empty",))
    raises_naming(Recognizer.load, MODEL, threads=0, needles=("threads must be",))
    assert len(rec.predict(img, beam=3, length=5).text) == 5


@pytest.mark.parametrize("opts", [
    ["--height", "20"], ["--height", "0"], ["--val", "1.5"], ["--test", "-0.2"], ["--val", "0.6", "--test", "0.5"],
    ["--epochs", "0"], ["--batch-size", "0"], ["--width", "abc"], ["--width", "2"], ["--threads", "-1"],
    ["--lr", "-1"], ["--dropout", "2"], ["--patience", "0"], ["--max-minutes", "-1"], ["--augment", "-1"],
    ["--augment", "lots"], ["--label-regex", "(["],
])
def test_train_options_out_of_range(opts: list[str], tmp_path: Path, capsys) -> None:
    """A bad option is one error line naming it (argparse's usage error or ours), before any training."""
    write_images(tmp_path / "data", ["22-0.png", "33-1.png", "44-2.png", "55-3.png"])
    try:
        code = main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--quiet", *opts])
    except SystemExit as e:  # rejected by the argument parser itself
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and opts[0] in lines[0], err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_label_rule_and_train_config_validate_in_python() -> None:
    from captcha_crnn.training import TrainConfig

    raises_naming(LabelRule, regex="(unclosed", needles=("not a valid regular expression",))
    raises_naming(TrainConfig(height=40).validate, needles=("--height must be a multiple of 16", "not 40"))
    raises_naming(TrainConfig(width=8).validate, needles=("--width must be a number of pixels, at least 16", "not 8"))
    assert TrainConfig(width="96").validate().width == "96"  # digits, as the Python API always took
    raises_naming(TrainConfig(preset="huge").validate, needles=("--preset must be tiny or small",))
    assert TrainConfig().validate() == TrainConfig()
