"""Semi-supervised training (training/semi.py): the rule that makes a reading a target, the ramp, the strong
view, the pool's draws, the reader that leads, and runs that learn from unlabelled images end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_clean_set

from captcha_crnn.data.alphabet import Alphabet
from captcha_crnn.data.augment import augment, strong_augment
from captcha_crnn.data.dataset import ImageSet
from captcha_crnn.training import TrainConfig, train
from captcha_crnn.training import plan as plan_mod
from captcha_crnn.training import semi as semi_mod
from captcha_crnn.training.policy import RAMP, THRESHOLD, UNLABELLED_WEIGHT
from captcha_crnn.training.semi import OWN, Readings, Semi, fits, ramp


@pytest.fixture(autouse=True)
def own_ema_reads_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs here read their pool with their own EMA from the start (ddddocr would read clean digits)."""
    monkeypatch.setattr(plan_mod, "first_reader", lambda pool, zero_shot, notes: None)


def test_rule_keeps_readings_of_a_plausible_length_with_room() -> None:
    texts = ["123", "12", "1234", "112", "112"]
    steps = [10, 10, 10, 10, 3]  # "112" needs 4 steps (a blank between the repeated 1s)
    assert fits(texts, steps, (3, 3)) == [True, False, False, True, False]
    assert fits(["12"], [2], (2, 3)) == [True]


def test_fixed_rule_takes_readings_at_the_threshold() -> None:
    r = Readings("teacher", ["123", "456"], [THRESHOLD, THRESHOLD - 0.01], [], [], 0.5)
    s = Semi(pool(2), Alphabet("0123456789"), (3, 3), r, rule="fixed")
    pos, texts = s.targets(torch.nn.Identity(), torch.zeros(2, 1, 32, 96), np.array([96] * 2), [0, 1], False)
    assert (pos, texts) == ([0], ["123"])  # the threshold itself clears


def test_unlabelled_weight_ramps_in() -> None:
    assert ramp(0.0) == 0.0
    assert 0 < ramp(RAMP / 2) < ramp(RAMP) == UNLABELLED_WEIGHT == ramp(1.0)


def test_strong_view_is_seeded_in_range_and_stronger_than_the_weak() -> None:
    x = torch.zeros(4, 3, 32, 96)
    x[:, :, 8:24, 10:86] = 1.0  # a block of ink
    a = strong_augment(x, torch.Generator().manual_seed(0))
    b = strong_augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    weak = augment(x, 1.0, torch.Generator().manual_seed(0))
    assert (a - x).abs().mean() > (weak - x).abs().mean()


def pool(n: int, widths: list[int] | None = None) -> ImageSet:
    images = [np.full((1, 32, w), 255, np.uint8) for w in (widths or [96] * n)]
    return ImageSet(images, [""] * n, [f"u{i}.png" for i in range(n)])


def test_list_files_expand_to_their_images(tmp_path: Path) -> None:
    from captcha_crnn.training.sets import unlabelled_images, write_list

    make_clean_set(tmp_path / "u", 4)
    images = sorted(str(p.resolve()) for p in (tmp_path / "u").iterdir())
    listed = write_list(images[:3], tmp_path / "pool.txt")
    assert unlabelled_images([listed], []) == images[:3]
    assert unlabelled_images([listed, images[3]], []) == images


def test_draws_are_seeded_and_cover_the_pool() -> None:
    s = Semi(pool(10), Alphabet("0123456789"), (3, 4))
    assert s.draw(1, 0, 4) == s.draw(1, 0, 4) != s.draw(2, 0, 4)
    drawn = s.draw(1, 0, 5) + s.draw(1, 1, 5)
    assert sorted(drawn) == list(range(10))  # one pass of batches draws every image once
    assert s.draw(1, 2, 5) == s.draw(1, 0, 5)  # then it cycles


