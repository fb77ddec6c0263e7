"""Training configuration as a dataclass. Every field is also a `captcha-crnn train` flag: its help,
its parser and its rule live here, in the field's metadata, and the CLI is generated from them
(cli.add_config_flags). validate() applies the same rules to a TrainConfig built in Python."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..data.images import GREY_MODES
from ..errors import CaptchaError
from ..model.archs import BACKBONES, BIG, PRESETS, PRETRAINED, READER, SCRATCH
from . import policy

MIN_WIDTH = 16  # narrowest fixed input width (4 CTC frames)
Rule = Callable[[Any], "str | None"]  # None for a valid value, else what it must be


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # not NaN


def whole(lo: int) -> Rule:
    def rule(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= lo
        return None if ok else f"a whole number of at least {lo}"
    return rule


def above(lo: float, hi: float | None = None) -> Rule:
    def rule(v: Any) -> str | None:
        ok = _number(v) and v > lo and (hi is None or v <= hi)
        return None if ok else f"a number above {lo:g}" + (f" and at most {hi:g}" if hi is not None else "")
    return rule


def at_least(lo: float) -> Rule:
    return lambda v: None if _number(v) and v >= lo else f"a number of at least {lo:g}"


def fraction(v: Any) -> str | None:
    return None if _number(v) and 0 <= v < 1 else "a number from 0 up to (not including) 1"


def one_of(*choices: Any) -> Rule:
    return lambda v: None if v in choices else " or ".join(str(c) for c in choices)


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def height_problem(h: Any) -> str | None:
    """None for a valid input height, else what one must be: a multiple of 16, or "auto"."""
    ok = h == "auto" or (isinstance(h, int) and not isinstance(h, bool) and h >= 16 and h % 16 == 0)
    return None if ok else "a multiple of 16 (16, 32, 48, ...) or auto"


def width_problem(w: Any) -> str | None:
    """None for a valid input width, else what one must be: MIN_WIDTH pixels or more (a number or its
    digits), "variable" or "auto"."""
    if isinstance(w, str) and w.isdigit():
        w = int(w)
    ok = w in ("auto", "variable", None) or (isinstance(w, int) and not isinstance(w, bool) and w >= MIN_WIDTH)
    return None if ok else f"a number of pixels, at least {MIN_WIDTH}, or 'variable' or 'auto'"


def crop_problem(v: Any) -> str | None:
    return None if v is True or v is False or v == "auto" else "on, off or auto"


def augment_problem(v: Any) -> str | None:
    return None if v in ("auto", "strong") or (_number(v) and v >= 0) else "a number of at least 0, strong or auto"


# Parsers from command-line text (ValueError for text that is not of the kind).
def number_or_word(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def float_or_auto(text: str) -> float | str:
    return text if text in ("auto", "strong") else float(text)


def on_off_auto(text: str) -> bool | str:
    return {"on": True, "off": False, "auto": "auto"}[text]


GENERATED = "flag"  # a field whose `captcha-crnn train` flag cli.add_config_flags makes from its metadata


def opt(default: Any, help: str, rule: Rule | None = None, choices: tuple[Any, ...] | None = None,
        parse: Callable[[str], Any] | None = None, metavar: str | None = None, cli: str = GENERATED) -> Any:
    """A config field with what its command-line flag and its check need; `cli` names how the command line
    sets a field it takes in its own form (the DATA argument, --quiet, the labels group)."""
    if choices is not None and rule is None:
        rule = one_of(*choices)
    meta = {"help": help, "rule": rule, "choices": choices, "parse": parse, "metavar": metavar, "cli": cli}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Defaults chosen by measurement (benchmarks/learning_curve.py, benchmarks/datasets.py)."""

    data: str = opt("", "folder or CSV of labelled images", cli="the DATA argument")
    out: str = opt("runs/model", "output folder")
    epochs: int | None = opt(None, f"maximum epochs; default {policy.DEFAULT_EPOCHS}, or as many as --max-minutes "
                             "allows",
                             optional(whole(1)), parse=int)
    batch_size: int = opt(policy.BATCH_SIZE, "images per step", whole(1))
    lr: float = opt(policy.LR, "peak learning rate", above(0))
    weight_decay: float = opt(policy.WEIGHT_DECAY, "AdamW weight decay (matrices and kernels only)", at_least(0))
    warmup: float = opt(policy.WARMUP, "fraction of the run spent warming up the learning rate", fraction)
    clip: float = opt(policy.CLIP, "gradient norm clipping", above(0))
    max_minutes: float | None = opt(None, "time budget, spent to its end: the schedule fits into it, and early "
                                    "stopping only hands a stage's time to the next (a run ends early where it reads "
                                    "every held-out image right)", optional(above(0)), parse=float)
    patience: int = opt(policy.PATIENCE, "early stop after N epochs without a validation gain", whole(1), metavar="N")
    seed: int = opt(0, "seed for the split, init and augmentation")
    device: str = opt("auto", "auto: cuda when available", choices=("auto", "cpu", "cuda"))
    precision: str = opt("auto", "arithmetic of the training steps: bf16 autocast or fp32 (the saved model is "
                         "fp32 either way); auto: bf16 where the device computes it natively (CUDA, or a CPU "
                         "with avx512_bf16 or amx_bf16)", choices=("auto", "bf16", "fp32"))
    # data
    val: float | None = opt(None, f"validation fraction of the split; default {policy.VAL_SHARE:g}, or "
                            f"{policy.FEW_VAL_SHARE:g} under {policy.FEW_LABELS} labelled images", optional(fraction),
                            parse=float)
    test: float | None = opt(None, f"test fraction of the split; default {policy.TEST_SHARE:g}, or none under "
                             f"{policy.FEW_LABELS} labelled images (every label goes to training or validation)",
                             optional(fraction), parse=float)
    unlabelled: tuple[str, ...] = opt((), "images without labels (folders, files, globs; repeatable): every "
                                      "training step also learns from them, each image's confident reading "
                                      "teaching a strongly augmented copy of it (training/semi.py)",
                                      cli="--unlabelled PATH")
    semi_rule: str = opt("flex", "which unlabelled readings teach: flex (FlexMatch's per-character-class "
                         f"thresholds up to {policy.THRESHOLD:g}, lower for classes learnt slowly) or fixed (a "
                         f"reading's confidence >= {policy.THRESHOLD:g})", choices=("flex", "fixed"))
    reader: str = opt("auto", "the model `train` outputs: small (the fast from-scratch student), big (the pretrained "
                      "teacher), auto: the student when it reads the held-out labels as well as the teacher (within "
                      f"one image or {policy.OUTPUT_MARGIN:.1%}%)", choices=("small", "big", "auto"))
    val_data: str | None = opt(None, "separate validation folder/CSV (no val split)", parse=str)
    test_data: str | None = opt(None, "separate test folder/CSV (no test split)", parse=str)
    label_regex: str | None = opt(None, "label from the file name", cli="--label-regex")
    label_sep: str | None = opt(None, "label up to a separator", cli="--label-sep")
    charset: str | None = opt(None, "every character the style may hold, beside the labels' own, so the model can "
                              "read a character no label has", parse=str, metavar="CHARS")
    case: str = opt("sensitive", "insensitive: fold labels to lower case and compare case-blind",
                    choices=("sensitive", "insensitive"))
    # preprocessing ("auto" = from the data)
    height: int | str = opt("auto", "input height, a multiple of 16, or auto: the smallest of "
                            f"{'/'.join(map(str, policy.HEIGHTS))} at which each character is {policy.CHAR_PIXELS} "
                            "pixels wide (the ddddocr backbone: its tuned height from "
                            f"{policy.TUNED_HEIGHT_FROM_LABELS} labelled images, below that its native one; a backbone "
                            "file from pretrain: its own)",
                            height_problem,
                            parse=number_or_word)
    width: int | str | None = opt("auto", "input width: a number, 'variable' (keep aspect, pad) or 'auto' "
                                  "(from the data)", width_problem, parse=number_or_word)
    channels: int | str = opt("auto", "1 grey, 3 colour, auto: colour when the images carry colour (grey for the "
                              "pretrained start)", choices=(1, 3, "auto"), parse=number_or_word)
    grey: str = opt("auto", "how colour becomes grey for a grey model: contrast (the distance from the "
                    "background colour, stretched: pale coloured text turns dark; about 80 us more per image to "
                    "read), luma (plain grey), auto: contrast when the images carry colour",
                    choices=("auto", *GREY_MODES))
    crop: bool | str = opt("auto", "cut each image to the box around its text before resizing; auto: when the "
                           f"text covers under {policy.CROP_BELOW:.0%}% of images of varying sizes", crop_problem,
                           parse=on_off_auto, metavar="{on,off,auto}")
    # model
    preset: str = opt("auto", "model size of a from-scratch model (with the pretrained start: the student's); auto: "
                      f"{SCRATCH.name}, {BIG.name} from {policy.BIG_DATA:,} images",
                      one_of(*PRESETS, "auto"),  # "pretrained": the teacher's, settled by the plan, not a flag
                      choices=(*(p for p in PRESETS if p not in (PRETRAINED.name, READER.name)), "auto"))
    backbone: str = opt("auto", "convolutional part; auto: ddddocr for the pretrained start, else plain; "
                        "ddddocr-bn: its layout with batch norm, for training it from random weights (pretrain)",
                        choices=(*(b for b in BACKBONES if b != READER.backbone), "auto"))
    pretrained: str = opt("auto", "start from a captcha-pretrained backbone (ddddocr's: pip install \"captcha-crnn"
                          "[pretrained]\"; see --backbone-weights); auto: when one is at hand, the architecture is "
                          f"auto and there are {policy.PRETRAINED_MIN_LABELS} labelled images or more",
                          choices=("on", "off", "auto"))
    pretrained_head: str = opt("auto", "pretrained start: new: a new RNN and head on ddddocr's convolutions; ddddocr: "
                               "its own LSTM and classifier too (its zero-shot reading of the labels' characters), "
                               f"at its native height; auto: ddddocr under {policy.READER_HEAD_UNDER_LABELS:,} labels "
                               f"where it reads {policy.READER_HEAD_MIN_ZERO_SHOT:.0%}% of the held-out labels "
                               "untrained", choices=("auto", "new", "ddddocr"))
    backbone_weights: str = opt("auto", "pretrained start: whose weights: ddddocr (the package's) or a file from "
                                "`captcha-crnn pretrain`; auto: ddddocr where installed; naming one asks for the "
                                "pretrained start", parse=str, metavar="SOURCE")
    freeze_epochs: int = opt(policy.FREEZE_EPOCHS, "pretrained start: train only the RNN and head for the first N "
                             "passes over the labelled images", whole(0), metavar="N")
    backbone_lr: float = opt(policy.BACKBONE_LR, "pretrained start: the backbone's learning rate as a fraction of --lr",
                             above(0, 10), metavar="F")
    rnn: str = opt("gru", "recurrent layer", choices=("gru", "lstm"))
    augment: float | str = opt("auto", "augmentation strength (0 = off), or strong: the strong view's policy "
                               "(elastic and lens warps, colour, erasing; data/augment.py); auto: "
                               f"{policy.AUGMENT_SMALL:g} under {policy.SMALL_DATA} images, else "
                               f"{policy.AUGMENT_BIG:g}",
                               augment_problem, parse=float_or_auto)
    dropout: float = opt(policy.DROPOUT, "dropout before the classifier and between RNN layers", fraction)
    ema: float = opt(policy.EMA_DECAY, "validate and keep a moving average of the weights with this decay (0: off)",
                     fraction, metavar="DECAY")
    init: str | None = opt("auto", "warm start from this model (path or shipped name); auto: the shipped "
                           "synthetic model for a from-scratch run; none: random weights", metavar="MODEL")
    # run
    resume: bool = opt(False, "continue from OUT/checkpoint.pt")
    checkpoint_minutes: float = opt(5.0, "also checkpoint every M minutes within an epoch, besides every epoch end",
                                    at_least(0), metavar="M")
    progress: bool = opt(True, "progress bars", cli="--quiet turns them off")
    threads: int | None = opt(None, "CPU threads (default: all cores)", optional(whole(1)), parse=int)
    cache_dir: str | None = opt(None, "where decoded images are cached on disk for training (default OUT/cache; "
                                "reused while the data and preprocessing are unchanged); 'memory': hold them in "
                                "RAM instead", parse=str, metavar="DIR")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def validate(self) -> TrainConfig:
        """Check every option by its field's rule; CaptchaError names the option (as its flag)."""
        for f in fields(self):
            rule, value = f.metadata.get("rule"), getattr(self, f.name)
            want = rule(value) if rule else None
            if want:
                raise CaptchaError(f"--{f.name.replace('_', '-')} must be {want}, not {value!r}")
        if (self.val or 0) + (self.test or 0) >= 1:
            raise CaptchaError(f"--val must be small enough to leave training images beside --test {self.test}, "
                               f"not {self.val!r}")
        return self
