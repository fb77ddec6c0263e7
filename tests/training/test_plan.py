"""The training plan: contradictions are one-line errors (one table), every decision is settled once, written
to plan.json and the model's metadata, the user's TrainConfig is never changed, and a budget is spent."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_clean_set

from captcha_crnn.cli import main
from captcha_crnn.errors import CaptchaError
from captcha_crnn.model import pretrained as pretrained_weights
from captcha_crnn.training import TrainConfig, policy, train
from captcha_crnn.training.loop import Run
from captcha_crnn.training.plan import CONTRADICTIONS, PLAN, Plan, contradiction, seconds
from captcha_crnn.training.run import Recipe

# every contradictory combination of options, and the words of its one-line error
CONTRADICTORY = [
    (dict(reader="big", pretrained="off"), "--reader big is the pretrained model, --pretrained off"),
    (dict(reader="big", preset="tiny"), "--reader big is the pretrained model, --preset names"),
    (dict(reader="big", channels=3), "--reader big is the pretrained model, which reads grey"),
    (dict(pretrained="on", channels=3), "--pretrained on reads grey images; drop --channels 3"),
    (dict(val_data="v.csv", val=0.2), "--val-data gives the validation set"),
    (dict(test_data="t.csv", test=0.2), "--test-data gives the test set"),
]


def test_the_table_covers_every_contradiction() -> None:
    found = {contradiction(TrainConfig(**kw)) for kw, _ in CONTRADICTORY}
    assert found == {why for _, why in CONTRADICTIONS}
    assert contradiction(TrainConfig()) is None and contradiction(TrainConfig(reader="small", channels=3)) is None


@pytest.mark.parametrize("options,words", CONTRADICTORY)
def test_a_contradiction_is_a_one_line_error(tmp_path: Path, options: dict, words: str) -> None:
    with pytest.raises(CaptchaError, match=words.replace("(", r"\(")) as e:
        Plan.resolve(str(tmp_path), TrainConfig(out=str(tmp_path / "o"), **options))
    assert "\n" not in str(e.value)


def test_the_cli_names_a_contradiction_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_clean_set(tmp_path / "d", 12, lengths=(3, 3))
    assert main(["train", str(tmp_path / "d"), "--label-sep", "-", "--reader", "big", "--pretrained", "off"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--reader big is the pretrained model" in err and "Traceback" not in err


def test_the_plan_is_written_printed_once_and_stored(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_clean_set(tmp_path / "d", 40, lengths=(3, 3))
    cfg = TrainConfig(out=str(tmp_path / "o"), epochs=1, batch_size=16, label_sep="-", progress=False)
    asked = asdict(cfg)
    r = train(str(tmp_path / "d"), cfg)
    assert asdict(cfg) == asked  # what the user asked stays as asked
    err = capsys.readouterr().err
    assert err.count("plan: ") == 1 and err.count("seeded split") == 1
    plan = json.loads((tmp_path / "o" / PLAN).read_text())
    (stage,) = plan["stages"]  # 40 labels: the small model alone
    settings = stage["settings"]
    assert "auto" not in (settings["height"], settings["channels"], settings["crop"], settings["preset"],
                          settings["precision"], settings["augment"])
    assert plan["asked"]["height"] == "auto" and plan["split"] == [32, 8, 0]
    from captcha_crnn.model.format import read_metadata

    assert read_metadata(r.model_path)["training"]["plan"]["stages"][0]["settings"] == settings
    # the stage's wiring is the plan's: its input, alphabet and weights, settled before the first step
    pre = stage["preprocess"]
    assert pre["height"] == settings["height"] and pre["width"]
    assert stage["alphabet"] == "".join(sorted(stage["alphabet"]))
    assert stage["warm_start"] == "synthetic" and stage["seconds"] is None and stage["first_reader"] is None
    assert f"width {pre['width']}" in err and f"alphabet ({len(stage['alphabet'])})" in err


@pytest.mark.skipif(not pretrained_weights.available(), reason="the pretrained extra (ddddocr) is not installed")
def test_the_recipe_plan_names_both_stages_and_the_students_input(tmp_path: Path) -> None:
    make_clean_set(tmp_path / "d", 60, lengths=(3, 3))
    plan = Plan.resolve(str(tmp_path / "d"), TrainConfig(out=str(tmp_path / "o"), label_sep="-", max_minutes=2))
    first, last = plan.stages  # nothing unlabelled: the student first, the teacher takes the rest
    assert (first.name, last.name) == ("student", "teacher")
    assert first.stops_early and not last.stops_early
    assert first.seconds + last.seconds == pytest.approx(120) and first.seconds == pytest.approx(60)
    assert first.warm_start == "synthetic" and last.warm_start is None and "ddddocr" in last.warm_why
    assert first.settings.pretrained == "off" and last.settings.pretrained == "on"
    assert first.settings.patience == 3 and first.settings.out.endswith("student")


def test_a_separate_test_set_does_not_count_towards_the_labels_learnt_from(tmp_path: Path) -> None:
    from captcha_crnn.data.labels import LabelRule, read_samples, write_csv

    make_clean_set(tmp_path / "d", 25, lengths=(3, 3))
    make_clean_set(tmp_path / "t", 60, seed=3, lengths=(3, 3))
    test = write_csv(read_samples(str(tmp_path / "t"), LabelRule(sep="-")), tmp_path / "test.csv")
    plan = Plan.resolve(str(tmp_path / "d"), TrainConfig(out=str(tmp_path / "o"), label_sep="-", test_data=str(test)))
    assert [s.name for s in plan.stages] == ["model"] and plan.stages[0].settings.pretrained == "off"


def _stop(stops_early: bool, budget: float | None, best: float, since: int) -> str:
    """Run.stop_reason for a run `since` epochs past its best, at the end of an epoch, 100 validation images."""
    st = SimpleNamespace(epoch=since + 1, batch=0, best={"epoch": 1, "val_sequence_accuracy": best})
    run = SimpleNamespace(st=st, cfg=TrainConfig(patience=2), epochs=100, seconds=budget,
                          data=SimpleNamespace(val=[0] * 100), budget=budget, stops_early=stops_early, now=lambda: 1.0)
    return Run.stop_reason(run)  # type: ignore[arg-type]


def test_early_stopping_ends_a_budgeted_run_only_where_it_hands_its_time_on() -> None:
    assert _stop(stops_early=True, budget=60.0, best=0.5, since=3).startswith("early stop")  # the next stage gets it
    assert _stop(stops_early=False, budget=60.0, best=0.5, since=3) == ""  # the last stage spends the budget
    assert _stop(stops_early=False, budget=60.0, best=1.0, since=3).startswith("early stop")  # nothing left to learn
    assert _stop(stops_early=False, budget=None, best=0.5, since=3).startswith("early stop")  # no budget to spend


def _recipe(minutes: float, elapsed: float) -> Recipe:
    """A recipe `elapsed` seconds into a run of `minutes`."""
    r = Recipe.__new__(Recipe)
    r.cfg, r.elapsed = TrainConfig(max_minutes=minutes), lambda: elapsed  # type: ignore[method-assign]
    return r


def test_the_stage_seconds_add_up_to_the_budget_and_time_is_handed_on() -> None:
    from captcha_crnn.training.plan import Stage

    stages = tuple(Stage(n, "", s, False, TrainConfig(), {}, "ab") for n, s in (("teacher", 0.4), ("student", 0.6)))
    planned = seconds(stages, 10)
    assert [s.seconds for s in planned] == [pytest.approx(240), pytest.approx(360)]
    assert sum(s.seconds for s in planned) == pytest.approx(600)
    # the first stage ends at its planned end; the second gets what the first left (or loses what it overran)
    assert _recipe(10, 5).budget(240, last=False) == pytest.approx(235)  # the plan's own 5 s count too
    assert _recipe(10, 200).budget(600, last=True) == pytest.approx(400)  # 40 s left by an early stop
    assert _recipe(10, 250).budget(600, last=True) == pytest.approx(350)  # 10 s overrun
    # the last stage's floor: a first stage that overran by far leaves it LAST_STAGE_FLOOR of the budget
    assert _recipe(10, 590).budget(600, last=True) == pytest.approx(policy.LAST_STAGE_FLOOR * 600)
    assert _recipe(0, 5).budget(0, last=True) is None  # no budget: no seconds


def test_charset_declares_characters_no_label_has(tmp_path: Path) -> None:
    """--charset: the style's whole alphabet, so the model can read a character its few labels lack; the label page
    passes its own characters to "Train now"."""
    from captcha_crnn.service.labelling import train_options

    make_clean_set(tmp_path / "d", 40, lengths=(3, 3))
    cfg = TrainConfig(out=str(tmp_path / "o"), label_sep="-", pretrained="off", charset="0123456789xy")
    (stage,) = Plan.resolve(str(tmp_path / "d"), cfg).stages
    assert stage.alphabet == "0123456789xy"
    folded = replace(cfg, charset="XY", case="insensitive")
    assert Plan.resolve(str(tmp_path / "d"), folded).stages[0].alphabet.endswith("xy")
    assert train_options("abc") == ("--max-minutes", "3", "--charset", "abc") and "--charset" not in train_options(None)
