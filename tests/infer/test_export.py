"""ONNX export, the onnx/torch engines, batched reading and vectorised greedy decoding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from captcha_crnn import Recognizer
from captcha_crnn.cli import main
from captcha_crnn.data.alphabet import Alphabet
from captcha_crnn.data.images import Preprocess, load_image
from captcha_crnn.decode.ctc import allowed_mask, greedy_decode, greedy_decode_batch
from captcha_crnn.errors import CaptchaError
from captcha_crnn.infer import Reader, engines
from captcha_crnn.infer.batching import stack_batch
from captcha_crnn.model.crnn import CRNN, preset
from captcha_crnn.model.modelfile import META_KEY, ModelBundle, save_bundle

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports cached in a temporary folder, not the user's cache."""
    monkeypatch.setenv("CAPTCHA_CRNN_CACHE", str(tmp_path_factory.getbasetemp() / "onnx-cache"))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained model exported once as fp32 and int8 .onnx files through the CLI."""
    d = tmp_path_factory.mktemp("onnx")
    out = {"fp32": d / "model.onnx", "int8": d / "model-int8.onnx"}
    assert main(["export", str(trained.model_path), "--onnx", str(out["fp32"])]) == 0
    assert main(["export", str(trained.out), "--onnx", str(out["int8"]), "--int8"]) == 0
    return out


@pytest.fixture(scope="module")
def images(clean_dir: Path) -> list[Path]:
    return sorted(clean_dir.iterdir())[:48]


def variable_width_model(path: Path) -> Path:
    """A small untrained model with aspect-preserving (variable width) input, saved to path."""
    torch.manual_seed(0)
    alphabet = Alphabet("0123456789")
    model = CRNN(preset("tiny", num_classes=alphabet.num_classes)).eval()
    pre = Preprocess(height=32, width=None, channels=1, min_width=24, max_width=400)
    save_bundle(ModelBundle(model, alphabet, pre, {"metrics": {}}), path)
    return path


def test_export_cli_writes_metadata_and_loads_directly(trained, exported, images, capsys) -> None:
    path = exported["fp32"]
    assert path.is_file() and path.stat().st_size > 10_000
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props[META_KEY])
    assert meta["format"] == "captcha-crnn" and meta["alphabet"] == "0123456789"
    assert meta["preprocess"]["height"] == 32 and "metrics" in meta and meta["model"]["rnn"] == "gru"
    r = Recognizer.load(str(path))
    assert r.engine_name == "onnx" and r.alphabet.chars == "0123456789"
    assert r.info["metrics"] == Recognizer.load(trained.model_path, engine="torch").info["metrics"]
    preds = r.predict(images[:5])
    assert len(preds) == 5 and all(p.text.isdigit() or p.text == "" for p in preds)
    with pytest.raises(CaptchaError, match="engine onnx"):
        Recognizer.load(str(path), engine="torch")


def test_onnx_and_torch_read_the_same(trained, exported, images) -> None:
    rt = Recognizer.load(trained.model_path, engine="torch")
    for model in (trained.model_path, exported["fp32"]):  # exported on load, and from the file
        ro = Recognizer.load(model, engine="onnx")
        assert ro.engine_name == "onnx"
        pt, po = rt.predict(images), ro.predict(images)
        assert [p.text for p in pt] == [p.text for p in po]
        assert sum(len(p.text) >= 3 for p in po) > len(images) // 2  # it reads, not only blanks
        for a, b in zip(pt, po):
            assert a.confidence == pytest.approx(b.confidence, abs=1e-3)
        x, _ = stack_batch([load_image(p, rt.preprocess) for p in images])
        np.testing.assert_allclose(ro.engine.run(x), rt.engine.run(x), atol=1e-3)


def test_int8_export_loads_and_reads(trained, exported, images) -> None:
    proto = onnx.load(str(exported["int8"]))
    ops = {n.op_type for n in proto.graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, ops
    graph = json.loads({p.key: p.value for p in proto.metadata_props}["captcha_crnn.onnx"])
    assert graph["quantized"] == "int8-dynamic"
    r8 = Recognizer.load(exported["int8"])
    rt = Recognizer.load(trained.model_path, engine="torch")
    t8, tt = [p.text for p in r8.predict(images)], [p.text for p in rt.predict(images)]
    assert sum(a == b for a, b in zip(t8, tt)) >= 0.8 * len(images)


def test_dynamic_batch_gives_the_same_per_image(exported, images) -> None:
    r = Recognizer.load(exported["fp32"])
    shape = r.engine.session.get_inputs()[0].shape
    assert isinstance(shape[0], str) and shape[1:] == [1, 32, r.preprocess.width]  # fixed width here
    x, _ = stack_batch([load_image(p, r.preprocess) for p in images[:9]])
    many = r.engine.run(x)
    ones = np.concatenate([r.engine.run(x[i : i + 1]) for i in range(9)])
    np.testing.assert_allclose(many, ones, atol=1e-4)
    one = r.predict(images[0])
    assert one.text == r.predict(images[:9], batch_size=4)[0].text


def test_parallel_lanes_read_the_same_as_one_thread(exported, images) -> None:
    """Batches spread over single-threaded lanes give the same text as one batch on one session."""
    many = (list(images) * 4)[:40]
    r2 = Recognizer.load(exported["fp32"], threads=2)
    r1 = Recognizer.load(exported["fp32"], threads=1)
    assert r2.engine.lanes == 2 and r1.engine.lanes == 1
    x, _ = stack_batch([load_image(p, r2.preprocess) for p in images[:5]])
    np.testing.assert_allclose(r2.engine.run_lane(x), r2.engine.run(x), atol=1e-4)
    p2, p1 = r2.predict(many, batch_size=7), r1.predict(many, batch_size=64)
    assert [p.text for p in p2] == [p.text for p in p1]
    assert [p.source for p in p2] == [str(p) for p in many]  # order kept


def test_predict_decodes_and_reads_in_chunks_with_errors_in_place(exported, images) -> None:
    """A fixed-width model decodes and reads chunks on the lanes: same text, bad images answered in place."""
    many = (list(images) * 2)[:40]
    bad = b"not an image at all"
    items: list = many[:13] + [bad] + many[13:] + [bad]
    r2 = Recognizer.load(exported["fp32"], threads=2)
    lane_calls = []
    run_lane = r2.engine.run_lane
    r2.engine.run_lane = lambda x: lane_calls.append(len(x)) or run_lane(x)  # type: ignore[method-assign]
    got = r2.predict(items, errors="return")
    assert len(lane_calls) >= 4 and sum(lane_calls) == len(many)  # several chunks, every good image once
    assert isinstance(got[13], CaptchaError) and isinstance(got[-1], CaptchaError)
    assert "not a readable image" in str(got[13]) or "image" in str(got[13])
    want = [p.text for p in Recognizer.load(exported["fp32"], threads=1).predict(many)]
    assert [p.text for p in got if not isinstance(p, CaptchaError)] == want
    with pytest.raises(CaptchaError):
        r2.predict(items)  # errors="raise": the first unreadable image stops the call
    assert [p.text for p in r2.predict(many)] == want


def test_recognizer_is_a_reader(exported, images) -> None:
    """The Reader interface: prepare then read_arrays reads as predict does, errors in their place."""
    rec = Recognizer.load(exported["fp32"], threads=1)
    assert isinstance(rec, Reader) and rec.alphabet.chars
    arrays = rec.prepare([*images[:3], b"not an image"], errors="return")
    assert isinstance(arrays[-1], CaptchaError) and all(a.dtype == np.uint8 for a in arrays[:3])
    assert [p.text for p in rec.read_arrays(arrays[:3])] == [p.text for p in rec.predict(list(images[:3]))]
    assert not hasattr(rec, "predict_arrays") and not hasattr(rec, "load_arrays")  # removed in 0.2.0


def test_variable_width_model_exports_dynamic_width(tmp_path: Path, clean_dir: Path) -> None:
    src = variable_width_model(tmp_path / "var.safetensors")
    out = tmp_path / "var.onnx"
    assert main(["export", str(src), "--onnx", str(out)]) == 0
    ro, rt = Recognizer.load(out), Recognizer.load(src, engine="torch")
    inp, outp = ro.engine.session.get_inputs()[0], ro.engine.session.get_outputs()[0]
    assert isinstance(inp.shape[0], str) and isinstance(inp.shape[3], str) and isinstance(outp.shape[1], str)
    from PIL import Image

    base = Image.open(sorted(clean_dir.iterdir())[0])
    imgs = [base.resize((w, 32)) for w in (40, 96, 150, 203)]  # widths not all multiples of 4
    assert [p.text for p in ro.predict(imgs, batch_size=3)] == [p.text for p in rt.predict(imgs, batch_size=2)]
    arrays = [load_image(im, ro.preprocess) for im in imgs]
    for a in arrays:  # each width on its own
        x, _ = stack_batch([a])
        np.testing.assert_allclose(ro.engine.run(x), rt.engine.run(x), atol=1e-3)
    x, _ = stack_batch(arrays)  # padded together
    np.testing.assert_allclose(ro.engine.run(x), rt.engine.run(x), atol=1e-3)


def test_predict_cli_batch_size_and_engines(trained, exported, clean_dir: Path, capsys) -> None:
    outs = []
    for args in (["--batch-size", "7", "--engine", "onnx"], ["--batch-size", "500", "--engine", "torch"],
                 ["--batch-size", "1", "--threads", "1"]):
        assert main(["predict", str(trained.model_path), str(clean_dir), *args]) == 0
        outs.append([ln.split("\t")[:2] for ln in capsys.readouterr().out.strip().splitlines()])
    assert len(outs[0]) == 300 and outs[0] == outs[1] == outs[2]
    assert main(["predict", str(exported["fp32"]), str(clean_dir / "1*.png"), "--batch-size", "3", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert items and all(i["path"].endswith(".png") for i in items)


@pytest.mark.parametrize("name", ["junk.safetensors", "junk.onnx", "missing.safetensors"])
def test_export_bad_model_is_a_one_line_error(tmp_path: Path, capsys, name: str) -> None:
    bad = tmp_path / name
    if not name.startswith("missing"):
        bad.write_bytes(b"\x00garbage" * 20)
    code = main(["export", str(bad), "--onnx", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("captcha-crnn: error") and name in lines[0], err
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(CaptchaError, match=name):
        Recognizer.load(bad)


def test_auto_engine_cache_and_engine_choice(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAPTCHA_CRNN_CACHE", str(cache))
    monkeypatch.setattr(engines, "_MEMO", {})
    r = Recognizer.load(trained.model_path)
    assert r.engine_name == "onnx" and len(list(cache.glob("*.onnx"))) == 1  # exported once, cached on disk
    monkeypatch.setattr(engines, "_MEMO", {})
    assert Recognizer.load(trained.out).engine_name == "onnx"  # from the cache
    assert r.bundle.model.cfg.rnn == "gru"  # the torch weights still load on demand
    assert Recognizer.load(trained.model_path, engine="torch").engine_name == "torch"
    with pytest.raises(CaptchaError, match="unknown engine"):
        Recognizer.load(trained.model_path, engine="tensorrt")
    monkeypatch.setattr(engines, "onnx_available", lambda: False)
    assert Recognizer.load(trained.model_path).engine_name == "torch"


def test_batched_greedy_matches_per_image() -> None:
    rng = np.random.default_rng(0)
    for it in range(200):
        b, t, c = (int(v) for v in (rng.integers(1, 6), rng.integers(1, 15), rng.integers(2, 6)))
        lp = np.log(rng.dirichlet(np.full(c, 0.3), size=(b, t))).astype(np.float32)
        lens = rng.integers(0, t + 1, size=b)
        mask = allowed_mask(c, [1]) if it % 3 == 0 else None
        for i, d in enumerate(greedy_decode_batch(lp, lens, mask)):
            g = greedy_decode(lp[i, : lens[i]], mask)
            assert (d.indices, d.char_confidences, d.confidence) == (g.indices, g.char_confidences, g.confidence)
    assert greedy_decode_batch(np.zeros((0, 4, 3), np.float32)) == []


def test_reading_an_onnx_file_imports_no_torch(exported, images) -> None:
    from captcha_crnn.model import format as fmt
    from captcha_crnn.model import modelfile

    assert modelfile.META_KEY is fmt.META_KEY and not hasattr(engines, "META_KEY")  # one owner of the format
    code = ("import sys; from captcha_crnn import Recognizer; "
            f"r = Recognizer.load({str(exported['fp32'])!r}); p = r.predict([{str(images[0])!r}] * 9, batch_size=4); "
            "assert len(p) == 9 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
