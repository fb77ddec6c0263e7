"""Metrics for read text against the truth: sequence and character accuracy, CER, confusions."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .infer import Recognizer


def align(truth: str, pred: str) -> tuple[int, int, list[tuple[str, str]]]:
    """Levenshtein alignment: (edit distance, truth chars matched, substitution pairs)."""
    n, m = len(truth), len(pred)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost = truth[i - 1] != pred[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
    i, j, matched, subs = n, m, 0, []
    while i > 0 and j > 0:
        if d[i][j] == d[i - 1][j - 1] + (truth[i - 1] != pred[j - 1]):
            if truth[i - 1] == pred[j - 1]:
                matched += 1
            else:
                subs.append((truth[i - 1], pred[j - 1]))
            i, j = i - 1, j - 1
        elif d[i][j] == d[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return d[n][m], matched, subs


@dataclass
class Report:
    """Evaluation figures for one set of images."""

    n: int
    sequence_accuracy: float
    char_accuracy: float
    cer: float
    by_length: dict[str, dict[str, float]]
    confusions: list[tuple[str, str, int]]
    case_insensitive: dict[str, float] | None = None  # the same figures ignoring case, where case matters
    selective: list[dict[str, float]] | None = None  # accuracy and coverage at confidence thresholds
    sure_misses: list[dict[str, Any]] | None = None  # misreadings at confidence >= SURE (eval), surest first
    outside_alphabet: int = 0  # images whose labels hold characters the model cannot read (counted as misread)
    sure_threshold: float | None = None  # the least confidence whose accepted readings are PRECISION right

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["confusions"] = [{"truth": t, "pred": p, "count": c} for t, p, c in self.confusions]
        if self.sure_misses is None:
            del d["sure_misses"]
        return d


def fold(s: str, case_insensitive: bool) -> str:
    return s.lower() if case_insensitive else s


def score(truths: Sequence[str], preds: Sequence[str], case_insensitive: bool = False) -> Report:
    """Compare predictions with the truth."""
    if len(truths) != len(preds):
        raise ValueError("truths and preds differ in length")
    exact = edits = matched = total = 0
    lengths: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    conf: Counter[tuple[str, str]] = Counter()
    for t, p in zip(truths, preds):
        t, p = fold(t, case_insensitive), fold(p, case_insensitive)
        ok = t == p
        exact += ok
        lengths[len(t)][0] += 1
        lengths[len(t)][1] += ok
        dist, mat, subs = (0, len(t), []) if ok else align(t, p)
        edits += dist
        matched += mat
        total += len(t)
        conf.update(subs)
    n = len(truths)
    return Report(
        n=n,
        sequence_accuracy=exact / n if n else 0.0,
        char_accuracy=matched / total if total else 0.0,
        cer=edits / total if total else 0.0,
        by_length={str(k): {"n": v[0], "sequence_accuracy": v[1] / v[0]} for k, v in sorted(lengths.items())},
        confusions=[(a, b, c) for (a, b), c in conf.most_common(10)],
    )


THRESHOLDS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)  # confidence thresholds of the selective-accuracy table


def selective(truths: Sequence[str], preds: Sequence[str], confidences: Sequence[float],
              case_insensitive: bool = False, thresholds: Sequence[float] = THRESHOLDS) -> list[dict[str, float]]:
    """Per threshold P: coverage (share of readings with confidence >= P, the ones accepted) and the
    sequence accuracy of those accepted (1.0 when none are): what `predict --min-confidence P` gives."""
    right = [fold(t, case_insensitive) == fold(p, case_insensitive) for t, p in zip(truths, preds)]
    out = []
    for th in thresholds:
        kept = [r for r, c in zip(right, confidences) if c >= th]
        out.append({"threshold": th, "coverage": len(kept) / max(1, len(right)),
                    "accuracy": sum(kept) / len(kept) if kept else 1.0, "accepted": len(kept)})
    return out


PRECISION = 0.99  # the share of accepted readings that must be right: `serve --keep-unsure`'s default threshold
UNKNOWN_THRESHOLD = 0.9  # a model that stores no selective figures (its readings are then unsure below this)


def sure_threshold(truths: Sequence[str], preds: Sequence[str], confidences: Sequence[float],
                   precision: float = PRECISION, case_insensitive: bool = False) -> float:
    """The least confidence at which the readings accepted (confidence >= it) are `precision` right: the
    readings under it are the unsure ones. 1.0 when no cut reaches `precision`."""
    right = [fold(t, case_insensitive) == fold(p, case_insensitive) for t, p in zip(truths, preds)]
    best, n_right = 1.0, 0
    for k, (c, r) in enumerate(sorted(zip(confidences, right), key=lambda cr: -cr[0]), start=1):
        n_right += r
        if n_right >= precision * k:
            best = float(c)
    return best


def model_threshold(info: dict[str, Any], precision: float = PRECISION) -> tuple[float, str]:
    """(threshold, where it comes from) of a model file's metadata: the stored `sure_threshold` of its held-out
    labels, else the least threshold of its stored selective table that reaches `precision`."""
    metrics = info.get("metrics") or {}
    for split in ("val", "test"):
        sure = (metrics.get(split) or {}).get("sure")
        if sure:
            return float(sure["threshold"]), f"{precision:.0%} precision on its {sure['n']} {split} images"
    for split in ("test", "val"):
        rows = (metrics.get(split) or {}).get("selective") or []
        ok = [r["threshold"] for r in rows if r["accuracy"] >= precision and r["accepted"]]
        if ok:
            return float(min(ok)), f"{precision:.0%} precision on its {split} images (selective table)"
    return UNKNOWN_THRESHOLD, "the model stores no held-out figures"


def format_selective(rows: Sequence[dict[str, float]]) -> str:
    """One line: accuracy / coverage at each threshold."""
    return "selective accuracy (min confidence: accuracy of accepted, coverage): " + ", ".join(
        f"{r['threshold']:g}: {r['accuracy']:.2%} of {r['coverage']:.1%}" for r in rows)


# A misreading this confident is worth a look at its label: the shipped captcha_v2 model's two on its set are
# cdcb3.png, whose picture shows "edcb3" (a wrong label), and ep85x.png, read "cp85x" (a hard image).
SURE = 0.99
SURE_LISTED = 10  # the text report lists this many; --json all of them


def sure_misses(paths: Sequence[str], truths: Sequence[str], preds: Sequence[str], confidences: Sequence[float],
                case_insensitive: bool = False) -> list[dict[str, Any]]:
    """The misreadings read with confidence >= SURE, surest first: {file, label, read, confidence}."""
    found = [{"file": str(f), "label": t, "read": p, "confidence": round(float(c), 4)}
             for f, t, p, c in zip(paths, truths, preds, confidences)
             if c >= SURE and fold(t, case_insensitive) != fold(p, case_insensitive)]
    return sorted(found, key=lambda m: -m["confidence"])


def format_sure_misses(misses: list[dict[str, Any]]) -> list[str]:
    """The text lines of sure_misses (none when there are none)."""
    if not misses:
        return []
    lines = [f"sure misreadings (confidence >= {SURE}; check these labels): {len(misses)}"]
    lines += [f"  {m['file']}: label {m['label']!r}, read {m['read']!r} ({m['confidence']:.3f})"
              for m in misses[:SURE_LISTED]]
    if len(misses) > SURE_LISTED:
        lines.append(f"  ... and {len(misses) - SURE_LISTED} more (--json lists them all)")
    return lines


def format_report(r: Report, split: str = "") -> str:
    """A few human-readable lines."""
    head = f"{split}: " if split else ""
    lines = [
        f"{head}n={r.n}  sequence accuracy {r.sequence_accuracy:.2%}  "
        f"char accuracy {r.char_accuracy:.2%}  CER {r.cer:.4f}",
        "by label length: " + ", ".join(
            f"{k}: {v['sequence_accuracy']:.1%} (n={v['n']})" for k, v in r.by_length.items()),
    ]
    if r.case_insensitive:
        ci = r.case_insensitive
        lines.append(f"ignoring case: sequence accuracy {ci['sequence_accuracy']:.2%}  "
                     f"char accuracy {ci['char_accuracy']:.2%}  CER {ci['cer']:.4f}")
    if r.selective:
        lines.append(format_selective(r.selective))
    if r.sure_threshold is not None:
        lines.append(f"unsure under confidence {r.sure_threshold:.4g} (the readings at or above it are "
                     f"{PRECISION:.0%} right; `serve --keep-unsure` keeps those under it)")
    if r.confusions:
        lines.append("most confused (truth->read): " + ", ".join(f"{t}->{p} x{c}" for t, p, c in r.confusions))
    lines += format_sure_misses(r.sure_misses or [])
    if r.outside_alphabet:
        lines.append(f"{r.outside_alphabet} of {r.n} images have characters outside the model's alphabet (counted "
                     "as misread; `train --charset` declares a style's whole alphabet)")
    return "\n".join(lines)


def evaluate_model(
    recognizer: Recognizer,
    data: str,
    beam: int = 1,
    length: int | None = None,
    charset: str | None = None,
    label_regex: str | None = None,
    label_sep: str | None = None,
    case_insensitive: bool = False,
    progress: bool = True,
) -> tuple[Report, Any, list[str]]:
    """Read every labelled image in a folder or CSV with a Recognizer; (report, images, predictions). An image whose
    label has a character outside the model's alphabet is read and counted as misread (a few labels may miss a
    style's rare characters); the report says how many there were."""
    from .data.dataset import load_samples
    from .data.labels import LabelRule, read_samples
    from .errors import CaptchaError

    rule = LabelRule(label_regex, label_sep) if (label_regex or label_sep) else None
    samples = read_samples(data, rule)
    alphabet = recognizer.alphabet
    def known(c: str) -> bool:
        folded = (c.lower(), c.upper()) if case_insensitive else ()
        return c in alphabet.index or any(f in alphabet.index for f in folded)

    ds = load_samples(samples, recognizer.preprocess, "reading", progress)
    if not len(ds):
        raise CaptchaError(f"{data}: no readable images")
    read = recognizer.read_arrays(ds.images, beam, length, charset)
    preds = [p.text for p in read]
    rep = score_both(ds.labels, preds, alphabet.chars, case_insensitive)
    confidences = [p.confidence for p in read]
    rep.selective = selective(ds.labels, preds, confidences, case_insensitive)
    rep.sure_misses = sure_misses(ds.paths, ds.labels, preds, confidences, case_insensitive)
    rep.sure_threshold = sure_threshold(ds.labels, preds, confidences, case_insensitive=case_insensitive)
    rep.outside_alphabet = sum(not all(known(c) for c in label) for label in ds.labels)
    return rep, ds, preds


def has_both_cases(chars: str) -> bool:
    """Whether some letter appears both in lower and in upper case."""
    return any(c.islower() and c.upper() in chars for c in chars)


def score_both(truths: Sequence[str], preds: Sequence[str], alphabet: str, case_insensitive: bool = False) -> Report:
    """score(), plus the case-blind figures when the alphabet has letters of both cases."""
    rep = score(truths, preds, case_insensitive)
    if not case_insensitive and has_both_cases(alphabet):
        ci = score(truths, preds, True)
        rep.case_insensitive = {"sequence_accuracy": ci.sequence_accuracy, "char_accuracy": ci.char_accuracy,
                                "cer": ci.cer}
    return rep
