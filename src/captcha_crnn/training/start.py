"""What a run starts from: random weights, the shipped synthetic model, the pretrained ddddocr backbone (its
convolutions, or its whole reader), a backbone file from `captcha-crnn pretrain`, or a trained model
(`--init MODEL`). Decided once by the plan (`resolve_start`, with the one zero-shot `probe` of ddddocr on the
held-out labels) and carried out by each stage (`build_model`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..data.alphabet import Alphabet
from ..data.images import Preprocess
from ..data.labels import Sample
from ..errors import CaptchaError
from ..model import pretrained as pretrained_weights
from ..model.archs import DDDDOCR, DDDDOCR_LAYOUT, PRETRAINED, READER, SCRATCH, input_norm, preset_of
from ..model.crnn import CRNN, preset
from ..model.format import CRNNConfig
from . import policy
from .config import TrainConfig
from .policy import PRETRAINED_MIN_LABELS, READER_HEAD_MIN_ZERO_SHOT, READER_HEAD_UNDER_LABELS, TUNED_HEIGHT_FROM_LABELS

PRETRAINED_WHY = (f"measured from {PRETRAINED_MIN_LABELS} labelled images up on captcha_v2, henan_digits4 and "
                  "generic_varlen")
NAMED_INIT = ("auto", "none", "", None)  # init values that name no model


def init_model(cfg: TrainConfig) -> str | None:
    """The model --init names, or None (auto: the shipped synthetic model; none: random weights)."""
    return None if cfg.init in NAMED_INIT else cfg.init


def _from_init(cfg: TrainConfig, init: str) -> tuple[dict[str, Any], list[str]]:
    """--init MODEL: the architecture and input height of that model, its weights copied in."""
    from ..model.format import parse_metadata, read_metadata
    from ..model.zoo import resolve_model

    if cfg.pretrained == "on" or cfg.backbone_weights != "auto":
        flag = "--pretrained on" if cfg.pretrained == "on" else "--backbone-weights"
        raise CaptchaError(f"--init {init} starts from a trained model, {flag} from a pretrained backbone; drop one")
    path = resolve_model(init)
    spec = parse_metadata(read_metadata(path), str(path))
    arch = spec.arch.to_dict()
    changes: dict[str, Any] = {"pretrained": "off", "backbone": arch["backbone"], "rnn": arch["rnn"]}
    if cfg.backbone not in ("auto", arch["backbone"]):
        raise CaptchaError(f"--init {init} has the {arch['backbone']} backbone, not --backbone {cfg.backbone}")
    if cfg.preset == "auto":
        changes["preset"] = preset_of(arch) or SCRATCH.name  # else the warm start says what it could copy
    if arch["backbone"] in DDDDOCR_LAYOUT:
        changes["channels"] = PRETRAINED.channels
        if cfg.height == "auto":
            changes["height"] = spec.preprocess.height
    return changes, [f"warm start from {init} (named by --init), its architecture ({changes.get('preset', cfg.preset)} "
                     f"{arch['backbone']}+{arch['rnn']})"]


@dataclass(frozen=True)
class Probe:
    """ddddocr's zero-shot reading of the held-out labels, limited to the labels' characters: run once by the plan,
    stored in it, and reused by a stage whose first reader is ddddocr."""

    accuracy: float  # the share of `paths` read right
    paths: tuple[str, ...]
    texts: tuple[str, ...]
    confs: tuple[float, ...]


def probe(held: Sequence[Sample], charset: str, case: str, threads: int | None) -> Probe:
    """Read `held` with ddddocr's own model limited to `charset`, untrained; labels compared case-blind where
    `case` is insensitive."""
    from ..evaluate import fold
    from ..infer.ddddocr_reader import DdddocrReader
    from .semi import read_with

    blind = case == "insensitive"
    paths = [s.path for s in held]
    r = read_with(DdddocrReader(charset, threads=threads), "ddddocr", [], paths, [fold(s.label, blind) for s in held],
                  lambda t: fold(t, blind))
    return Probe(r.val_accuracy, tuple(paths), tuple(r.val_texts), tuple(r.val_confs))


def resolve_start(cfg: TrainConfig, n_labelled: int | None = None, zero_shot: Callable[[], Probe] | None = None,
                  unlabelled: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Settle --pretrained and --backbone (and, for --init, the architecture): the ddddocr backbone with its
    weights where asked for, or (auto) where installed, the architecture is left to auto (a --preset or a
    plain/resnet backbone names a from-scratch model) and the user gave at least PRETRAINED_MIN_LABELS
    labelled images; else the from-scratch default. Also the input the pretrained backbone expects, and
    whether it keeps ddddocr's RNN and classifier (`zero_shot`: the plan's probe, which it must read enough of for
    that; None: not asked). With `unlabelled` images, a style the probe reads under policy.UNKNOWN_STYLE_ZERO_SHOT of
    gets the small model alone."""
    init = init_model(cfg)
    if init is not None:
        return _from_init(cfg, init)
    weights = cfg.backbone_weights != "auto"  # naming the weights asks for the pretrained start
    if (cfg.pretrained == "on" or weights) and cfg.backbone not in ("auto", PRETRAINED.backbone):
        flag = "--pretrained on" if cfg.pretrained == "on" else "--backbone-weights"
        raise CaptchaError(f"{flag} needs --backbone {PRETRAINED.backbone} (or auto), not {cfg.backbone}")
    if weights and cfg.pretrained == "off":
        raise CaptchaError("--backbone-weights names pretrained weights, --pretrained off asks for none; drop one")
    named = cfg.backbone == PRETRAINED.backbone or weights or cfg.reader == "big"
    scratch_arch = next((f"--{k} {v}" for k, v in (("preset", cfg.preset), ("backbone", cfg.backbone))
                         if v not in ("auto", PRETRAINED.name, PRETRAINED.backbone)), None)
    colour = cfg.channels in (3, "3") and cfg.reader != "small"  # a colour student beside a grey teacher is fine
    wants = cfg.pretrained == "on" or (cfg.pretrained == "auto" and (named or not (scratch_arch or colour)))
    few = (cfg.pretrained == "auto" and not named and n_labelled is not None and n_labelled < PRETRAINED_MIN_LABELS)
    if not wants or few:
        why = (f"{n_labelled} labelled images, under the {PRETRAINED_MIN_LABELS} from which the pretrained start "
               "helps" if wants else f"{scratch_arch or '--channels 3'} names a from-scratch model")
        backbone = SCRATCH.backbone if cfg.backbone == "auto" else cfg.backbone
        return {"pretrained": "off", "backbone": backbone}, [f"from scratch: {why}"]
    source = pretrained_weights.pick_source(cfg.backbone_weights)
    if source is None:
        hint = pretrained_weights.missing_hint(cfg.backbone_weights)
        if cfg.pretrained == "on" or named:
            raise CaptchaError(hint + ("" if cfg.pretrained == "on" or weights else
                                       " (or --pretrained off for random weights)"))
        return {"pretrained": "off", "backbone": SCRATCH.backbone}, [f"from scratch: {hint}"]
    read = zero_shot().accuracy if unlabelled and zero_shot and cfg.pretrained == "auto" and not named else 1.0
    if read < policy.UNKNOWN_STYLE_ZERO_SHOT:
        return {"pretrained": "off", "backbone": SCRATCH.backbone}, [
            f"the small model alone: untrained, ddddocr reads {read:.0%} of the labelled images (under "
            f"{policy.UNKNOWN_STYLE_ZERO_SHOT:.0%}), a style the pretrained start does not know, which the small model "
            "learns faster from its own readings (training/policy.py)"]
    head, keep = _head(cfg, source, n_labelled, zero_shot)
    reader = _reader_start(cfg, source) if keep else {}  # its contradictions first
    if source != PRETRAINED.weights:
        pretrained_weights.backbone_weights(source)  # a bad file fails now, before the images are decoded
    changes: dict[str, Any] = {"pretrained": "on", "backbone": PRETRAINED.backbone, "channels": PRETRAINED.channels,
                               "backbone_weights": source}
    if cfg.height == "auto":
        changes["height"] = _backbone_height(source, n_labelled)
    changes["preset"] = PRETRAINED.name  # a --preset is the student's size
    changes["pretrained_head"] = "ddddocr" if keep else "new"
    changes.update(reader)
    why = PRETRAINED_WHY if source == PRETRAINED.weights else "named by --backbone-weights"
    if head:
        why += f"; {'' if keep else 'a new RNN and head: '}ddddocr's LSTM and classifier {head}"
    height = changes.get("height", cfg.height)  # never "auto" here: _backbone_height settled it
    return changes, [f"pretrained start from the {source} backbone ({why}), grey, height {height}"]


