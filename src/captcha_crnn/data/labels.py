"""Labelled samples from a folder (label in the file name) or a CSV file (filename,label)."""

from __future__ import annotations

import csv
import glob
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import CaptchaError
from ..files import atomic_write
from .images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Sample:
    """One labelled image on disk."""

    path: str
    label: str


@dataclass
class LabelRule:
    """How a label is read from a file name: the stem, a regex (first group) or up to a separator."""

    regex: str | None = None
    sep: str | None = None

    def __post_init__(self) -> None:
        if self.regex:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise CaptchaError(f"--label-regex {self.regex!r} is not a valid regular expression ({e})") from None

    def label_of(self, path: Path) -> str | None:
        stem = path.stem
        if self.regex:
            m = re.search(self.regex, path.name)
            if not m:
                return None
            return m.group(1) if m.groups() else m.group(0)
        if self.sep:
            return stem.split(self.sep, 1)[0]
        return stem


def list_images(paths: list[str] | str, recursive: bool = False) -> list[Path]:
    """Expand files, folders and globs into a sorted list of image paths."""
    if isinstance(paths, str):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            it = path.rglob("*") if recursive else path.iterdir()
            out.extend(sorted(q for q in it if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            out.append(path)
        elif any(ch in p for ch in "*?["):
            hits = sorted(Path(q) for q in glob.glob(p, recursive=True) if Path(q).is_file())
            if not hits:
                raise CaptchaError(f"{p}: no files match this pattern")
            out.extend(hits)
        else:
            raise CaptchaError(f"{p}: no such file or folder")
    return out


def read_folder(folder: str | Path, rule: LabelRule | None = None) -> list[Sample]:
    """Samples from a folder of images whose names carry their labels.

    Files whose name gives no label are skipped with one warning that counts them.
    """
    rule = rule or LabelRule()
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptchaError(f"{folder}: no such folder")
    files = list_images(str(folder))
    if not files:
        raise CaptchaError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    samples, unlabeled = [], []
    for f in files:
        label = rule.label_of(f)
        (samples.append(Sample(str(f), label)) if label else unlabeled.append(f.name))
    if not samples:
        raise CaptchaError(f"{folder}: no file name gave a label (e.g. {unlabeled[0]})")
    if unlabeled:
        warn(f"{folder}: skipped {len(unlabeled)} of {len(files)} images whose name gave no label "
             f"(e.g. {unlabeled[0]})")
    return samples


def warn(msg: str) -> None:
    """One warning line on stderr (bad rows and files are reported, counted and skipped)."""
    print(f"warning: {msg}", file=sys.stderr)


def read_csv(csv_path: str | Path) -> list[Sample]:
    """Samples from a CSV with header filename,label (paths relative to the CSV's folder).

    A file named twice is an error naming both lines (which label is right cannot be guessed).
    Rows with an empty file name or an empty label are skipped with one counted warning; rows
    naming missing files are kept here and skipped, counted, when the images are loaded.
    """
    csv_path = Path(csv_path)
    rows = _csv_rows(csv_path)
    header = [h.strip().lower() for h in rows[0]]
    if "filename" not in header or "label" not in header:
        raise CaptchaError(f"{csv_path}: header must have columns 'filename' and 'label'")
    fi, li = header.index("filename"), header.index("label")
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    empty: list[int] = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(fi, li):
            raise CaptchaError(f"{csv_path}: line {n} has {len(row)} columns, expected {len(header)}")
        name, label = row[fi].strip(), row[li]
        if not name or not label:
            empty.append(n)
            continue
        key = os.path.normpath(name)
        if key in seen:
            raise CaptchaError(f"{csv_path}: line {n}: duplicate file name {name} (first on line {seen[key]}); "
                               "keep one row per image")
        seen[key] = n
        samples.append(Sample(str(csv_path.parent / name), label))
    if empty:
        warn(f"{csv_path}: skipped {len(empty)} rows with an empty file name or label (line {empty[0]}"
             f"{', ...' if len(empty) > 1 else ''})")
    if not samples:
        raise CaptchaError(f"{csv_path}: no rows after the header" if not empty else f"{csv_path}: no usable rows")
    return samples


def _csv_rows(csv_path: Path) -> list[list[str]]:
    if not csv_path.is_file():
        raise CaptchaError(f"{csv_path}: no such file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CaptchaError(f"{csv_path}: cannot read CSV ({e})") from None
    if not rows:
        raise CaptchaError(f"{csv_path}: empty CSV")
    return rows


def write_csv(samples: list[Sample], path: str | Path) -> Path:
    """A labels.csv of the samples with absolute paths (what read_csv reads back), written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["filename", "label"])
    for s in samples:
        w.writerow([str(Path(s.path).resolve()), s.label])
    atomic_write(path, lambda f: f.write(buf.getvalue().encode("utf-8")))
    return Path(path)


def read_samples(source: str | Path, rule: LabelRule | None = None) -> list[Sample]:
    """Samples from a folder, a CSV file, or a folder holding labels.csv."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return read_csv(source)
    if source.is_dir() and (source / "labels.csv").is_file() and rule is None:
        return read_csv(source / "labels.csv")
    if source.is_dir():
        return read_folder(source, rule)
    if source.exists():
        raise CaptchaError(f"{source}: expected a folder of images or a CSV file")
    raise CaptchaError(f"{source}: no such file or folder")
