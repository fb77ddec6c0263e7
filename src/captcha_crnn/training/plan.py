"""The training plan: every decision of a run, settled once, before the first step, from the data and what the
user asked for (TrainConfig, which stays as asked).

`Plan.resolve` reads the labelled set and the unlabelled pool, checks the options against each other
(`contradiction`), runs the one zero-shot probe of ddddocr where a decision needs it, decides the start
(start.resolve_start), the device and precision, the stages in order with their seconds of the budget, and each
stage's settings: architecture, preprocessing (height, width, minimum width, colour, grey, crop), alphabet,
augmentation, semi-supervised rule, first reader and warm start. The plan is printed as one block, written to
OUT/plan.json and into each model's metadata. Two things are left to the run, as rules the plan names: a stage that
ends early (or overruns) hands its seconds on, and the output is the student or the teacher by their validation.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..data.alphabet import Alphabet
from ..data.images import Preprocess
from ..data.labels import Sample, write_csv
from ..errors import CaptchaError
from ..evaluate import fold
from ..files import atomic_write
from ..model.archs import PRETRAINED, SCRATCH
from ..progress import log
from . import policy
from .config import TrainConfig
from .sets import choose, choose_preprocess, label_folder_unlabelled, load_data, unlabelled_images, write_list
from .start import Probe, model_config, probe, resolve_start, warm_source

PLAN = "plan.json"
RESUME_MAY_CHANGE = ("resume", "max_minutes", "epochs", "progress", "threads", "checkpoint_minutes", "data")
SPLIT = "split"  # OUT/split/{train,val,test}.csv: the run's one split, read by every stage
UNLABELLED = "unlabelled.txt"  # OUT/split/unlabelled.txt: the pool, one path a line
HAND_ON = ("a stage that stops early hands its unused seconds to the next; one that overruns takes them from the "
           f"next, which keeps at least {policy.LAST_STAGE_FLOOR:.0%} of the budget")

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
    (lambda c: c.val_data is not None and c.val is not None,
     "--val-data gives the validation set, --val a share of the split for it; drop one"),
    (lambda c: c.test_data is not None and c.test is not None,
     "--test-data gives the test set, --test a share of the split for it; drop one"),
]


def contradiction(cfg: TrainConfig) -> str | None:
    """The first CONTRADICTIONS error that `cfg` meets, or None."""
    return next((why for test, why in CONTRADICTIONS if test(cfg)), None)


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CaptchaError("--device cuda: no CUDA device is available")
    return name


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU features that make bf16 matrix products native


def cpu_bf16_flag() -> str | None:
    """The CPU feature (from /proc/cpuinfo) that computes bf16 natively, or None (or not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def pick_precision(name: str, device: str) -> tuple[str, str]:
    """("bf16" or "fp32", why) for the --precision setting on `device`."""
    if name != "auto":
        return name, "asked for"
    if device.startswith("cuda"):
        ok = torch.cuda.is_bf16_supported()
        return ("bf16", "the GPU supports it") if ok else ("fp32", "the GPU has no bf16")
    flag = cpu_bf16_flag()
    return ("bf16", f"the CPU has {flag}") if flag else ("fp32", "the CPU has no native bf16")


@dataclass(frozen=True)
class Stage:
    """One model trained: what it is, its seconds of the budget (None: no budget), whether an early stop may end
    it (handing its time on), its settings, and its wiring: input, alphabet, who reads its pool first, and the
    model its weights are copied from."""

    name: str
    what: str
    seconds: float | None
    stops_early: bool
    settings: TrainConfig
    preprocess: dict[str, Any]  # Preprocess.to_dict()
    alphabet: str
    first_reader: str | None = None  # "ddddocr" (the plan's probe readings), a model file, or None: its own EMA
    warm_start: str | None = None  # the model whose weights it starts from (None: pretrained backbone or random)
    warm_why: str = ""

    @property
    def pre(self) -> Preprocess:
        return Preprocess.from_dict(self.preprocess)


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
    rules: tuple[str, ...] = ()  # what the run decides as it goes, and by which rule
    probe: Probe | None = None  # ddddocr's zero-shot reading of the held-out labels, where a decision needed it
    parts: tuple[tuple[Sample, ...], ...] = field(default=(), repr=False)  # train, val, test (not in plan.json)
    pool: tuple[str, ...] = field(default=(), repr=False)  # the unlabelled images (OUT/split/unlabelled.txt)

    @classmethod
    def resolve(cls, data: str, config: TrainConfig) -> Plan:
        """Settle every decision for training on `data` as `config` asks: one model (a from-scratch start,
        --reader big, or torchrun), else the teacher -> student recipe."""
        asked = replace(config, data=str(data))
        why = contradiction(asked)
        if why:
            raise CaptchaError(why)
        stored = Path(asked.out) / PLAN
        if asked.resume and stored.is_file():
            return cls.load(stored, asked)
        tr, va, te, how = load_data(asked)
        n = len(tr) + len(va) + (0 if asked.test_data else len(te))  # the labels given to learn from, not --test-data
        labels = [s.label for s in tr] + [fold(asked.charset or "", asked.case == "insensitive")]  # and --charset
        alphabet = Alphabet.from_labels(labels)
        pool = all_unlabelled(asked, tr + va + te)
        probed: list[Probe] = []
        def zero_shot() -> Probe:  # run once, on the held-out labels first, then training ones (all unseen by it)
            if not probed:
                probed.append(probe((va + tr)[:policy.PROBE_IMAGES], alphabet.chars, asked.case, asked.threads))
            return probed[0]

        changes, notes = resolve_start(asked, n, zero_shot, bool(pool))
        device = pick_device(asked.device)
        precision, precision_why = pick_precision(asked.precision, device)
        notes.append(f"precision: {precision} ({precision_why})")
        base = replace(asked, **changes, precision=precision)
        first = first_reader(pool, zero_shot, notes)
        ctx = Context(asked, tr, alphabet, pool, asked.max_minutes)
        one = int(os.environ.get("WORLD_SIZE", "1")) > 1 or changes["pretrained"] != "on" or asked.reader == "big"
        if one:
            if pool:
                base = replace(base, unlabelled=(str(Path(asked.out) / SPLIT / UNLABELLED),))
            what = "one model" + (" on the labels and the unlabelled images" if pool else "")
            stages = (ctx.stage("model", what, 1.0, False, base, notes, first),)
            output, parts = "the one model", ()
        else:
            stages = recipe_stages(ctx, base, va, te, notes, first)
            output = ("--reader small: the student" if asked.reader == "small" else
                      "the student where it reads the held-out labels as well as the teacher (within one image or "
                      f"{policy.OUTPUT_MARGIN:.1%}), else the teacher")
            parts = (tuple(tr), tuple(va), tuple(te))
        rules = (HAND_ON,) if len(stages) > 1 and asked.max_minutes else ()
        return cls(asked, (len(tr), len(va), len(te)), how, len(pool), stages, tuple(notes), output, rules,
                   probed[0] if probed else None, parts, tuple(pool))

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
        stages = tuple(Stage(**{**s, "settings": replace(TrainConfig.from_dict(s["settings"]), **may)})
                       for s in d["stages"])
        if asked.max_minutes != d["asked"]["max_minutes"]:
            stages = seconds(stages, asked.max_minutes)  # the shares as planned, of the budget asked now
        began = replace(TrainConfig.from_dict(d["asked"]), **may)
        return cls(began, tuple(d["split"]), d["split_how"], d["unlabelled"], stages, tuple(d["notes"]), d["output"],
                   tuple(d.get("rules", ())))  # the probe's readings are read again where a stage needs them

    def describe(self) -> str:
        """The plan as one block of lines, printed before training."""
        tr, va, te = self.split
        budget = f"{self.asked.max_minutes:.2f} min" if self.asked.max_minutes else "no time budget"
        lines = [f"plan: {tr} train, {va} validation, {te} test labelled images ({self.split_how}), "
                 f"{self.unlabelled} unlabelled; {budget}"]
        lines += [f"  {note}" for note in self.notes]
        for i, s in enumerate(self.stages, 1):
            c, p = s.settings, s.pre
            time = f"{s.seconds:.0f} s" if s.seconds is not None else "no budget"
            lines.append(f"  stage {i}/{len(self.stages)} {s.name}: {s.what}; {time}"
                         f"{', early stop hands its time on' if s.stops_early else ''}")
            width = p.width or f"variable (at least {p.min_width})"
            lines.append(f"    {c.preset} {c.backbone}+{c.rnn}, height {p.height}, width {width}, "
                         f"{'colour' if p.channels == 3 else 'grey (' + p.grey + ')'}, crop {p.crop}, "
                         f"augment {c.augment}, {c.precision}; alphabet ({len(s.alphabet)}) {s.alphabet}")
            lines.append(f"    weights: {s.warm_start + ' (' + s.warm_why + ')' if s.warm_start else s.warm_why}"
                         + (f"; unlabelled rule {c.semi_rule}, read first by {s.first_reader or 'its own EMA'}"
                            if c.unlabelled else ""))
        lines += [f"  rule: {r}" for r in self.rules]
        lines.append(f"  output: {self.output}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("parts", "pool", "probe")}
        d["stages"] = [{**asdict(s), "settings": s.settings.to_dict()} for s in self.stages]
        d["probe"] = {"accuracy": self.probe.accuracy, "images": len(self.probe.paths)} if self.probe else None
        return d

    def write(self) -> None:
        """Write the files the stages read (OUT/split/: the split, the pool's list) and OUT/plan.json, and print
        the plan."""
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


def first_reader(pool: list[str], zero_shot: Any, notes: list[str]) -> str | None:
    """Who reads the pool before a stage's own EMA (the student's is the teacher, set in recipe_stages): ddddocr
    where it is installed and reads ZERO_SHOT_MIN of the held-out labels untrained, else the EMA from the start."""
    from ..infer import ddddocr_reader

    if not pool or not ddddocr_reader.available():
        return None
    read = zero_shot().accuracy
    enough = read >= policy.ZERO_SHOT_MIN
    notes.append(f"first reader of the pool: {'ddddocr' if enough else 'each model its own EMA'} (ddddocr reads "
                 f"{read:.1%} of the labelled images untrained; {policy.ZERO_SHOT_MIN:.0%} needed)")
    return "ddddocr" if enough else None


@dataclass
class Context:
    """What every stage of one plan is settled from."""

    asked: TrainConfig
    train: list[Sample]
    alphabet: Alphabet
    pool: list[str]
    minutes: float | None

    def stage(self, name: str, what: str, share: float, stops_early: bool, cfg: TrainConfig, notes: list[str],
              first: str | None) -> Stage:
        """A stage with every data-dependent "auto" of `cfg` settled from the training samples (colour, crop, model
        size, augmentation, then the input size), its weights' source and its share of the budget in seconds."""
        cfg, pre = settle(cfg, self.train, notes)
        warm, warm_why = warm_source(cfg, model_config(cfg, pre, self.alphabet))
        secs = share * self.minutes * 60 if self.minutes else None
        return Stage(name, what, secs, stops_early, cfg, pre.to_dict(), self.alphabet.chars,
                     first if self.pool else None, warm, warm_why)


def settle(cfg: TrainConfig, samples: list[Sample], notes: list[str]) -> tuple[TrainConfig, Preprocess]:
    """`cfg` with every data-dependent "auto" settled from the training samples (sets.choose: colour, crop, model
    size, augmentation), and the input they give (sets.choose_preprocess); the reasons are added to `notes`."""
    changes, why = choose(cfg, samples)
    cfg = replace(cfg, **changes)
    notes.extend(why)
    pre = choose_preprocess(cfg, samples)
    return replace(cfg, height=pre.height), pre


def seconds(stages: tuple[Stage, ...], minutes: float | None) -> tuple[Stage, ...]:
    """The stages with their shares of `minutes` in seconds: each keeps its planned share of the total, so the
    seconds add up to the budget."""
    total = sum(s.seconds or 0.0 for s in stages)
    return tuple(replace(s, seconds=(s.seconds or 0.0) / total * minutes * 60 if minutes and total else None)
                 for s in stages)


# the student: the small from-scratch model (the shipped models' architecture), its own input settings
STUDENT: dict[str, Any] = {"pretrained": "off", "backbone": SCRATCH.backbone, "backbone_weights": "auto",
                           "init": "auto"}


def recipe_stages(ctx: Context, base: TrainConfig, va: list[Sample], te: list[Sample], notes: list[str],
                  first: str | None) -> tuple[Stage, ...]:
    """The teacher (the pretrained start) and the student (the small model), in the order the data calls for,
    each trained on the split's files in OUT/<stage>."""
    asked, out = ctx.asked, Path(base.out)
    files = out / SPLIT
    test = str(files / "test.csv") if te else None
    common = dict(data=str(files / "train.csv"), val_data=str(files / "val.csv"), test_data=test, val=None,
                  test=None if test else 0.0, label_regex=None, label_sep=None,
                  cache_dir=base.cache_dir or str(out / "cache"))  # one cache: a stage reuses what another decoded
    if ctx.pool:
        common["unlabelled"] = (str(files / UNLABELLED),)
    teacher = replace(base, **common, out=str(out / "teacher"))
    # the student's input and size are the user's where given (the start settled the teacher's)
    student = replace(base, **common, **STUDENT, out=str(out / "student"), preset=asked.preset, rnn=asked.rnn,
                      height=asked.height, channels=asked.channels, grey=asked.grey)
    teacher_model = str(out / "teacher" / "model.safetensors")
    if ctx.pool:
        share = policy.TEACHER_SHARE
        return (ctx.stage("teacher", "the pretrained start on the labels and the unlabelled images", share, True,
                          teacher, notes, first),
                ctx.stage("student", "the small model on the labels and the unlabelled images, read first by the "
                          "teacher", 1 - share, False, student, [], teacher_model))
    early = len(va) >= policy.EARLY_STOP_MIN_VAL  # only then can its early stop tell a level curve
    student = replace(student, patience=min(base.patience, policy.PLATEAU_EPOCHS))
    what = ("the small model on the labels" +
            (f", until its curve levels off ({student.patience} epochs)" if early else ""))
    share = policy.LABELS_ONLY_STUDENT_SHARE
    return (ctx.stage("student", what, share, True, student, [], None),
            ctx.stage("teacher", "the pretrained start on the labels", 1 - share, False, teacher, notes, None))
