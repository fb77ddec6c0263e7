"""The training plan: every decision of a run, settled once, before training, from the data and what the
user asked for (TrainConfig, which stays as asked).

`Plan.resolve` reads the labelled set and the unlabelled pool, checks the options against each other
(`contradiction`), decides the start (start.resolve_start, called here only), the stages and their shares
of the time budget, and each stage's settings: architecture, input height, colour, grey, crop,
augmentation, precision and the semi-supervised rule. The plan is printed once as one block, written to
OUT/plan.json and into each model's metadata; the stages read their settings from it and nothing else
rewrites a TrainConfig.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data.labels import Sample, write_csv
from ..errors import CaptchaError
from ..files import atomic_write
from ..model.archs import PRETRAINED, SCRATCH
from . import policy
from .autoconfig import choose
from .build import pick_device, pick_precision
from .config import TrainConfig
from .data import choose_preprocess, load_data
from .log import log
from .start import resolve_start
from .unlabelled import label_folder_unlabelled, unlabelled_images, write_list

PLAN = "plan.json"
RESUME_MAY_CHANGE = ("resume", "max_minutes", "epochs", "progress", "threads", "checkpoint_minutes", "data")
SPLIT = "split"  # OUT/split/{train,val,test}.csv: the recipe's one split, read by every stage
UNLABELLED = "unlabelled.txt"  # OUT/split/unlabelled.txt: the pool, one path a line

# Options that contradict each other: (test on the asked config, the one-line error). One table, one test.
CONTRADICTIONS: list[tuple[Any, str]] = [
    (lambda c: c.reader == "big" and c.pretrained == "off",
     "--reader big is the pretrained model, --pretrained off asks for none; drop one"),
    (lambda c: c.reader == "big" and c.preset not in ("auto", PRETRAINED.name),
     "--reader big is the pretrained model, --preset names the size of a from-scratch one; drop one"),
    (lambda c: c.reader == "big" and c.channels in (3, "3"),
     "--reader big is the pretrained model, which reads grey images; drop --channels 3"),
    (lambda c: c.pretrained == "on" and c.channels in (3, "3") and c.reader != "small",
     "--pretrained on reads grey images; drop --channels 3 (or add --reader small for a colour student)"),
    (lambda c: c.distil == "on" and c.pretrained == "off",
     "--distil on needs the pretrained teacher, --pretrained off asks for none; drop one"),
    (lambda c: c.distil == "on" and c.reader == "big",
     "--distil on teaches the small model, --reader big outputs the pretrained one; drop one"),
    (lambda c: c.val_data is not None and c.val is not None,
     "--val-data gives the validation set, --val a share of the split for it; drop one"),
    (lambda c: c.test_data is not None and c.test is not None,
     "--test-data gives the test set, --test a share of the split for it; drop one"),
]


def contradiction(cfg: TrainConfig) -> str | None:
    """The first CONTRADICTIONS error that `cfg` meets, or None."""
    return next((why for test, why in CONTRADICTIONS if test(cfg)), None)


@dataclass(frozen=True)
class Stage:
    """One model trained: its name, what it is, its share of the budget (None: what the stages before left),
    whether early stopping may end it (a stage that hands its unused time on), and its settled settings."""

    name: str
    what: str
    share: float | None
    hands_on: bool
    settings: TrainConfig

    def run_settings(self, minutes: float | None, resume: bool) -> TrainConfig:
        """The settings this stage runs with: its minutes, decided when it starts, and whether it resumes."""
        return replace(self.settings, max_minutes=minutes, resume=resume)


@dataclass(frozen=True)
class Plan:
    """Every decision of one run; the stages read their settings from here."""

    asked: TrainConfig
    split: tuple[int, int, int]  # labelled images: train, validation, test
    split_how: str
    unlabelled: int
    stages: tuple[Stage, ...]
    notes: tuple[str, ...]  # each decision with its reason
    output: str  # how the output is chosen
    parts: tuple[tuple[Sample, ...], ...] = field(default=(), repr=False)  # train, val, test (not in plan.json)
    pool: tuple[str, ...] = field(default=(), repr=False)  # the unlabelled images (not in plan.json)

    @classmethod
    def resolve(cls, data: str, config: TrainConfig, single: bool = False) -> Plan:
        """Settle every decision for training on `data` as `config` asks; `single` (or a distributed run,
        --reader big, a from-scratch start) trains one model, else the teacher -> student recipe."""
        asked = replace(config, data=str(data))
        why = contradiction(asked)
        if why:
            raise CaptchaError(why)
        stored = Path(asked.out) / PLAN
        if asked.resume and stored.is_file():
            return cls.load(stored, asked)
        tr, va, te, how = load_data(asked)
        n = len(tr) + len(va) + (0 if asked.test_data else len(te))  # the labels given to learn from, not --test-data
        changes, notes = resolve_start(asked, n, va or tr[:50])  # va: the held-out labels ddddocr is tried on
        device = pick_device(asked.device)
        precision, precision_why = pick_precision(asked.precision, device)
        notes.append(f"precision: {precision} ({precision_why})")
        base = replace(asked, **changes, precision=precision)
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        pool = all_unlabelled(asked, tr + va + te)
        sizes, parts = (len(tr), len(va), len(te)), (tuple(tr), tuple(va), tuple(te))
        if single or distributed or changes["pretrained"] != "on" or asked.reader == "big":
            if asked.distil == "on":
                notes.append("--distil on: not used (" + ("a distributed run trains one model" if distributed else
                             "the start is the small model itself") + "; there is no teacher to learn from)")
            if pool:
                base = replace(base, unlabelled=(str(Path(asked.out) / SPLIT / UNLABELLED),))
            settings = settle(base, tr, notes)
            what = "one model" + (" on the labels and the unlabelled images" if pool else "")
            stage = Stage("model", what, None, False, settings)
            return cls(asked, sizes, how, len(pool), (stage,), tuple(notes), "the one model", (), tuple(pool))
        stages = recipe_stages(asked, base, tr, va, te, pool, notes)
        rule = ("--reader small: the student" if asked.reader == "small" else
                "the student where it reads the held-out labels as well as the teacher (within one image or "
                f"{policy.OUTPUT_MARGIN:.1%}), else the teacher")
        return cls(asked, sizes, how, len(pool), stages, tuple(notes), rule, parts, tuple(pool))

    @classmethod
    def load(cls, path: Path, asked: TrainConfig) -> Plan:
        """The plan a run began with (its plan.json), for --resume: the run goes on as it began, with `asked`'s
        budget; an option asked differently now is named."""
        d = json.loads(path.read_text())
        now = json.loads(json.dumps(asked.to_dict(), default=str))  # as plan.json holds it: tuples as lists
        for k, v in d["asked"].items():
            if k not in RESUME_MAY_CHANGE and now.get(k, v) != v:
                log(f"--{k.replace('_', '-')} {now[k]}: this run began with {v} and goes on as it began")
        may = {k: getattr(asked, k) for k in RESUME_MAY_CHANGE if k not in ("data", "checkpoint_minutes")}
        stages = tuple(Stage(s["name"], s["what"], s["share"], s["hands_on"],
                             replace(TrainConfig.from_dict(s["settings"]), **may)) for s in d["stages"])
        began = replace(TrainConfig.from_dict(d["asked"]), **may)
        return cls(began, tuple(d["split"]), d["split_how"], d["unlabelled"], stages, tuple(d["notes"]), d["output"])

    def describe(self) -> str:
        """The plan as one block of lines, printed before training."""
        tr, va, te = self.split
        budget = f"{self.asked.max_minutes:.2f} min" if self.asked.max_minutes else "no time budget"
        lines = [f"plan: {tr} train, {va} validation, {te} test labelled images ({self.split_how}), "
                 f"{self.unlabelled} unlabelled; {budget}"]
        lines += [f"  {note}" for note in self.notes]
        for i, s in enumerate(self.stages, 1):
            c = s.settings
            share = f"{s.share:.0%} of the budget" if s.share is not None else "the rest of the budget"
            lines.append(f"  stage {i}/{len(self.stages)} {s.name}: {s.what}; {share}"
                         f"{', early stop hands its time on' if s.hands_on else ''}")
            lines.append(f"    {c.preset} {c.backbone}+{c.rnn}, height {c.height}, "
                         f"{'colour' if c.channels in (3, '3') else 'grey (' + c.grey + ')'}, crop {c.crop}, "
                         f"augment {c.augment}, {c.precision}"
                         + (f", unlabelled rule {c.semi_rule}" if c.unlabelled else ""))
        lines.append(f"  output: {self.output}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("parts", "pool")}
        d["stages"] = [{**asdict(s), "settings": s.settings.to_dict()} for s in self.stages]
        return d

    def write(self) -> None:
        """Write the files the stages read (OUT/split/: the recipe's split, the pool's list) and OUT/plan.json,
        and print the plan."""
        out = Path(self.asked.out)
        for name, part in zip(("train", "val", "test"), self.parts):
            if part:
                write_csv(list(part), out / SPLIT / f"{name}.csv")
        if self.pool:
            write_list(list(self.pool), out / SPLIT / UNLABELLED)
        text = json.dumps(self.to_dict(), indent=1, default=str)
        atomic_write(out / PLAN, lambda f: f.write(text.encode()))
        log(self.describe())


def all_unlabelled(cfg: TrainConfig, labelled: list[Sample]) -> list[str]:
    """cfg.unlabelled's images and, for a `captcha-crnn label` folder, its images without an answer."""
    images = unlabelled_images(list(cfg.unlabelled), exclude=labelled)
    extra = label_folder_unlabelled(cfg.data)
    if extra:
        log(f"label folder: {len(extra)} images without an answer are used as unlabelled")
    return sorted(set(images) | set(extra))


