"""Where a run's unlabelled images come from: the folders, files and globs given, less the labelled images,
and a `captcha-crnn label` folder's images without an answer."""

from __future__ import annotations

from pathlib import Path

from ..data.label_store import LABELS, STATE, LabelStore
from ..data.labels import Sample, list_images


def unlabelled_images(paths: list[str], exclude: list[Sample]) -> list[str]:
    """Absolute paths of the images under `paths` (folders, files, globs), less the labelled ones."""
    if not paths:
        return []
    labelled = {str(Path(s.path).resolve()) for s in exclude}
    found = {str(p.resolve()) for p in list_images(paths)}
    return sorted(found - labelled)


def label_folder_unlabelled(data: str) -> list[str]:
    """For the labels.csv of a `captcha-crnn label` folder (labels.state.json beside it), that folder's
    images without an answer (nor marked unreadable); else []."""
    path = Path(data)
    folder = path if path.is_dir() else path.parent
    if not ((folder / STATE).is_file() and (path.is_dir() or path.name == LABELS)):
        return []
    store = LabelStore(folder)
    answers = store.read()
    return [str(store.path(n).resolve()) for n in store.names
            if n not in answers.labels and n not in answers.unreadable]
