"""Helpers shared by the bad-input tests: captcha images, one-line error checks, the CLI runner, a private cache."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from captcha_crnn.cli import main
from captcha_crnn.data.images import Preprocess
from captcha_crnn.errors import CaptchaError

PRE = Preprocess(height=32, width=None)
MODEL = "captcha_v2"  # a shipped model: 200x50 grey captchas


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX exports cached in the test session's folder, not the user's cache (autouse where imported)."""
    monkeypatch.setenv("CAPTCHA_CRNN_CACHE", str(tmp_path_factory.getbasetemp() / "onnx-cache"))


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def captcha(text: str = "2b4c5", size: tuple[int, int] = (200, 50)) -> Image.Image:
    """A plain dark-text-on-white image in captcha_v2's size."""
    im = Image.new("L", size, 255)
    ImageDraw.Draw(im).text((20, 15), text, fill=0)
    return im


def raises_naming(fn, *args, needles: tuple[str, ...] = (), **kw) -> str:
    """Call fn; it must raise a one-line CaptchaError containing every needle. Returns the message."""
    with pytest.raises(CaptchaError) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_cli_error(code: int, err: str, *needles: str) -> None:
    """Exit status 2 and exactly one `captcha-crnn: error: ...` line on stderr holding every needle."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("captcha-crnn: error")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        captcha(Path(n).stem[:5]).save(folder / n, "PNG")
