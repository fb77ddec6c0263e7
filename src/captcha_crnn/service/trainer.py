"""Training in the background for the labelling page: `captcha-crnn train DIR/labels.csv` in its own
process (so the page's process stays responsive), its progress read from its log, and the new
model handed back when it is done. With earlier labels (`label --with-labels`) it trains on both, the
folder's unanswered images staying unlabelled ones; with `label --publish FILE` the new model is copied
over FILE, where `serve` picks it up without a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..files import copy_file
from ..model.format import one_line


class BackgroundTrainer:
    """One training process at a time; `status()` says where it stands."""

    def __init__(self, folder: Path, on_done: Callable[[Path], str | None],
                 args: Sequence[str] = ("--max-minutes", "3"), publish: str | Path | None = None,
                 with_labels: str | Path | None = None):
        self.folder, self.on_done, self.args = folder, on_done, list(args)
        self.publish = Path(publish) if publish else None
        self.with_labels = with_labels
        self.runs = folder / ".label-runs"
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"state": "idle"}
        self._proc: subprocess.Popen | None = None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def start(self) -> dict[str, Any]:
        """Start training on the labels so far (no-op while one runs)."""
        with self._lock:
            if self._state["state"] == "running":
                return dict(self._state)
            out = self.runs / time.strftime("%Y%m%d-%H%M%S")
            cmd = [sys.executable, "-m", "captcha_crnn", "train", *self.inputs(out), "--out", str(out),
                   "--quiet", "--json", *self.args]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self._state = {"state": "running", "line": "starting", "out": str(out), "started": time.time()}
        threading.Thread(target=self._watch, args=(self._proc,), daemon=True).start()
        return self.status()

    def inputs(self, out: Path) -> list[str]:
        """What to train on: the folder's labels.csv, or with earlier labels one CSV of both (absolute paths) and
        the folder's other images as unlabelled ones."""
        labels = self.folder / "labels.csv"
        if not self.with_labels:
            return [str(labels)]
        from ..data.labels import Sample, read_samples, write_csv

        both = [Sample(str(Path(s.path).resolve()), s.label) for s in read_samples(labels) + read_samples(
            self.with_labels)]
        return [str(write_csv(both, out / "labels.csv")), "--unlabelled", str(self.folder)]

    def _watch(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:  # one line per epoch with the validation figures, and the choices made
            line = line.strip()
            if line:
                with self._lock:
                    self._state["line"] = line[-300:]
        out = proc.stdout.read()
        code = proc.wait()
        summary = _last_json(out)
        if code != 0 or summary is None:
            with self._lock:
                self._state.update(state="failed", exit_status=code)
            return
        with self._lock:
            self._state["line"] = "reading the folder with the new model"
        try:
            note = self.on_done(Path(summary["model"]))  # the pre-fill switches before the page hears "done"
            if self.publish is not None:
                copy_file(summary["model"], self.publish)  # atomically: a server watching it never reads half
                note = f"{note}; copied over {self.publish}" if note else f"copied over {self.publish}"
        except Exception as e:  # noqa: BLE001 - the page must hear why, not wait on "running" for ever
            with self._lock:
                self._state.update(state="failed", exit_status=code, line=f"{summary['model']}: {one_line(e)}")
            return
        test = summary.get("test") or {}
        reader = ((summary.get("recipe") or {}).get("output") or {}).get("reader", "single model")
        with self._lock:
            self._state.update(state="done", model=summary["model"], exit_status=0, note=note, reader=reader,
                               val_accuracy=summary["best"].get("val_sequence_accuracy"),
                               test_accuracy=test.get("sequence_accuracy"), test_n=test.get("n"))


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None
