"""Bad model files: truncated, tampered and foreign .safetensors and ONNX files, through the Python API and CLI."""

from __future__ import annotations

import io
import json
import random
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from bad_input import (
    MODEL,
    assert_cli_error,
    captcha,
    encode,
    own_cache,  # noqa: F401 (autouse: ONNX exports go to the session's folder)
    raises_naming,
    run_cli,
)

from captcha_crnn.errors import CaptchaError
from captcha_crnn.infer import Recognizer
from captcha_crnn.model.crnn import PRESETS
from captcha_crnn.model.modelfile import META_KEY, load_bundle, read_metadata
from captcha_crnn.model.zoo import zoo_path

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