def settle(cfg: TrainConfig, samples: list[Sample], notes: list[str]) -> TrainConfig:
    """`cfg` with every data-dependent "auto" settled from the training samples (autoconfig.choose), and the
    input height (data.choose_preprocess); the reasons are added to `notes`."""
    changes, why = choose(cfg, samples)
    cfg = replace(cfg, **changes)
    notes.extend(why)
    if cfg.height == "auto":
        cfg = replace(cfg, height=choose_preprocess(cfg, samples).height)
    return cfg


# the student: the small from-scratch model (the shipped models' architecture), its own input settings
STUDENT: dict[str, Any] = {"pretrained": "off", "backbone": SCRATCH.backbone, "backbone_weights": "auto",
                           "init": "auto"}


def recipe_stages(asked: TrainConfig, base: TrainConfig, tr: list[Sample], va: list[Sample], te: list[Sample],
                  pool: list[str], notes: list[str]) -> tuple[Stage, ...]:
    """The teacher (the pretrained start) and the student (the small model), in the order the data calls for,
    each trained on the split's files in OUT/<stage>."""
    out = Path(base.out)
    files = out / SPLIT
    test = str(files / "test.csv") if te else None
    common = dict(data=str(files / "train.csv"), val_data=str(files / "val.csv"), test_data=test, val=None,
                  test=None if test else 0.0, label_regex=None, label_sep=None,
                  cache_dir=base.cache_dir or str(out / "cache"))  # one cache: a stage reuses what another decoded
    if pool:
        common["unlabelled"] = (str(files / UNLABELLED),)
    teacher_model = str(out / "teacher" / "model.safetensors")
    teacher = replace(base, **common, out=str(out / "teacher"))
    # the student's input and size are the user's where given (the start settled the teacher's)
    student = replace(base, **common, **STUDENT, out=str(out / "student"), preset=asked.preset, rnn=asked.rnn,
                      height=asked.height, channels=asked.channels, grey=asked.grey)
    teacher, student = settle(teacher, tr, notes), settle(student, tr, [])  # the plan prints the teacher's reasons
    if pool:
        if asked.distil == "on":
            notes.append("--distil on: not used (with unlabelled images the student learns the teacher's readings "
                         "of them)")
        student = replace(student, first_reader=teacher_model)
        return (Stage("teacher", "the pretrained start on the labels and the unlabelled images", policy.TEACHER_SHARE,
                      True, teacher),
                Stage("student", "the small model on the labels and the unlabelled images, read first by the "
                      "teacher", None, False, student))
    if base.distil == "on":
        return (Stage("teacher", "the pretrained start on the labels", policy.TEACHER_SHARE, True, teacher),
                Stage("student", "the small model on the labels and the teacher's per-step readings of them", None,
                      False, replace(student, teacher=teacher_model)))
    early = len(va) >= policy.EARLY_STOP_MIN_VAL  # only then can its early stop tell a level curve
    student = replace(student, patience=min(base.patience, policy.PLATEAU_EPOCHS))
    what = ("the small model on the labels" +
            (f", until its curve levels off ({student.patience} epochs)" if early else ""))
    return (Stage("student", what, policy.LABELS_ONLY_STUDENT_SHARE, True, student),
            Stage("teacher", "the pretrained start on the labels", None, False, teacher))
