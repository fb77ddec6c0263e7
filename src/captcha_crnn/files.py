"""Files: atomic writes, and the one rule for where derived files are cached (exported ONNX graphs,
converted weights)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Any, durable: bool = False, sync: bool = True) -> None:
    """Write via a temporary file in the same folder, fsync (unless not `sync`: a reader still never sees half a
    file, but a power cut may lose it), then rename over `path`; `durable`: fsync the folder too, so the rename
    survives a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy a file atomically: a killed run never leaves half a model under the output's name, and a server
    watching `dst` never reads half of one."""
    atomic_write(dst, lambda f: f.write(Path(src).read_bytes()))


def cache_dir(kind: str) -> Path | None:
    """$CAPTCHA_CRNN_CACHE when set (every kind in that one folder; "" turns caching off), else
    $XDG_CACHE_HOME/captcha-crnn/KIND (~/.cache when XDG_CACHE_HOME is unset)."""
    env = os.environ.get("CAPTCHA_CRNN_CACHE")
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "captcha-crnn" / kind