def _head(cfg: TrainConfig, source: str, n_labelled: int | None,
          zero_shot: Callable[[], Probe] | None) -> tuple[str, bool]:
    """Whether the pretrained start keeps ddddocr's RNN and classifier, and why ("" where nothing was asked)."""
    if cfg.pretrained_head == "ddddocr":
        return "too (--pretrained-head ddddocr)", True
    few = n_labelled is not None and n_labelled < READER_HEAD_UNDER_LABELS
    if cfg.pretrained_head != "auto" or not few or source != READER.weights or cfg.height not in (
            "auto", DDDDOCR.height):
        return "", False
    counted = f"{n_labelled} labelled images, under {READER_HEAD_UNDER_LABELS:,}"
    if zero_shot is None:
        return f"too ({counted})", True
    read = zero_shot().accuracy
    if read < READER_HEAD_MIN_ZERO_SHOT:
        return (f"not kept: untrained it reads {read:.0%} of the labelled images, under "
                f"{READER_HEAD_MIN_ZERO_SHOT:.0%}"), False
    return f"too ({counted}; untrained it reads {read:.0%} of the labelled images)", True


def _reader_start(cfg: TrainConfig, source: str) -> dict[str, Any]:
    """--pretrained-head ddddocr: ddddocr's whole reader, whose LSTM reads its native height's features."""
    if source != READER.weights:
        raise CaptchaError(f"--pretrained-head ddddocr needs ddddocr's backbone, not --backbone-weights {source}")
    if cfg.height not in ("auto", DDDDOCR.height, str(DDDDOCR.height)):
        raise CaptchaError(f"--pretrained-head ddddocr reads at ddddocr's height {DDDDOCR.height}, not --height "
                           f"{cfg.height}")
    return {"backbone": READER.backbone, "preset": READER.name, "rnn": READER.rnn, "height": DDDDOCR.height}


