"""Where a run's unlabelled images come from: the folders, files, globs and lists (.txt, one path a line)
given, less the labelled images, and a `captcha-crnn label` folder's images without an answer."""

from __future__ import annotations

from pathlib import Path

from ..data.label_store import LABELS, STATE, LabelStore
from ..data.labels import Sample, list_images
from ..files import atomic_write

LIST_SUFFIX = ".txt"  # a file of image paths, one a line: how a run hands its pool to its stages


def write_list(images: list[str], path: Path) -> str:
    """Write `images` as a list file (atomically) and return its path, to pass as one unlabelled entry (a run's
    config and model metadata then name one file, not every image)."""
    text = "".join(f"{p}\n" for p in images)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode()))
    return str(path)


def expand_lists(paths: list[str]) -> list[str]:
    """The entries of `paths` with each list file replaced by the paths it holds."""
    out: list[str] = []
    for p in paths:
        if p.endswith(LIST_SUFFIX) and Path(p).is_file():
            out.extend(line for line in Path(p).read_text().splitlines() if line.strip())
        else:
            out.append(p)
    return out


def unlabelled_images(paths: list[str], exclude: list[Sample]) -> list[str]:
    """Absolute paths of the images under `paths` (folders, files, globs), less the labelled ones."""
    if not paths:
        return []
    labelled = {str(Path(s.path).resolve()) for s in exclude}
    found = {str(p.resolve()) for p in list_images(expand_lists(paths))}
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
