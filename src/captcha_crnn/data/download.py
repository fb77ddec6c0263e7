"""Fetch a public labelled captcha set: resumable download, safe unpacking, a check of what arrived.

    from captcha_crnn.data.download import download_dataset
    download_dataset("captcha_v2", "data/captcha_v2")   # then: captcha-crnn train data/captcha_v2

The zip is downloaded to ``DIR/.part`` (resumed with an HTTP Range request when the server
supports it, restarted from zero when it does not), checked to be a zip whose members all stay
inside ``DIR`` (no absolute paths, no ``..``, no symlinks), unpacked into ``DIR`` (a single
top-level folder in the zip is stripped, so the images land in ``DIR`` itself) and described:
image count, size, label lengths and alphabet. A finished download leaves ``DIR/.complete``, so a
second run does nothing but the check. Only the standard library's urllib is used.

The check compares what arrived with what the set is known to hold (1040 PNGs of 200x50 named
by 5-character labels for captcha_v2). A difference is a *warning*, not a failure: ``--url`` and
``--zip`` may point at a mirror, a subset or a newer release, and the images are still usable.
Only an archive without a single image is an error.
"""

from __future__ import annotations

import http.client
import json
import shutil
import stat
import sys
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import CaptchaError
from ..progress import bar_disable

PART = ".part"
COMPLETE = ".complete"
CHUNK = 1 << 16
MAX_UNPACKED = 4 << 30  # refuse archives that would unpack to more than 4 GiB (a zip bomb, or the wrong file)


@dataclass(frozen=True)
class DatasetSpec:
    """A public captcha set: where it lives and what a correct copy holds."""

    name: str
    url: str
    count: int
    size: tuple[int, int]  # (width, height)
    label_length: int
    alphabet: str
    about: str = ""


DATASETS: dict[str, DatasetSpec] = {
    "captcha_v2": DatasetSpec(
        name="captcha_v2",
        url="https://github.com/AakashKumarNain/CaptchaCracker/raw/master/captcha_images_v2.zip",
        count=1040,
        size=(200, 50),
        label_length=5,
        alphabet="2345678bcdefgmnpwxy",
        about="captcha_images_v2 (the set of the Keras captcha OCR example), label = file stem",
    ),
}