def test_fixed_readings_teach_until_the_own_ema_reads_more() -> None:
    alphabet = Alphabet("0123456789")
    r = Readings("teacher.safetensors", ["123", "45", "999"], [0.99, 0.99, 0.2], ["111", "222"], [0.99, 0.99], 0.5)
    s = Semi(pool(3), alphabet, (3, 3), r, rule="fixed")
    x = torch.zeros(3, 1, 32, 96)
    pos, texts = s.targets(torch.nn.Identity(), x, np.array([96] * 3), [0, 1, 2], False)
    assert (pos, texts) == ([0], ["123"])  # "45": no label has 2 characters; "999": unsure
    rec = s.end_epoch(["111", "223"], ["111", "223"], [0.99, 0.99], 0.5, [24, 24])
    assert rec["unlabelled_reader"] == "teacher.safetensors" and rec["unlabelled_val_right"] == 0.5
    rec = s.end_epoch(["111", "223"], ["111", "223"], [0.99, 0.99], 1.0, [24, 24])
    assert rec["unlabelled_reader"] == OWN and rec["unlabelled_val_right"] == 1.0 and s.own_leads


def test_flex_rule_lets_slowly_learnt_classes_through_early() -> None:
    """Under flex, nothing read confidently yet: every class's threshold is low, so the teacher's unsure
    readings teach too (FlexMatch's warm-up); the length rule still applies."""
    r = Readings("teacher", ["123", "45", "999"], [0.99, 0.99, 0.2], [], [], 0.5,
                 [[0.99, 0.99, 0.99], [0.99, 0.99], [0.6, 0.6, 0.6]])
    s = Semi(pool(3), Alphabet("0123456789"), (3, 3), r, rule="flex")
    pos, texts = s.targets(torch.nn.Identity(), torch.zeros(3, 1, 32, 96), np.array([96] * 3), [0, 1, 2], False)
    assert (pos, texts) == ([0, 2], ["123", "999"])


def unlabelled_run(tmp_path: Path, **kw) -> TrainConfig:
    make_clean_set(tmp_path / "d", 40, lengths=(3, 3))
    make_clean_set(tmp_path / "u", 60, seed=5, lengths=(3, 3))
    return TrainConfig(**{"out": str(tmp_path / "run"), "batch_size": 8, "preset": "tiny", "label_sep": "-",
                          "progress": False, "unlabelled": (str(tmp_path / "u"),), "checkpoint_minutes": 0,
                          "pretrained": "off", "augment": 0.3, **kw})


def test_a_run_learns_from_unlabelled_images_and_records_it(tmp_path: Path) -> None:
    r = train(str(tmp_path / "d"), unlabelled_run(tmp_path, epochs=3))
    h = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    assert len(h) == 3 and all(0 <= e["unlabelled_used"] <= 1 and e["unlabelled_reader"] == OWN for e in h)
    assert h[0]["step"] == 2 * 32 // 8  # an epoch is a pass over the pool: 60 images, the 32 labelled twice
    assert r.model_path.is_file() and (tmp_path / "run" / "curves.png").is_file()
    from captcha_crnn.model.format import read_metadata

    config = read_metadata(r.model_path)["training"]["config"]
    assert config["unlabelled"] == [str(tmp_path / "run" / "split" / "unlabelled.txt")]  # one list, not 60 paths
    assert len((tmp_path / "run" / "split" / "unlabelled.txt").read_text().splitlines()) == 60


def test_read_with_folds_and_scores_any_reader() -> None:
    from captcha_crnn.errors import CaptchaError
    from captcha_crnn.infer import Prediction

    class Reader:
        def predict(self, paths, errors="raise"):
            return [CaptchaError("bad") if p == "bad.png" else Prediction(p.split(".")[0].upper(), 0.9) for p in paths]

    r = semi_mod.read_with(Reader(), "r", ["ab.png", "bad.png"], ["ab.png", "cd.png"], ["ab", "xx"], str.lower)
    assert r.texts == ["ab", ""] and r.confs == [0.9, 0.0] and r.val_accuracy == 0.5


