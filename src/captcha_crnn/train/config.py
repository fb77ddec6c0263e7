"""Training configuration as a dataclass; every field is also a `captcha-crnn train` flag."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TrainConfig:
    """Defaults chosen by measurement on captcha_v2 (see benchmarks/train_captcha_v2.py)."""

    data: str = ""
    out: str = "runs/model"
    epochs: int = 30
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
    height: int = 32
    width: int | str | None = "auto"
    channels: int | str = "auto"  # 1 grey, 3 colour, auto: colour when the data has colour
    # model
    preset: str = "auto"  # tiny | small | base | auto (from the data size)
    backbone: str = "plain"
    rnn: str = "gru"
    augment: float | str = "auto"  # strength; auto: 1.0 for small sets, 0.5 for large
    dropout: float = 0.1
    init: str | None = "auto"  # warm start: "auto" = the shipped `synthetic` model when present, a path, or None
    # run
    resume: bool = False
    checkpoint_minutes: float = 5.0
    progress: bool = True
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
