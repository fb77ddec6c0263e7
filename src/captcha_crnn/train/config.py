"""Training configuration as a dataclass; every field is also a `captcha-crnn train` flag."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import CaptchaError

MIN_WIDTH = 16  # narrowest fixed input width (4 CTC frames)


def height_problem(h: Any) -> str | None:
    """None for a valid input height, else what one must be: a multiple of 16, or "auto"."""
    ok = h == "auto" or (isinstance(h, int) and not isinstance(h, bool) and h >= 16 and h % 16 == 0)
    return None if ok else "a multiple of 16 (16, 32, 48, ...) or auto"


def width_problem(w: Any) -> str | None:
    """None for a valid input width, else what one must be: MIN_WIDTH pixels or more (a number or its
    digits, as before), "variable" or "auto"."""
    if isinstance(w, str) and w.isdigit():
        w = int(w)
    ok = w in ("auto", "variable", None) or (isinstance(w, int) and not isinstance(w, bool) and w >= MIN_WIDTH)
    return None if ok else f"a number of pixels, at least {MIN_WIDTH}, or 'variable' or 'auto'"


@dataclass
class TrainConfig:
    """Defaults chosen by measurement on captcha_v2 (see benchmarks/train_captcha_v2.py)."""

    data: str = ""
    out: str = "runs/model"
    epochs: int = 60
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-2
    warmup: float = 0.15  # fraction of the run spent warming up
    clip: float = 5.0
    max_minutes: float | None = None
    patience: int = 10
    seed: int = 0
    device: str = "auto"
    # data
    val: float = 0.1
    test: float = 0.1
    val_data: str | None = None
    test_data: str | None = None
    label_regex: str | None = None
    label_sep: str | None = None
    case: str = "sensitive"  # sensitive | insensitive (labels folded to lower case)
    # preprocessing ("auto" = from the data)
    height: int | str = "auto"  # a multiple of 16; auto: 32, taller when characters would be under 24 px wide
    width: int | str | None = "auto"
    channels: int | str = "auto"  # 1 grey, 3 colour, auto: colour when the data has colour
    crop: bool | str = "auto"  # cut each image to its text first; auto: when the text box covers under 30% of the image
    # model
    preset: str = "auto"  # tiny | small | base | auto (from the data size)
    backbone: str = "auto"  # plain | resnet | ddddocr | auto (ddddocr for the pretrained start, else plain)
    pretrained: str = "auto"  # on | off | auto: start from the captcha-pretrained ddddocr backbone where installed
    freeze_epochs: int = 2  # pretrained start: epochs with the backbone frozen (only the RNN and head learn)
    backbone_lr: float = 0.1  # pretrained start: the backbone's learning rate as a fraction of --lr
    rnn: str = "gru"
    augment: float | str = "auto"  # strength; auto: 1.0 for small sets, 0.5 for large
    dropout: float = 0.1
    ema: float = 0.99  # decay of the weight average that is validated and saved (0: the raw weights)
    init: str | None = "auto"  # warm start: "auto" = the shipped `synthetic` model when present, a path, or None
    # run
    resume: bool = False
    checkpoint_minutes: float = 5.0
    progress: bool = True
    threads: int | None = None
    cache_dir: str | None = None  # decoded-image cache folder; None: OUT/cache; "memory": hold them in RAM

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def validate(self) -> TrainConfig:
        """Check every option's range; CaptchaError names the option (as its command-line flag)."""
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("patience", self.patience, 1)
        _at_least("freeze_epochs", self.freeze_epochs, 0)
        if not _number(self.backbone_lr) or not 0 < self.backbone_lr <= 10:
            _bad("backbone_lr", self.backbone_lr, "a number above 0 and at most 10")
        for name, problem in (("height", height_problem), ("width", width_problem)):
            want = problem(getattr(self, name))
            if want:
                _bad(name, getattr(self, name), want)
        if self.threads is not None:
            _at_least("threads", self.threads, 1)
        for name in ("lr", "clip") + (("max_minutes",) if self.max_minutes is not None else ()):
            if not _number(getattr(self, name)) or getattr(self, name) <= 0:
                _bad(name, getattr(self, name), "a number above 0")
        if not _number(self.checkpoint_minutes) or self.checkpoint_minutes < 0:
            _bad("checkpoint_minutes", self.checkpoint_minutes, "a number of at least 0")
        for name in ("val", "test", "dropout", "warmup", "ema"):
            if not _number(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                _bad(name, getattr(self, name), "a number from 0 up to (not including) 1")
        if self.val + self.test >= 1:
            _bad("val", self.val, f"small enough to leave training images beside --test {self.test}")
        if not _number(self.weight_decay) or self.weight_decay < 0:
            _bad("weight_decay", self.weight_decay, "a number of at least 0")
        self._check_choices()
        return self

    def _check_choices(self) -> None:
        if self.channels not in ("auto", 1, 3, "1", "3"):
            _bad("channels", self.channels, "1, 3 or auto")
        if self.crop not in ("auto", True, False):
            _bad("crop", self.crop, "on, off or auto")
        if self.augment != "auto" and (not _number(self.augment) or self.augment < 0):
            _bad("augment", self.augment, "a number of at least 0 or auto")
        for name, choices in (("preset", ("tiny", "small", "base", "pretrained", "auto")),
                              ("backbone", ("plain", "resnet", "ddddocr", "auto")),
                              ("pretrained", ("on", "off", "auto")),
                              ("rnn", ("gru", "lstm")), ("case", ("sensitive", "insensitive")),
                              ("device", ("auto", "cpu", "cuda"))):
            if getattr(self, name) not in choices:
                _bad(name, getattr(self, name), " or ".join(choices))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # not NaN


def _bad(name: str, value: Any, want: str) -> None:
    raise CaptchaError(f"--{name.replace('_', '-')} must be {want}, not {value!r}")


def _at_least(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        _bad(name, value, f"a whole number of at least {lo}")
