"""Distillation: the teacher's steps put onto the student's, the loss, the same augmentation for both,
a run with a teacher end to end, and the labels-only recipe that distils."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import interrupt_at, make_clean_set, render_clean

from captcha_crnn.data.alphabet import Alphabet
from captcha_crnn.decode.ctc import greedy_decode
from captcha_crnn.errors import CaptchaError
from captcha_crnn.model.archs import READER
from captcha_crnn.model.crnn import CRNN
from captcha_crnn.model.zoo import zoo_path
from captcha_crnn.training import TrainConfig, pretrained_weights, train
from captcha_crnn.training.data import prepare_data
from captcha_crnn.training.distil import Teacher, class_map, kd_loss, to_student_steps
from captcha_crnn.training.plan import Plan
from captcha_crnn.training.stage import train_model

needs_ddddocr = pytest.mark.skipif(not pretrained_weights.available(),
                                   reason="the pretrained extra (ddddocr) is not installed")


def peaky(spikes: dict[int, int], steps: int, classes: int) -> torch.Tensor:
    """(steps, classes) distributions: blank everywhere but a 0.97 spike of class k at step t."""
    q = torch.full((steps, classes), 0.01 / (classes - 1))
    q[:, 0] = 0.99
    for t, k in spikes.items():
        q[t] = 0.03 / (classes - 1)
        q[t, k] = 0.97
    return q / q.sum(1, keepdim=True)


def read(q: torch.Tensor) -> list[int]:
    return greedy_decode(q.log()).indices


@pytest.mark.parametrize("teacher_steps,student_steps,gap", [(48, 32, 3), (48, 24, 4), (30, 30, 2), (16, 40, 2)])
def test_student_steps_keep_the_teachers_reading(teacher_steps: int, student_steps: int, gap: int) -> None:
    # "1 1 2 2": repeated characters need a blank step between their spikes on the student's side too
    for start in range(gap):
        spikes = {start + 2 + gap * i: k for i, k in enumerate([1, 1, 2, 2])}
        q = peaky(spikes, teacher_steps, 4)
        out = to_student_steps(q, student_steps)
        assert out.shape == (student_steps, 4)
        assert torch.allclose(out.sum(1), torch.ones(student_steps))
        assert read(out) == [1, 1, 2, 2], (start, out.argmax(1).tolist())
        assert out.max(1).values.min() > 0.9  # a spike keeps its height (an average would halve it)


def test_kd_loss_is_zero_only_where_the_student_matches() -> None:
    torch.manual_seed(0)
    targets = torch.softmax(torch.randn(2, 6, 5), -1)
    lengths = torch.tensor([6, 4])
    same = (targets.log() * 2.0).log_softmax(-1)  # student log-probs whose softmax at T=2 is the targets
    assert kd_loss(same, targets, lengths).item() == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(2, 6, 5).log_softmax(-1)
    assert kd_loss(other, targets, lengths).item() > 0.01
    past = other.clone()
    past[1, 4:] = torch.randn(2, 5).log_softmax(-1)  # steps past the second image's length do not count
    assert kd_loss(past, targets, lengths).item() == pytest.approx(kd_loss(other, targets, lengths).item())


def test_class_map_follows_the_characters() -> None:
    assert class_map(Alphabet("abc"), Alphabet("cax")).tolist() == [0, 3, 1, -1]


def test_teacher_reads_the_view_the_student_is_augmented_to(tmp_path: Path) -> None:
    make_clean_set(tmp_path / "d", 24, lengths=(3, 3))
    asked = TrainConfig(data=str(tmp_path / "d"), out=str(tmp_path / "o"), label_sep="-", pretrained="off",
                        progress=False, cache_dir="memory")
    cfg = Plan.resolve(asked.data, asked, single=True).stages[0].settings
    data = prepare_data(cfg, None)
    t = Teacher(str(zoo_path("synthetic")), data.train, data.alphabet, cfg, "cpu")
    idx = list(range(8))
    x, widths = t.batch(idx)
    _, student_widths = data.train.batch(idx)
    lens = CRNN.output_lengths(student_widths)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    a = t.targets(x, widths, state, 1.0, lens, int(lens.max()), False)
    b = t.targets(x, widths, state, 1.0, lens, int(lens.max()), False)
    c = t.targets(x, widths, torch.Generator().manual_seed(4).get_state(), 1.0, lens, int(lens.max()), False)
    d = t.targets(x, widths, state, 0.0, lens, int(lens.max()), False)
    assert torch.allclose(a, b) and not torch.allclose(a, c) and not torch.allclose(a, d)
    assert a.shape == (8, int(lens.max()), data.alphabet.num_classes)
    assert torch.allclose(a.sum(-1)[0, : lens[0]], torch.ones(int(lens[0])))


def test_a_run_with_a_teacher_learns_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_clean_set(tmp_path / "d", 40, lengths=(3, 3))
    cfg = TrainConfig(out=str(tmp_path / "o"), epochs=2, batch_size=16, label_sep="-", pretrained="off",
                      progress=False, teacher=str(zoo_path("synthetic")), checkpoint_minutes=0)
    r = train_model(str(tmp_path / "d"), cfg)
    assert "distillation: " in capsys.readouterr().err
    losses = [h["train_loss"] for h in r.history]
    assert all(loss == loss and loss > 0 for loss in losses)  # finite: CTC plus the KL term
    with pytest.raises(CaptchaError, match="missing.safetensors"):
        missing = {"teacher": str(tmp_path / "missing.safetensors"), "out": str(tmp_path / "o2")}
        train_model(str(tmp_path / "d"), TrainConfig(**{**cfg.__dict__, **missing}))


def test_a_teacher_must_read_every_training_character(tmp_path: Path) -> None:
    make_clean_set(tmp_path / "d", 20, lengths=(3, 3))
    render_clean("1l2").save(tmp_path / "d" / "1l2-99.png")  # the shipped synthetic model has no "l"
    cfg = TrainConfig(out=str(tmp_path / "o"), epochs=1, label_sep="-", pretrained="off", progress=False,
                      teacher=str(zoo_path("synthetic")))
    with pytest.raises(CaptchaError, match="lacks 'l'"):
        train_model(str(tmp_path / "d"), cfg)


@pytest.mark.slow
@needs_ddddocr
def test_labels_only_recipe_distils_after_the_teacher(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--distil on, nothing unlabelled: the teacher goes first, the student learns from it; a run killed in
    the student stage resumes there in the order it began (whatever --distil says then), the teacher not
    trained again."""
    make_clean_set(tmp_path / "d", 60, lengths=(3, 3))
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=2, batch_size=16, freeze_epochs=1, label_sep="-",
                      progress=False, checkpoint_minutes=0, distil="on")
    order: list[str] = []

    with pytest.raises(KeyboardInterrupt):
        train(str(tmp_path / "d"), cfg, on_epoch=interrupt_at("plain", order))
    assert order == [READER.backbone, READER.backbone, "plain"]  # the teacher: ddddocr's whole reader
    err = capsys.readouterr().err
    assert "stage 2/2 student: the small model on the labels and the teacher's per-step readings" in err
    assert "distillation: " in err
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert "teacher" in stages and "student" not in stages
    assert [s["name"] for s in json.loads((tmp_path / "run" / "plan.json").read_text())["stages"]] == [
        "teacher", "student"]
    r = train(str(tmp_path / "d"), TrainConfig(**{**cfg.__dict__, "resume": True, "distil": "off"}))
    err = capsys.readouterr().err
    assert "--distil off: this run began with on and goes on as it began" in err
    assert "stage 1/2 teacher: done in an earlier run" in err and "stage 2/2 student" in err
    assert "distillation: " in err  # the resumed student still learns from the teacher
    assert set(r.recipe) >= {"student", "teacher", "output"} and "pseudo" not in r.recipe


def test_distil_on_says_when_it_goes_unused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_clean_set(tmp_path / "d", 20, lengths=(3, 3))
    cfg = TrainConfig(out=str(tmp_path / "o"), epochs=1, batch_size=16, label_sep="-",
                      progress=False, distil="on", checkpoint_minutes=0)  # 20 labels: the small model alone
    train(str(tmp_path / "d"), cfg)
    assert "--distil on: not used (the start is the small model itself" in capsys.readouterr().err
