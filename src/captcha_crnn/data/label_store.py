"""The answers of a labelling session, kept on disk after every one: DIR/labels.csv (filename,label:
the format `train` reads) and DIR/labels.state.json (images skipped or marked unreadable).

Every write re-reads both files under a lock (a thread lock and an flock on DIR/.labels.lock), applies
one answer and replaces the files atomically (temporary file, fsync, rename), so a killed server
loses at most the answer in flight and two pages on one folder never drop each other's answers.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CaptchaError
from ..files import atomic_write
from .labels import list_images

LABELS, STATE, LOCK = "labels.csv", "labels.state.json", ".labels.lock"
ACTIONS = ("label", "skip", "unreadable")
MAX_LABEL = 64  # characters in one label


@dataclass
class Answers:
    labels: dict[str, str]  # file name -> label
    skipped: set[str]
    unreadable: set[str]

    def done(self, name: str) -> bool:
        return name in self.labels or name in self.unreadable


class LabelStore:
    """The images of one folder and the answers given so far."""

    def __init__(self, folder: str | Path, charset: str | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CaptchaError(f"{self.folder}: no such folder")
        self.names = [p.name for p in list_images(str(self.folder))]
        if not self.names:
            raise CaptchaError(f"{self.folder}: no images found")
        self._known = set(self.names)
        self.charset = charset
        self._lock = threading.Lock()
        self.read()  # a damaged labels.csv is reported now, before any answer

    def has(self, name: str) -> bool:
        """Whether `name` is one of the folder's images (not another file, a path or `..`)."""
        return name in self._known

    def path(self, name: str) -> Path:
        """The image file of `name`; CaptchaError for anything that is not one of the folder's images."""
        if not self.has(name):
            raise CaptchaError(f"{name}: not an image of {self.folder}")
        return self.folder / name

    def check_label(self, label: str) -> str:
        """The label, stripped; CaptchaError when it is empty, too long or outside the allowed characters."""
        label = label.strip()
        if not label or len(label) > MAX_LABEL:
            raise CaptchaError(f"a label must have 1 to {MAX_LABEL} characters, got {len(label)}")
        bad = sorted({c for c in label if (self.charset and c not in self.charset) or not c.isprintable()
                      or c in ",\"\n\r"})
        if bad:
            raise CaptchaError(f"label {label!r} has characters that are not allowed: {''.join(bad)!r}")
        return label

    def read(self) -> Answers:
        labels: dict[str, str] = {}
        path = self.folder / LABELS
        if path.is_file():
            try:
                rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
            except (OSError, UnicodeDecodeError, csv.Error) as e:
                raise CaptchaError(f"{path}: cannot read ({e})") from None
            for row in rows[1:]:
                if len(row) >= 2 and row[0] and row[1]:
                    labels[row[0]] = row[1]
        state: dict[str, Any] = {}
        spath = self.folder / STATE
        if spath.is_file():
            try:
                state = json.loads(spath.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise CaptchaError(f"{spath}: cannot read ({e})") from None
        return Answers(labels, set(state.get("skipped", [])), set(state.get("unreadable", [])))

    def answer(self, name: str, action: str, label: str | None = None) -> Answers:
        """Record one answer (a label, a skip or "unreadable") and write it to disk before returning."""
        self.path(name)
        if action not in ACTIONS:
            raise CaptchaError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
        text = self.check_label(label or "") if action == "label" else None
        with self._locked():
            a = self.read()
            a.labels.pop(name, None)
            a.skipped.discard(name)
            a.unreadable.discard(name)
            if text is not None:
                a.labels[name] = text
            else:
                (a.skipped if action == "skip" else a.unreadable).add(name)
            self._write(a)
        return a

    @contextmanager
    def _locked(self) -> Any:
        with self._lock, open(self.folder / LOCK, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _write(self, a: Answers) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["filename", "label"])
        for name in self.names:
            if name in a.labels:
                w.writerow([name, a.labels[name]])
        atomic_write(self.folder / LABELS, lambda f: f.write(buf.getvalue().encode("utf-8")))
        state = {"skipped": sorted(a.skipped), "unreadable": sorted(a.unreadable)}
        atomic_write(self.folder / STATE, lambda f: f.write(json.dumps(state, indent=1).encode("utf-8")))
