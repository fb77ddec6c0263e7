"""Teacher -> student: the start decision, the few-label split, the threshold on the held-out readings,
unlabelled images (given and from a label folder), the stages end to end and --resume across them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import interrupt_at, make_clean_set

from captcha_crnn.cli import main
from captcha_crnn.data.label_store import LabelStore
from captcha_crnn.data.labels import LabelRule, read_samples
from captcha_crnn.errors import CaptchaError
from captcha_crnn.training import TrainConfig, pretrained, train
from captcha_crnn.training.data import split_fractions
from captcha_crnn.training.pseudo import choose_threshold, label_folder_unlabelled, pseudo_label, unlabelled_images
from captcha_crnn.training.start import resolve_start

needs_ddddocr = pytest.mark.skipif(not pretrained.available(), reason="the pretrained extra (ddddocr) is not installed")


def test_threshold_is_the_lowest_that_keeps_the_precision() -> None:
    conf = [0.99, 0.98, 0.97, 0.9, 0.8, 0.5]
    assert choose_threshold(conf, [True] * 6, min_clearing=1) == (0.5, 1.0, 6)
    assert choose_threshold(conf, [True, True, True, False, True, True], min_clearing=1) == (0.97, 1.0, 3)
    assert choose_threshold(conf, [False] + [True] * 5, min_clearing=1) == (None, None, 0)  # the surest is wrong
    # a tie is kept whole or not at all: 0.9 holds one right and one wrong reading
    assert choose_threshold([0.99, 0.9, 0.9], [True, True, False], min_clearing=1) == (0.99, 1.0, 1)
    many = [1 - i / 1000 for i in range(200)]
    right = [i != 150 for i in range(200)]  # one miss in 200: 99.5% right over all of them
    assert choose_threshold(many, right) == (many[-1], 199 / 200, 200)
    assert choose_threshold([], []) == (None, None, 0)


def test_threshold_rests_on_enough_held_out_readings() -> None:
    # a weak teacher: its 3 surest of 40 readings are right, the rest mostly wrong
    conf = [1 - i / 100 for i in range(40)]
    right = [i < 3 or i % 10 == 5 for i in range(40)]
    assert choose_threshold(conf, right, min_clearing=1) == (0.98, 1.0, 3)
    assert choose_threshold(conf, right) == (None, None, 0)  # 3 readings are too few to stand for 99%
    assert choose_threshold(conf[:12], [True] * 12) == (conf[11], 1.0, 12)
    # under twice MIN_CLEARING held-out readings: half of them must clear
    assert choose_threshold(conf[:8], [True] * 8) == (conf[7], 1.0, 8)
    assert choose_threshold(conf[:8], [True] * 4 + [False] * 4) == (conf[3], 1.0, 4)
    assert choose_threshold(conf[:8], [True] * 3 + [False] * 5) == (None, None, 0)
    assert choose_threshold(conf[:10], [True] * 9 + [False]) == (conf[8], 1.0, 9)  # 50 labels: 10 held out


def test_few_labels_split_keeps_every_label_for_training_or_validation() -> None:
    assert split_fractions(TrainConfig(), 100) == (0.2, 0.0)
    assert split_fractions(TrainConfig(), 936) == (0.1, 0.1)
    assert split_fractions(TrainConfig(val=0.3, test=0.1), 100) == (0.3, 0.1)  # the flags win
    assert split_fractions(TrainConfig(val_data="v.csv"), 100) == (0.0, 0.0)


def test_start_is_decided_by_labelled_images_and_init() -> None:
    changes, notes = resolve_start(TrainConfig(init="synthetic"), n_labelled=5000)
    assert changes["pretrained"] == "off" and changes["backbone"] == "plain" and changes["preset"] == "small"
    assert "--init" in notes[0]
    with pytest.raises(CaptchaError, match="--init synthetic starts from a trained model, --pretrained on"):
        resolve_start(TrainConfig(init="synthetic", pretrained="on"))
    with pytest.raises(CaptchaError, match="no such model file"):
        resolve_start(TrainConfig(init="nope.safetensors"))
    assert resolve_start(TrainConfig(), n_labelled=49)[0]["pretrained"] == "off"


@needs_ddddocr
def test_pretrained_start_reads_fewer_rows_the_more_labels() -> None:
    from captcha_crnn.training.start import TUNED_HEIGHT_FROM_LABELS

    def start(n: int) -> dict:
        changes, notes = resolve_start(TrainConfig(), n_labelled=n)
        assert changes["pretrained"] == "on"
        if "height" in changes:
            assert f"height {changes['height']}" in notes[0]
        return changes

    assert start(TUNED_HEIGHT_FROM_LABELS - 1)["height"] == 64  # its native rows
    assert start(TUNED_HEIGHT_FROM_LABELS)["height"] == start(10_000)["height"] == 48
    assert "height" not in resolve_start(TrainConfig(height="32"), n_labelled=100)[0]  # --height wins


def test_unlabelled_images_leave_out_the_labelled_ones(tmp_path: Path) -> None:
    make_clean_set(tmp_path / "d", 6)
    labelled = read_samples(str(tmp_path / "d"), LabelRule(sep="-"))[:2]
    found = unlabelled_images([str(tmp_path / "d")], labelled)
    assert len(found) == 4 and not {str(Path(s.path).resolve()) for s in labelled} & set(found)
    assert unlabelled_images([str(tmp_path / "d" / "*.png")], []) == sorted(found + [
        str(Path(s.path).resolve()) for s in labelled])
    with pytest.raises(CaptchaError, match="nowhere: no such file or folder"):
        unlabelled_images([str(tmp_path / "nowhere")], [])


def test_label_folder_gives_its_unanswered_images(tmp_path: Path) -> None:
    make_clean_set(tmp_path / "f", 5)
    store = LabelStore(tmp_path / "f")
    store.answer(store.names[0], "label", "123")
    store.answer(store.names[1], "unreadable")
    store.answer(store.names[2], "skip")
    left = label_folder_unlabelled(str(tmp_path / "f" / "labels.csv"))
    assert [Path(p).name for p in left] == store.names[2:]  # skipped and unanswered, not the unreadable one
    assert label_folder_unlabelled(str(tmp_path / "f" / "other.csv")) == []
    make_clean_set(tmp_path / "plain", 3)
    assert label_folder_unlabelled(str(tmp_path / "plain")) == []  # no labelling session there


def test_teacher_readings_above_the_threshold_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A teacher sure and right on most held-out images, wrong and unsure on the rest: the threshold
    falls between, and of the unlabelled images only the sure readings of a plausible length are kept."""
    from captcha_crnn.infer import Prediction, Recognizer

    make_clean_set(tmp_path / "d", 40, lengths=(3, 3))
    samples = read_samples(str(tmp_path / "d"), LabelRule(sep="-"))
    truth = {s.path: s.label for s in samples}

    class Teacher:
        def predict(self, paths, errors="raise"):
            out = []
            for i, p in enumerate(paths):
                label = truth.get(p, "777")
                if i % 4 == 3:  # every fourth: unsure, and wrong on the held-out images
                    out.append(Prediction(label[::-1] + "0", 0.5))
                elif i % 5 == 4 and p in unlabelled:  # a sure reading of a length no label has
                    out.append(Prediction(label + "00", 0.99))
                else:
                    out.append(Prediction(label, 0.95))
            return out

    images = [s.path for s in samples[30:]]
    unlabelled = set(images)
    monkeypatch.setattr(Recognizer, "load", classmethod(lambda cls, *a, **k: Teacher()))
    p = pseudo_label("teacher.safetensors", samples[:10], samples[10:30], images, TrainConfig(progress=False))
    assert p.threshold == 0.95 and p.precision == 1.0 and p.read == 10
    assert p.held_out == 20 and 10 <= p.held_out_kept < 20 and p.teacher_accuracy < 1
    assert p.kept and all(truth[path] == text for path, text in p.kept), p.kept
    assert all(len(text) == 3 for _, text in p.kept)
    assert f"kept {len(p.kept)} of 10" in p.describe()


