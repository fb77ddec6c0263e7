"""Teacher -> student: the start decision, the few-label split, unlabelled images (given and from a label
folder), the stages end to end with the unlabelled pool and --resume across them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import interrupt_at, make_clean_set

from captcha_crnn.cli import main
from captcha_crnn.data.label_store import LabelStore
from captcha_crnn.data.labels import LabelRule, read_samples
from captcha_crnn.errors import CaptchaError
from captcha_crnn.model import pretrained as pretrained_weights
from captcha_crnn.model.archs import READER
from captcha_crnn.training import TrainConfig, train
from captcha_crnn.training.sets import label_folder_unlabelled, split_fractions, unlabelled_images
from captcha_crnn.training.start import resolve_start

TEACHER = READER.backbone  # the teacher of clean digits: ddddocr reads them untrained, so its own head is kept
needs_ddddocr = pytest.mark.skipif(not pretrained_weights.available(),
                                   reason="the pretrained extra (ddddocr) is not installed")


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

    def start(n: int, head: str = "new") -> dict:
        changes, notes = resolve_start(TrainConfig(pretrained_head=head), n_labelled=n)
        assert changes["pretrained"] == "on"
        if "height" in changes:
            assert f"height {changes['height']}" in notes[0]
        return changes

    assert start(TUNED_HEIGHT_FROM_LABELS - 1)["height"] == 64  # its native rows
    assert start(TUNED_HEIGHT_FROM_LABELS)["height"] == start(10_000)["height"] == 48
    # auto: ddddocr's own LSTM, which reads 64 rows' features, under READER_HEAD_UNDER_LABELS; then the new head
    assert start(TUNED_HEIGHT_FROM_LABELS, "auto")["height"] == 64 and start(10_000, "auto")["height"] == 48
    assert "height" not in resolve_start(TrainConfig(height="32"), n_labelled=100)[0]  # --height wins


@needs_ddddocr
def test_a_style_ddddocr_cannot_read_gets_the_small_model_alone_with_unlabelled_images() -> None:
    from captcha_crnn.training.policy import UNKNOWN_STYLE_ZERO_SHOT
    from captcha_crnn.training.start import Probe

    def start(read: float, unlabelled: bool = True, **kw) -> tuple[dict, list[str]]:
        return resolve_start(TrainConfig(**kw), 200, lambda: Probe(read, (), (), ()), unlabelled)

    changes, notes = start(UNKNOWN_STYLE_ZERO_SHOT / 2)
    assert changes["pretrained"] == "off" and "the small model alone" in notes[0]
    assert f"reads {UNKNOWN_STYLE_ZERO_SHOT / 2:.0%} of the labelled images" in notes[0]
    assert start(UNKNOWN_STYLE_ZERO_SHOT)[0]["pretrained"] == "on"  # a style it reads: the teacher keeps its time
    assert start(0.0, unlabelled=False)[0]["pretrained"] == "on"  # labels alone: the recipe of both
    assert start(0.0, pretrained="on")[0]["pretrained"] == "on"  # asked for


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


@pytest.mark.slow
@needs_ddddocr
def test_recipe_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Teacher and student, both learning from the unlabelled images, the student read for first by the teacher;
    the output and the other model side by side; a run killed in the student stage resumes there, the teacher
    not trained again."""
    make_clean_set(tmp_path / "d", 60, lengths=(3, 3))
    make_clean_set(tmp_path / "u", 30, seed=5, lengths=(3, 3))
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=2, batch_size=16, freeze_epochs=1, label_sep="-",
                      progress=False, unlabelled=(str(tmp_path / "u"),), checkpoint_minutes=0)
    epochs: list[str] = []

    with pytest.raises(KeyboardInterrupt):
        train(str(tmp_path / "d"), cfg, on_epoch=interrupt_at("plain", epochs))
    assert epochs == [TEACHER, TEACHER, "plain"]  # clean digits: ddddocr reads them, so its own head is kept
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert "teacher" in stages and "student" not in stages
    assert stages["teacher"]["val_n"] == 12  # 60 labels: 20% held out
    teacher_history = json.loads((tmp_path / "run" / "teacher" / "history.json").read_text())["history"]
    assert all("unlabelled_used" in e for e in teacher_history)
    capsys.readouterr()
    assert main(["train", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size",
                 "16", "--label-sep", "-", "--unlabelled", str(tmp_path / "u"), "--resume", "--quiet",
                 "--json"]) == 0
    io = capsys.readouterr()
    assert "stage 1/2 teacher: done in an earlier run" in io.err
    assert f"first read by {tmp_path / 'run' / 'teacher' / 'model.safetensors'}" in io.err
    summary = json.loads(io.out.strip().splitlines()[-1])
    out = summary["recipe"]["output"]
    assert out["reader"] in ("student", "teacher") and out["why"]
    other = "teacher" if out["reader"] == "student" else "student"
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (tmp_path / "run" / f"{other}.safetensors").is_file()
    from captcha_crnn.model.format import read_metadata

    backbone = read_metadata(tmp_path / "run" / "model.safetensors")["model"]["backbone"]
    assert backbone == ("plain" if out["reader"] == "student" else TEACHER)
    t, s = summary["recipe"]["teacher"]["val"], summary["recipe"]["student"]["val"]
    assert (out["reader"] == "student") == (s >= t - max(1 / 12, 0.005))


@pytest.mark.slow
@needs_ddddocr
def test_labels_only_recipe_trains_the_student_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Nothing unlabelled: the student (labels only) goes first, the teacher second; no readings stage;
    a run killed in the teacher stage resumes there, the student not trained again."""
    make_clean_set(tmp_path / "d", 60, lengths=(3, 3))
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=2, batch_size=16, freeze_epochs=1, label_sep="-",
                      progress=False, checkpoint_minutes=0)
    order: list[str] = []

    with pytest.raises(KeyboardInterrupt):
        train(str(tmp_path / "d"), cfg, on_epoch=interrupt_at(TEACHER, order))
    assert order == ["plain", "plain", TEACHER]
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert "student" in stages and "teacher" not in stages and "pseudo" not in stages
    capsys.readouterr()
    r = train(str(tmp_path / "d"), TrainConfig(**{**cfg.__dict__, "resume": True}))
    err = capsys.readouterr().err
    assert "stage 1/2 student: done in an earlier run" in err and "stage 2/2 teacher" in err
    assert set(r.recipe) >= {"student", "teacher", "output"} and "pseudo" not in r.recipe
