"""Tests for captcha_crnn.model: the CRNN, the model file, the summary and batched running."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from captcha_crnn.data.alphabet import Alphabet
from captcha_crnn.data.dataset import bucketed_order
from captcha_crnn.data.images import Preprocess, to_ink
from captcha_crnn.errors import CaptchaError
from captcha_crnn.model import CRNN, PRESETS, CRNNConfig
from captcha_crnn.model.crnn import preset
from captcha_crnn.model.modelfile import (
    META_KEY,
    ModelBundle,
    load_bundle,
    read_metadata,
    save_bundle,
)
from captcha_crnn.model.run import log_probs, width_batches
from captcha_crnn.model.summary import format_summary, summarize


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small models gain nothing from threads, and on a busy 2-core machine thread hand-offs in
    the RNNs can cost seconds per call; restore the setting for other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


def tiny(**kw) -> CRNN:
    kw.setdefault("num_classes", 6)
    return CRNN(preset("tiny", **kw)).eval()


def forward(model: CRNN, b: int, c: int, h: int, w: int) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.rand(b, c, h, w))


# ---------------------------------------------------------------- CRNN shapes

ODD_WIDTHS = (37, 41, 63)


@pytest.mark.parametrize("backbone", ["plain", "resnet"])
@pytest.mark.parametrize("rnn", ["gru", "lstm"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("height", [32, 48])
def test_tiny_output_shape_multiple_of_four(backbone, rnn, channels, height):
    m = tiny(backbone=backbone, rnn=rnn, in_channels=channels, height=height, num_classes=9)
    for w in (16, 64, 100):
        out = forward(m, 2, channels, height, w)
        assert out.shape == (2, w // 4, 9)


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("height", [32, 48])
def test_plain_output_shape_odd_widths(rnn, channels, height):
    m = tiny(backbone="plain", rnn=rnn, in_channels=channels, height=height)
    for w in ODD_WIDTHS + (38, 39):
        assert forward(m, 1, channels, height, w).shape == (1, w // 4, 6)
        assert int(CRNN.output_lengths(torch.tensor([w]))[0]) == w // 4


@pytest.mark.parametrize("w", [37, 38, 39])
def test_resnet_output_shape_odd_widths(w):
    m = tiny(backbone="resnet")
    out = forward(m, 1, 1, 32, w)
    assert out.shape[1] == int(CRNN.output_lengths(torch.tensor([w]))[0]) == w // 4


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("backbone", ["plain", "resnet"])
@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_every_preset_output_shape(name, backbone, rnn):
    m = CRNN(preset(name, backbone=backbone, rnn=rnn, num_classes=11, in_channels=3, height=48))
    m.eval()
    out = forward(m, 2, 3, 48, 52)
    assert out.shape == (2, 13, 11)


def test_presets_differ_in_size():
    names = ("tiny", "small", "base")
    counts = [sum(p.numel() for p in CRNN(preset(n)).parameters()) for n in names]
    assert counts[0] < counts[1] < counts[2]


@pytest.mark.parametrize("backbone", ["plain", "resnet"])
def test_outputs_are_log_probabilities(backbone):
    m = tiny(backbone=backbone, num_classes=7)
    out = forward(m, 3, 1, 32, 64)
    assert out.dtype == torch.float32
    assert (out <= 1e-6).all()
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(3, 16), atol=1e-5, rtol=0)


def test_train_mode_also_gives_log_probabilities():
    m = tiny().train()
    out = m(torch.rand(2, 1, 32, 40))
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2, 10), atol=1e-5, rtol=0)
    out.sum().backward()
    assert m.head.weight.grad is not None


@pytest.mark.parametrize("height", [8, 24, 33, 40])
def test_height_not_multiple_of_16_raises(height):
    with pytest.raises(ValueError, match="16"):
        CRNN(CRNNConfig(height=height))


def test_unknown_backbone_and_preset():
    with pytest.raises(ValueError):
        CRNN(CRNNConfig(backbone="vgg99"))
    with pytest.raises(ValueError):
        preset("huge")


def test_output_lengths():
    got = CRNN.output_lengths(torch.tensor([1, 4, 7, 37, 128, 130]))
    assert got.tolist() == [1, 1, 1, 9, 32, 32]


# ---------------------------------------------------------------- config


def test_config_dict_round_trip():
    cfg = preset("base", num_classes=20, backbone="resnet", rnn="lstm", in_channels=3, height=48)
    d = cfg.to_dict()
    assert d["widths"] == [64, 128, 192, 256]
    json.dumps(d)  # JSON-serialisable
    back = CRNNConfig.from_dict(json.loads(json.dumps(d)))
    assert back == cfg
    assert isinstance(back.widths, tuple)
    assert CRNNConfig.from_dict({**d, "future_option": 1}) == cfg


def test_preset_overrides():
    cfg = preset("small", num_classes=5, hidden=32)
    assert cfg.widths == PRESETS["small"]["widths"]
    assert (cfg.num_classes, cfg.hidden) == (5, 32)


# ---------------------------------------------------------------- model file


def make_bundle(**info) -> ModelBundle:
    alphabet = Alphabet("0123abc")
    model = CRNN(preset("tiny", num_classes=alphabet.num_classes, backbone="resnet"))
    model.train()
    with torch.no_grad():  # move BatchNorm running statistics away from their defaults
        for _ in range(3):
            model(torch.rand(4, 1, 32, 48))
    model.eval()
    pre = Preprocess(height=32, width=None, channels=1, min_width=24, max_width=400)
    return ModelBundle(model, alphabet, pre, dict(info))


def test_save_load_round_trip(tmp_path):
    info = {"metrics": {"val": {"sequence_accuracy": 0.75}}, "data": "captchas/", "seed": 3}
    bundle = make_bundle(**info)
    path = tmp_path / "sub" / "model.safetensors"
    save_bundle(bundle, path)
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temp files left

    loaded = load_bundle(path)
    assert loaded.alphabet == bundle.alphabet
    assert loaded.preprocess == bundle.preprocess
    assert loaded.info == info
    assert loaded.model.cfg == bundle.model.cfg
    assert not loaded.model.training
    x = torch.rand(2, 1, 32, 64)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), bundle.model(x))
    for k, v in bundle.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k

    meta = read_metadata(str(path))
    assert meta["alphabet"] == "0123abc"
    assert meta["preprocess"]["width"] is None


def test_save_overwrites_existing_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_bundle(make_bundle(run=1), path)
    save_bundle(make_bundle(run=2), path)
    assert load_bundle(path).info == {"run": 2}


def _bad(path) -> str:
    with pytest.raises(CaptchaError) as ei:
        load_bundle(path)
    assert str(path) in str(ei.value)
    return str(ei.value)


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("good") / "m.safetensors"
    save_bundle(make_bundle(), path)
    return path.read_bytes()


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.01])
def test_truncated_file(tmp_path, good_bytes, cut):
    p = tmp_path / "cut.safetensors"
    p.write_bytes(good_bytes[: int(len(good_bytes) * cut)])
    _bad(p)


def test_file_cut_short_by_a_few_bytes(tmp_path, good_bytes):
    p = tmp_path / "cut.safetensors"
    p.write_bytes(good_bytes[:-3])
    _bad(p)


@pytest.mark.parametrize("seed", range(4))
def test_garbage_bytes(tmp_path, seed):
    p = tmp_path / "garbage.safetensors"
    p.write_bytes(random.Random(seed).randbytes(3000))
    _bad(p)


@pytest.mark.parametrize("blob", [b"", b"\0" * 64, b"hello world", b"\x08" + b"\0" * 7 + b"{}"])
def test_tiny_or_empty_files(tmp_path, blob):
    p = tmp_path / "small.safetensors"
    p.write_bytes(blob)
    _bad(p)


def test_corrupted_tensor_data_in_the_middle(tmp_path, good_bytes):
    # header intact, weights garbled: still loads (no checksum) but never raises another error
    data = bytearray(good_bytes)
    mid = len(data) // 2
    data[mid : mid + 64] = b"\xff" * 64
    p = tmp_path / "flipped.safetensors"
    p.write_bytes(bytes(data))
    try:
        load_bundle(p)
    except CaptchaError:
        pass


def test_safetensors_without_our_metadata(tmp_path):
    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    assert META_KEY in _bad(p)
    p2 = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(p2), metadata={"format": "pt"})
    _bad(p2)


@pytest.mark.parametrize(
    "meta",
    [
        "{not json",
        json.dumps({"format": "something-else", "version": 1}),
        json.dumps({"format": "captcha-crnn", "version": 99}),
        json.dumps({"format": "captcha-crnn", "version": 1}),  # no model / alphabet
        json.dumps({"format": "captcha-crnn", "version": 1, "alphabet": "ab",
                    "preprocess": {}, "model": {"height": 31}}),
    ],
)
def test_safetensors_with_bad_metadata(tmp_path, meta):
    p = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(3)}, str(p), metadata={META_KEY: meta})
    _bad(p)


@pytest.mark.parametrize(
    "meta", ["[1, 2]", '"text"', json.dumps({"format": "captcha-crnn", "version": "x"})]
)
def test_safetensors_with_wrongly_typed_metadata(tmp_path, meta):
    p = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(3)}, str(p), metadata={META_KEY: meta})
    _bad(p)


def test_weights_that_do_not_match_the_architecture(tmp_path, good_bytes):
    bundle = make_bundle()
    meta = bundle.metadata()
    meta["model"]["hidden"] = 32  # the weights were saved with hidden=64
    p = tmp_path / "mismatch.safetensors"
    state = {k: v.contiguous() for k, v in bundle.model.state_dict().items()}
    save_file(state, str(p), metadata={META_KEY: json.dumps(meta)})
    _bad(p)


def test_alphabet_size_mismatch(tmp_path):
    bundle = make_bundle()
    bundle.alphabet = Alphabet("0123ab")  # one class short
    p = tmp_path / "alpha.safetensors"
    save_bundle(bundle, p)
    _bad(p)


def test_missing_file_and_folder(tmp_path):
    assert "no such" in _bad(tmp_path / "missing.safetensors")
    _bad(tmp_path)
    with pytest.raises(CaptchaError):
        read_metadata(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------- summary


@pytest.mark.parametrize("backbone", ["plain", "resnet"])
def test_format_summary_contains_total_and_parameter_count(backbone):
    m = tiny(backbone=backbone)
    total = sum(p.numel() for p in m.parameters())
    text = format_summary(m, width=64)
    last = text.splitlines()[-1]
    assert last.split()[0] == "total"
    assert f"{total:,}" in last
    assert "GRU" in text and "Linear" in text
    rows = summarize(m, width=64)
    assert sum(r[3] for r in rows) == total  # every parameter counted exactly once
    assert rows[-1][0] == "head" and rows[-1][2] == str((1, 16, 6))


def test_summary_restores_training_mode():
    m = tiny().train()
    summarize(m)
    assert m.training
    m.eval()
    summarize(m)
    assert not m.training


# ---------------------------------------------------------------- batched running


def _images(widths, seed=0, channels=1, height=32):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (channels, height, w), dtype=np.uint8) for w in widths]


def test_width_batches():
    b = width_batches([50, 10, 30, 10, 40], 2)
    assert b == [[1, 3], [2, 4], [0]]
    assert sorted(i for x in b for i in x) == list(range(5))


def test_bucketed_order_groups_similar_widths():
    rng = np.random.default_rng(0)
    widths = rng.integers(40, 400, 1000).tolist()
    order = rng.permutation(1000).tolist()
    out = bucketed_order(order, widths, 32, seed=1, pool=10)
    assert sorted(out) == list(range(1000))  # a permutation: every image once per epoch
    assert out != order and out == bucketed_order(order, widths, 32, seed=1, pool=10)  # seeded
    spread = lambda o: np.mean([np.ptp([widths[i] for i in o[k:k + 32]]) for k in range(0, 992, 32)])  # noqa: E731
    assert spread(out) < spread(order) / 5  # batches hold similar widths: little padding
    assert bucketed_order(order, [64] * 1000, 32, seed=1) == order  # one width: nothing to group


def test_log_probs_mixed_widths():
    m = tiny(num_classes=5)
    widths = [64, 40, 100, 52, 41, 128]
    arrays = _images(widths)
    out = log_probs(m, arrays, batch_size=2)
    assert len(out) == len(arrays)
    for a, w in zip(out, widths, strict=True):
        assert isinstance(a, np.ndarray) and a.dtype == np.float32
        assert a.shape == (w // 4, 5)
        np.testing.assert_allclose(np.exp(a).sum(-1), 1.0, atol=1e-5)


def test_log_probs_single_image_matches_model():
    m = tiny(num_classes=5)
    arr = _images([60])[0]
    (got,) = log_probs(m, [arr])
    with torch.inference_mode():
        want = m(torch.from_numpy(to_ink(arr[None]))).numpy()[0]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_log_probs_independent_of_batch_order():
    m = tiny(num_classes=5)
    widths = [64, 40, 100, 52, 76, 128, 16]  # distinct: the same batches whatever the order
    arrays = _images(widths, seed=1)
    base = log_probs(m, arrays, batch_size=3)
    perm = [3, 0, 6, 5, 1, 4, 2]
    shuffled = log_probs(m, [arrays[i] for i in perm], batch_size=3)
    for j, i in enumerate(perm):
        np.testing.assert_allclose(shuffled[j], base[i], atol=1e-5)
    # one batch holding everything: order never matters, even with equal widths
    arrays = _images([64, 40, 64, 52, 40], seed=2)
    base = log_probs(m, arrays, batch_size=64)
    perm = [4, 2, 0, 3, 1]
    shuffled = log_probs(m, [arrays[i] for i in perm], batch_size=64)
    for j, i in enumerate(perm):
        np.testing.assert_allclose(shuffled[j], base[i], atol=1e-5)


def test_log_probs_three_channels_and_empty_list():
    m = tiny(in_channels=3, height=48)
    out = log_probs(m, _images([32, 48], channels=3, height=48))
    assert [a.shape for a in out] == [(8, 6), (12, 6)]
    assert log_probs(m, []) == []