def test_first_readings_teach_and_resume_continues(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed readings (here the true labels, as a strong reader would give) teach from the first step; a run
    killed after its second epoch resumes from its checkpoint."""
    cfg = unlabelled_run(tmp_path, epochs=4)

    def truth(cfg, reader, probe, data, paths):
        texts = [Path(p).name.split("-")[0] for p in paths]
        return Readings(reader, texts, [0.99] * len(texts), list(data.val.labels), [0.99] * len(data.val), 1.0)

    monkeypatch.setattr(plan_mod, "first_reader", lambda pool, zero_shot, notes: "reader.safetensors")
    monkeypatch.setattr(semi_mod, "first_readings", truth)
    seen: list[str] = []

    def hook(rec: dict, bundle: object) -> None:
        seen.append(rec["unlabelled_reader"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(str(tmp_path / "d"), cfg, on_epoch=hook)
    assert "first read by reader.safetensors" in capsys.readouterr().err
    from captcha_crnn.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["setup_s"] > 0 and json.loads(ckpt["semi"])["own_leads"] is False
    cfg.resume = True
    r = train(str(tmp_path / "d"), cfg)
    assert len(r.history) == 4 and "resumed from" in capsys.readouterr().err
    assert seen == ["reader.safetensors"] * 2
    assert all(e["unlabelled_reader"] == "reader.safetensors" for e in r.history)  # nothing reads more than 100%
    assert r.history[-1]["unlabelled_used"] > 0.9 and r.history[-1]["unlabelled_val_right"] == 1.0


def test_a_folder_of_nothing_but_labelled_images_adds_no_pool(tmp_path: Path) -> None:
    make_clean_set(tmp_path / "d", 40, lengths=(3, 3))
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=1, batch_size=8, preset="tiny", label_sep="-",
                      progress=False, pretrained="off", unlabelled=(str(tmp_path / "d"),), checkpoint_minutes=0)
    r = train(str(tmp_path / "d"), cfg)
    assert "unlabelled_used" not in r.history[0]


def test_flex_thresholds_are_lower_for_classes_learnt_slowly() -> None:
    from captcha_crnn.training.semi import FlexThresholds

    f = FlexThresholds(n_images=4, n_classes=4, mean_length=1)
    assert f.thresholds().max() == 0  # nothing read yet: every class starts low (FlexMatch's warm-up)
    for i in range(3):
        f.update(i, [1], [0.99])  # class 1: read confidently three times
    f.update(3, [2], [0.99])  # class 2: once
    t = f.thresholds()
    assert t[1] == pytest.approx(THRESHOLD) and 0 < t[2] < t[1] and t[3] == 0
    f.update(0, [2], [0.99])  # an image's newer reading replaces its older one
    assert f.sigma[1] == 2 and f.sigma[2] == 2
    assert f.clear([3], [0.1]) and not f.clear([1, 3], [0.5, 0.99])  # every character must clear its own


def test_a_non_finite_step_is_skipped_not_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """A batch whose loss turns NaN leaves the weights as they were (a warning says so), so the run goes on."""
    from captcha_crnn.training import loop

    calls = {"n": 0}
    real = loop.policy

    def poisoned(x, strength, gen):
        calls["n"] += 1
        return real(x, strength, gen) * (float("nan") if calls["n"] == 1 else 1.0)

    monkeypatch.setattr(loop, "policy", poisoned)
    r = train(str(tmp_path / "d"), unlabelled_run(tmp_path, epochs=1, unlabelled=()))
    assert "1 training step(s) skipped" in capsys.readouterr().err
    assert np.isfinite(r.history[0]["train_loss"]) and np.isfinite(r.history[0]["val_loss"])


def test_the_pool_state_survives_a_resume() -> None:
    r = Readings("teacher", ["123", "456"], [0.99, 0.5], [], [], 0.5, [[0.99] * 3, [0.99, 0.5, 0.99]])
    a = Semi(pool(2), Alphabet("0123456789"), (3, 3), r)
    a.targets(torch.nn.Identity(), torch.zeros(2, 1, 32, 96), np.array([96] * 2), [0, 1], False)
    a.own_leads = True
    state = json.loads(json.dumps(a.state()))  # as the checkpoint stores it
    b = Semi(pool(2), Alphabet("0123456789"), (3, 3), r)
    b.resume(state, [])
    assert b.own_leads and b.flex is not None and a.flex is not None
    assert b.flex.latest == a.flex.latest and np.array_equal(b.flex.sigma, a.flex.sigma)


def test_fixed_readings_that_read_no_better_than_the_start_never_teach() -> None:
    r = Readings("teacher", ["123"], [0.99], ["111"], [0.99], 0.0)  # a teacher that reads no held-out label
    s = Semi(pool(1), Alphabet("0123456789"), (3, 3), r)
    s.first_lead(0.0)
    assert s.own_leads and s.reader == OWN
    s = Semi(pool(1), Alphabet("0123456789"), (3, 3), Readings("teacher", ["123"], [0.99], ["111"], [0.99], 0.8))
    s.first_lead(0.1)
    assert not s.own_leads