@pytest.mark.slow
@needs_ddddocr
def test_recipe_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Teacher, readings, student; the output and the other model side by side; a run killed in the student
    stage resumes there, the teacher not trained again."""
    make_clean_set(tmp_path / "d", 60, lengths=(3, 3))
    make_clean_set(tmp_path / "u", 30, seed=5, lengths=(3, 3))
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=2, batch_size=16, freeze_epochs=1, label_sep="-",
                      progress=False, unlabelled=(str(tmp_path / "u"),), checkpoint_minutes=0)
    epochs: list[str] = []

    with pytest.raises(KeyboardInterrupt):
        train(str(tmp_path / "d"), cfg, on_epoch=interrupt_at("plain", epochs))
    assert epochs == ["ddddocr", "ddddocr", "plain"]
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert set(stages) >= {"teacher", "pseudo"} and "student" not in stages
    assert stages["pseudo"]["read"] == 30 and stages["teacher"]["val_n"] == 12  # 60 labels: 20% held out
    capsys.readouterr()
    assert main(["train", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size",
                 "16", "--label-sep", "-", "--unlabelled", str(tmp_path / "u"), "--resume", "--quiet",
                 "--json"]) == 0
    io = capsys.readouterr()
    assert "stage 1/3 teacher: done in an earlier run" in io.err
    summary = json.loads(io.out.strip().splitlines()[-1])
    out = summary["recipe"]["output"]
    assert out["reader"] in ("student", "teacher") and out["why"]
    other = "teacher" if out["reader"] == "student" else "student"
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (tmp_path / "run" / f"{other}.safetensors").is_file()
    from captcha_crnn.model.format import read_metadata

    backbone = read_metadata(tmp_path / "run" / "model.safetensors")["model"]["backbone"]
    assert backbone == ("plain" if out["reader"] == "student" else "ddddocr")
    t, s = summary["recipe"]["teacher"]["val"], summary["recipe"]["student"]["val"]
    assert (out["reader"] == "student") == (s >= t - max(1 / 12, 0.005))


@pytest.mark.slow
@needs_ddddocr
def test_labels_only_recipe_trains_the_student_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Nothing unlabelled, --distil off: the student (labels only) goes first, the teacher second; no readings stage;
    a run killed in the teacher stage resumes there, the student not trained again."""
    make_clean_set(tmp_path / "d", 60, lengths=(3, 3))
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=2, batch_size=16, freeze_epochs=1, label_sep="-",
                      progress=False, checkpoint_minutes=0, distil="off")
    order: list[str] = []

    with pytest.raises(KeyboardInterrupt):
        train(str(tmp_path / "d"), cfg, on_epoch=interrupt_at("ddddocr", order))
    assert order == ["plain", "plain", "ddddocr"]
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert "student" in stages and "teacher" not in stages and "pseudo" not in stages
    capsys.readouterr()
    r = train(str(tmp_path / "d"), TrainConfig(**{**cfg.__dict__, "resume": True}))
    err = capsys.readouterr().err
    assert "stage 1/2 student: done in an earlier run" in err and "stage 2/2 teacher" in err
    assert set(r.recipe) >= {"student", "teacher", "output"} and "pseudo" not in r.recipe