def _backbone_height(source: str, n_labelled: int | None) -> int:
    """The input height for the pretrained backbone `source`: ddddocr's tuned height from
    TUNED_HEIGHT_FROM_LABELS labelled images, else the height the backbone was trained at."""
    if source == PRETRAINED.weights and PRETRAINED.tuned_height and (
            n_labelled is None or n_labelled >= TUNED_HEIGHT_FROM_LABELS):
        return PRETRAINED.tuned_height
    return pretrained_weights.native_height(source)


def model_config(cfg: TrainConfig, pre: Preprocess, alphabet: Alphabet) -> CRNNConfig:
    """The network a stage trains: its preset's sizes for its input and alphabet."""
    return preset(cfg.preset, num_classes=alphabet.num_classes, in_channels=pre.channels, height=pre.height,
                  backbone=cfg.backbone, rnn=cfg.rnn, dropout=cfg.dropout, input_norm=input_norm(cfg.backbone))


def warm_source(cfg: TrainConfig, mcfg: CRNNConfig) -> tuple[str | None, str]:
    """The model a stage's weights are copied from, and why: --init's, the shipped synthetic one for a from-scratch
    stage of its architecture (--init auto), or None (a pretrained backbone's stage, --init none, or no fit)."""
    from ..model.format import parse_metadata, read_metadata
    from ..model.warmstart import architecture_differs
    from ..model.zoo import zoo_path

    if init_model(cfg) is not None:
        return cfg.init, "named by --init"
    if cfg.pretrained == "on":
        return None, f"the {cfg.backbone_weights} backbone, {cfg.pretrained_head} head"
    if cfg.init != "auto":  # "none" (or empty): init_model names no model
        return None, "random weights (--init none)"
    shipped = SCRATCH.weights
    path = zoo_path(shipped) if shipped else None
    if path is None:
        return None, f"random weights: no shipped {shipped} model"
    diff = architecture_differs(parse_metadata(read_metadata(path), str(path)).arch.to_dict(), mcfg.to_dict())
    if diff:
        return None, f"random weights: the shipped {shipped} model's architecture differs ({', '.join(diff)})"
    return shipped, "the shipped model of this architecture"


def build_model(cfg: TrainConfig, mcfg: CRNNConfig, alphabet: Alphabet, warm: str | None,
                resume: bool) -> tuple[CRNN, str]:
    """The stage's CRNN and what its weights start from: the checkpoint's (`resume`: loaded later), the
    pretrained backbone of cfg.backbone_weights (with ddddocr's own RNN and classifier where
    cfg.pretrained_head says so), or the `warm` model the plan chose, or random."""
    from ..model.pretrained import load_pretrained, load_reader_head
    from ..model.warmstart import warm_start

    model = CRNN(mcfg)
    if resume:
        return model, "from the checkpoint"
    if cfg.pretrained == "on":
        note = "pretrained " + load_pretrained(model, cfg.backbone_weights)
        head = load_reader_head(model, alphabet) if cfg.pretrained_head == "ddddocr" else "new RNN and head"
        return model, f"{note}; {head}"
    if warm is None:
        return model, "random (from scratch)"
    return model, f"warm start from {warm}: " + warm_start(model, alphabet, warm)