@dataclass
class DatasetCheck:
    """What a dataset folder holds, and how that differs from what was expected."""

    folder: str
    count: int
    sizes: dict[str, int]  # "WxH" -> images
    label_lengths: dict[int, int]
    alphabet: str
    warnings: list[str] = field(default_factory=list)
    downloaded: bool = False  # False when the folder was already complete

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        sizes = ", ".join(f"{k} ({v})" for k, v in sorted(self.sizes.items(), key=lambda kv: -kv[1]))
        lengths = ", ".join(f"{k}" for k in sorted(self.label_lengths))
        return (f"{self.folder}: {self.count} PNG images, size {sizes}, label length {lengths}, "
                f"alphabet ({len(self.alphabet)}): {self.alphabet}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------------------------------- download


def fetch(url: str, dest: str | Path, progress: bool = True, timeout: float = 30.0, desc: str = "download") -> Path:
    """Download url to dest, resuming a partial dest with an HTTP Range request when possible.

    A server that ignores the Range header (answers 200) makes the download start over; a cut-off
    transfer leaves dest in place and raises CaptchaError, so running again continues it.
    """
    from tqdm import tqdm

    dest = Path(dest)
    have = dest.stat().st_size if dest.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "captcha-crnn"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left past what we hold: the .part is the whole file
            return dest
        raise CaptchaError(f"download failed: {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise CaptchaError(f"download failed: {url}: {reason} (offline? pass --zip FILE with a copy "
                           f"downloaded elsewhere)") from None
    with resp:
        resumed = bool(have) and resp.status == 206 and \
            resp.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        if have and resp.status == 206 and not resumed:  # a range we did not ask for: start clean, no Range header
            resp.close()
            dest.unlink(missing_ok=True)
            return fetch(url, dest, progress, timeout, desc)
        if have and not resumed:
            _log(f"{url}: the server does not resume downloads; starting over")
            have = 0
        elif resumed:
            _log(f"resuming after {have / 1e6:.2f} MB")
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        got = have
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                   desc=desc, disable=bar_disable(progress), dynamic_ncols=True)
        try:
            with open(dest, "ab" if resumed else "wb") as f:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:  # connection reset, timeout, incomplete read
            raise CaptchaError(f"download cut off after {got / 1e6:.2f} MB: {url}: {e!r}; "
                               f"run again to resume") from None
        finally:
            bar.close()
    if total is not None and got < total:
        raise CaptchaError(f"download cut off after {got / 1e6:.2f} of {total / 1e6:.2f} MB: {url}; "
                           f"run again to resume")
    return dest


# ---------------------------------------------------------------------------------------- unpacking


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _skip(parts: tuple[str, ...]) -> bool:
    """macOS resource forks and Finder files: not data."""
    return parts[0] == "__MACOSX" or parts[-1] == ".DS_Store"


def safe_members(zf: zipfile.ZipFile, archive: str = "zip") -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """(member, relative path) for every regular file, after checking no member can escape the target.

    Raises CaptchaError for absolute paths, drive letters, '..' components and symlinks, before
    anything is written.
    """
    out = []
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        p = PurePosixPath(name)
        if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in p.parts:
            raise CaptchaError(f"{archive}: refusing to unpack: member {info.filename!r} would land outside "
                               f"the target folder")
        if _is_symlink(info):
            raise CaptchaError(f"{archive}: refusing to unpack: member {info.filename!r} is a symbolic link")
        parts = tuple(x for x in p.parts if x not in ("", "."))
        if info.is_dir() or not parts or _skip(parts):
            continue
        out.append((info, PurePosixPath(*parts)))
    total = sum(info.file_size for info, _ in out)
    if total > MAX_UNPACKED:
        raise CaptchaError(f"{archive}: refusing to unpack: {total / 2**30:.1f} GiB uncompressed "
                           f"(more than {MAX_UNPACKED / 2**30:.0f} GiB)")
    return out


def unpack(zip_path: str | Path, target: str | Path) -> list[Path]:
    """Safely unpack zip_path into target; one top-level folder shared by all members is stripped."""
    zip_path, target = Path(zip_path), Path(target)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CaptchaError(f"{zip_path}: not a readable zip file ({e})") from None
    with zf:
        members = safe_members(zf, str(zip_path))
        if not members:
            raise CaptchaError(f"{zip_path}: the zip holds no files")
        tops = {m[1].parts[0] for m in members}
        if len(tops) == 1 and all(len(m[1].parts) > 1 for m in members):
            members = [(i, PurePosixPath(*rel.parts[1:])) for i, rel in members]
        root = target.resolve()
        written = []
        for info, rel in members:
            dest = (root / rel).resolve()
            if root not in dest.parents:  # belt and braces: an existing symlink inside target
                raise CaptchaError(f"{zip_path}: refusing to unpack {info.filename!r} outside {target}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise CaptchaError(f"{zip_path}: damaged member {info.filename!r} ({e})") from None
            written.append(dest)
    return written


# ---------------------------------------------------------------------------------------- checking


def check_folder(folder: str | Path, spec: DatasetSpec | None = None) -> DatasetCheck:
    """Count the PNGs in folder, their sizes, label (file stem) lengths and alphabet; compare with spec."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    sizes: Counter[str] = Counter()
    lengths: Counter[int] = Counter()
    chars: set[str] = set()
    unreadable = []
    pngs = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    for p in pngs:
        try:
            with Image.open(p) as im:
                sizes[f"{im.width}x{im.height}"] += 1
        except (UnidentifiedImageError, OSError):
            unreadable.append(p.name)
            continue
        lengths[len(p.stem)] += 1
        chars.update(p.stem)
    count = sum(sizes.values())
    if count == 0:
        raise CaptchaError(f"{folder}: no readable PNG images after unpacking")
    chk = DatasetCheck(str(folder), count, dict(sizes), dict(lengths), "".join(sorted(chars)))
    if unreadable:
        chk.warnings.append(f"{len(unreadable)} unreadable PNG files (e.g. {unreadable[0]})")
    if spec:
        w, h = spec.size
        if count != spec.count:
            chk.warnings.append(f"expected {spec.count} images, found {count}")
        if set(sizes) != {f"{w}x{h}"}:
            chk.warnings.append(f"expected every image to be {w}x{h}, found {', '.join(sorted(sizes))}")
        if set(lengths) != {spec.label_length}:
            chk.warnings.append(f"expected {spec.label_length}-character labels, found lengths "
                                f"{', '.join(map(str, sorted(lengths)))}")
        extra = set(chars) - set(spec.alphabet)
        if extra:
            chk.warnings.append(f"characters outside the expected alphabet {spec.alphabet}: "
                                f"{''.join(sorted(extra))}")
    return chk


# ---------------------------------------------------------------------------------------- the command


def download_dataset(
    name: str,
    dest: str | Path,
    url: str | None = None,
    zip_file: str | Path | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> DatasetCheck:
    """Download (or take zip_file), unpack safely into dest and check a public captcha set.

    Idempotent: a folder holding DIR/.complete from an earlier run is only checked again.
    Resumable: an interrupted download leaves DIR/.part, which the next call continues.
    Returns the check; its warnings say where the data differs from the known set.
    """
    if name not in DATASETS:
        raise CaptchaError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    spec = DATASETS[name]
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise CaptchaError(f"{dest}: exists and is not a folder")
    if (dest / COMPLETE).is_file():
        try:
            source = json.loads((dest / COMPLETE).read_text()).get("source", name)
        except (ValueError, AttributeError):
            source = name
        _log(f"{dest}: already downloaded (from {source}); delete {dest / COMPLETE} to fetch again")
        return check_folder(dest, spec)
    dest.mkdir(parents=True, exist_ok=True)
    part = dest / PART
    if zip_file is not None:
        src = Path(zip_file)
        if not src.is_file():
            raise CaptchaError(f"{src}: no such zip file")
        origin = str(src)
    else:
        origin = url or spec.url
        _log(f"downloading {name} from {origin}")
        src = fetch(origin, part, progress, timeout, desc=name)
        if not zipfile.is_zipfile(src):
            # a corrupt or stale .part: drop it so the next run starts clean
            part.unlink(missing_ok=True)
            raise CaptchaError(f"download failed: {origin}: what arrived is not a zip file; run again to "
                               f"download afresh")
    files = unpack(src, dest)
    _log(f"unpacked {len(files)} files into {dest}")
    chk = check_folder(dest, spec)
    chk.downloaded = True
    if zip_file is None:
        part.unlink(missing_ok=True)
    (dest / COMPLETE).write_text(json.dumps({"dataset": name, "source": origin, "images": chk.count}) + "\n")
    return chk
