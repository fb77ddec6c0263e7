"""Tests for captcha_crnn.data.labels: labels from file names and from CSV files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from captcha_crnn.data.labels import (
    LabelRule,
    Sample,
    list_images,
    read_csv,
    read_folder,
    read_samples,
)
from captcha_crnn.errors import CaptchaError

_PNG = io.BytesIO()
Image.new("L", (8, 4), 255).save(_PNG, "PNG")
PNG = _PNG.getvalue()


def touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(PNG if Path(n).suffix.lower() != ".txt" else b"text")
        out.append(p)
    return out


def labels(samples: list[Sample]) -> list[str]:
    return [s.label for s in samples]


# ---------------------------------------------------------------- folders


def test_folder_labels_are_file_stems(tmp_path):
    d = tmp_path / "imgs"
    touch(d, "abc.png", "XY12.jpg", "q9.JPEG", "notes.txt", "w7.bmp")
    for samples in (read_folder(d), read_samples(d), read_samples(str(d))):
        assert sorted(labels(samples)) == ["XY12", "abc", "q9", "w7"]
        assert all(isinstance(s, Sample) for s in samples)
        assert {s.path for s in samples} == {
            str(d / n) for n in ("abc.png", "XY12.jpg", "q9.JPEG", "w7.bmp")
        }
        assert [s.path for s in samples] == sorted(s.path for s in samples)


def test_leading_zeros_kept(tmp_path):
    touch(tmp_path, "0335.png", "0000.png", "007a.png")
    got = {s.label for s in read_samples(tmp_path)}
    assert got == {"0335", "0000", "007a"}
    assert all(isinstance(x, str) for x in got)


def test_label_rule_regex_first_group(tmp_path):
    touch(tmp_path, "1QCaAu_646.png", "0xyz_1.png")
    samples = read_samples(tmp_path, LabelRule(regex=r"^([^_]+)_"))
    assert sorted(labels(samples)) == ["0xyz", "1QCaAu"]


def test_label_rule_regex_without_group_uses_whole_match():
    assert LabelRule(regex=r"[a-z]+").label_of(Path("12abc34.png")) == "abc"


def test_label_rule_regex_skips_files_that_do_not_match(tmp_path):
    touch(tmp_path, "ab_1.png", "nounderscore.png")
    samples = read_folder(tmp_path, LabelRule(regex=r"^([^_]+)_"))
    assert labels(samples) == ["ab"]


def test_label_rule_regex_matching_nothing_is_an_error(tmp_path):
    touch(tmp_path, "abc.png", "def.png")
    with pytest.raises(CaptchaError) as ei:
        read_folder(tmp_path, LabelRule(regex=r"^(\d+)_"))
    assert str(tmp_path) in str(ei.value)


def test_label_rule_sep(tmp_path):
    touch(tmp_path, "abcd-0.png", "0042-17-x.png", "plain.png")
    samples = read_samples(tmp_path, LabelRule(sep="-"))
    assert sorted(labels(samples)) == ["0042", "abcd", "plain"]
    assert LabelRule(sep="-").label_of(Path("abcd-0.png")) == "abcd"


def test_label_rule_default_is_stem():
    assert LabelRule().label_of(Path("some/dir/0335.png")) == "0335"


# ---------------------------------------------------------------- CSV


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def test_csv_with_header_relative_paths_any_name(tmp_path):
    touch(tmp_path / "data", "imgs/a.png", "b.png")
    csv_path = write_csv(
        tmp_path / "data" / "train.csv",
        "filename,label\nimgs/a.png,0335\nb.png,AbC\n",
    )
    for samples in (read_csv(csv_path), read_samples(csv_path), read_samples(str(csv_path))):
        assert samples == [
            Sample(str(tmp_path / "data" / "imgs" / "a.png"), "0335"),
            Sample(str(tmp_path / "data" / "b.png"), "AbC"),
        ]
        assert all(isinstance(s.label, str) for s in samples)


def test_csv_labels_kept_as_strings_with_leading_zeros(tmp_path):
    csv_path = write_csv(tmp_path / "l.csv", "filename,label\nx.png,0007\ny.png,00\nz.png,1e5\n")
    assert labels(read_csv(csv_path)) == ["0007", "00", "1e5"]


def test_csv_column_order_case_extra_columns_and_bom(tmp_path):
    csv_path = write_csv(
        tmp_path / "set.csv",
        " Label ,source,FileName\n0335,web,a.png\n\nzz,web,b.png\n",
        encoding="utf-8-sig",
    )
    samples = read_csv(csv_path)
    assert samples == [
        Sample(str(tmp_path / "a.png"), "0335"),
        Sample(str(tmp_path / "b.png"), "zz"),
    ]


def test_folder_with_labels_csv_used_automatically(tmp_path):
    touch(tmp_path, "zzz.png", "yyy.png")
    write_csv(tmp_path / "labels.csv", "filename,label\nzzz.png,0042\nyyy.png,AB\n")
    samples = read_samples(tmp_path)
    assert {s.label for s in samples} == {"0042", "AB"}  # not the stems
    assert {s.path for s in samples} == {str(tmp_path / "zzz.png"), str(tmp_path / "yyy.png")}
    # an explicit rule means: read the file names
    by_name = read_samples(tmp_path, LabelRule(sep="-"))
    assert {s.label for s in by_name} == {"zzz", "yyy"}


def _err(fn, *args) -> str:
    with pytest.raises(CaptchaError) as ei:
        fn(*args)
    return str(ei.value)


def test_csv_without_the_right_header(tmp_path):
    p = write_csv(tmp_path / "noheader.csv", "a.png,abc\nb.png,def\n")
    assert str(p) in _err(read_csv, p)
    assert str(p) in _err(read_samples, p)
    p2 = write_csv(tmp_path / "wrong.csv", "file,text\na.png,abc\n")
    assert str(p2) in _err(read_csv, p2)


def test_csv_duplicate_file_names(tmp_path):
    p = write_csv(tmp_path / "dup.csv", "filename,label\na.png,abc\nb.png,x\na.png,def\n")
    msg = _err(read_samples, p)
    assert str(p) in msg and "a.png" in msg and "duplicate" in msg


def test_csv_empty_header_only_and_short_rows(tmp_path):
    empty = write_csv(tmp_path / "empty.csv", "")
    assert str(empty) in _err(read_csv, empty)
    header = write_csv(tmp_path / "header.csv", "filename,label\n")
    assert str(header) in _err(read_csv, header)
    short = write_csv(tmp_path / "short.csv", "filename,label\na.png,x\nb.png\n")
    msg = _err(read_csv, short)
    assert str(short) in msg and "line 3" in msg


def test_csv_missing(tmp_path):
    p = tmp_path / "missing.csv"
    assert str(p) in _err(read_csv, p)
    assert str(p) in _err(read_samples, p)


def test_csv_not_utf8(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes(b"filename,label\n\xff\xfe\xfa.png,abc\n")
    assert str(p) in _err(read_csv, p)


# ---------------------------------------------------------------- errors


def test_missing_folder(tmp_path):
    d = tmp_path / "nothere"
    assert str(d) in _err(read_samples, d)
    assert str(d) in _err(read_folder, d)


def test_empty_folder(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    assert str(d) in _err(read_samples, d)
    touch(d, "readme.txt")  # no image suffix
    msg = _err(read_samples, d)
    assert str(d) in msg and "no images" in msg


def test_path_that_is_neither_folder_nor_csv(tmp_path):
    for name in ("notes.txt", "image.png"):
        p = tmp_path / name
        p.write_bytes(b"x")
        assert str(p) in _err(read_samples, p)


# ---------------------------------------------------------------- list_images


def test_list_images_files_folders_and_globs(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    touch(a, "2.png", "1.jpg", "x.txt", "sub/deep.png")
    touch(b, "z.gif", "y.png")
    single = touch(tmp_path, "single.webp")[0]

    assert list_images(str(a)) == [a / "1.jpg", a / "2.png"]  # sorted, not recursive, images only
    assert list_images(str(a), recursive=True) == [a / "1.jpg", a / "2.png", a / "sub" / "deep.png"]
    assert list_images([str(single)]) == [single]
    assert list_images(str(single)) == [single]
    assert list_images(str(tmp_path / "b" / "*.png")) == [b / "y.png"]
    assert list_images(str(tmp_path / "*" / "*.png")) == [a / "2.png", b / "y.png"]
    assert list_images(str(tmp_path / "**" / "*.png")) == sorted(
        [a / "2.png", a / "sub" / "deep.png", b / "y.png"]
    )
    combined = list_images([str(b), str(single), str(a / "?.jpg")])
    assert combined == [b / "y.png", b / "z.gif", single, a / "1.jpg"]


def test_list_images_explicit_file_any_suffix(tmp_path):
    p = touch(tmp_path, "notes.txt")[0]
    assert list_images(str(p)) == [p]


def test_list_images_glob_with_no_match(tmp_path):
    pattern = str(tmp_path / "*.png")
    msg = _err(list_images, pattern)
    assert pattern in msg


def test_list_images_missing_path(tmp_path):
    p = str(tmp_path / "missing.png")
    assert p in _err(list_images, [p])


def test_list_images_empty_folder_is_empty_list(tmp_path):
    assert list_images(str(tmp_path)) == []
