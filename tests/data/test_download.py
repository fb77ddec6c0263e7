"""`captcha-crnn download`: resumable fetch, safe unpacking and the check, against a local HTTP server.

Nothing here touches the internet: a ThreadingHTTPServer on 127.0.0.1 (a free port, stopped at the
end) serves a small zip of generated 200x50 captchas shaped like captcha_images_v2.
"""

from __future__ import annotations

import io
import random
import socket
import stat
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from captcha_crnn.cli import main
from captcha_crnn.data.download import COMPLETE, PART, download_dataset
from captcha_crnn.errors import CaptchaError

ALPHABET = "2345678bcdefgmnpwxy"


def captcha_png(label: str, seed: int) -> bytes:
    rng = random.Random(seed)
    im = Image.new("L", (200, 50), 255)
    d = ImageDraw.Draw(im)
    for i, ch in enumerate(label):
        d.text((20 + 32 * i, 15 + rng.randint(-4, 4)), ch, fill=rng.randint(0, 80))
    d.line([(0, rng.randint(10, 40)), (200, rng.randint(10, 40))], fill=60, width=2)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def make_zip(n: int = 12, extra: dict[str, bytes] | None = None, top: str = "captcha_images_v2/") -> bytes:
    """A zip laid out like the real one: one top folder of PNGs named by 5-character labels."""
    rng = random.Random(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(top, b"")
        labels = set()
        while len(labels) < n:
            labels.add("".join(rng.choice(ALPHABET) for _ in range(5)))
        for i, lab in enumerate(sorted(labels)):
            zf.writestr(f"{top}{lab}.png", captcha_png(lab, i))
        zf.writestr(f"__MACOSX/{top}._junk.png", b"resource fork")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


class Server:
    """Serves `files` by path; `ranges` turns Range support on, `cut` closes each body after N bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.cut: int | None = None
        self.requests: list[dict[str, str]] = []
        self.redirects: dict[str, str] = {}
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                srv.requests.append({"path": self.path, "range": self.headers.get("Range", "")})
                if self.path in srv.redirects:  # like github.com/.../raw/... -> raw.githubusercontent.com
                    self.send_response(302)
                    self.send_header("Location", srv.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = srv.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                rng = self.headers.get("Range", "")
                if srv.ranges and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes" if srv.ranges else "none")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: srv.cut] if srv.cut is not None else body)
                if srv.cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str = "/captcha_images_v2.zip") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
        s.thread.join(5)


@pytest.fixture(scope="module")
def zip_bytes() -> bytes:
    return make_zip()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("captcha-crnn: error")]
    assert len(lines) == 1, err
    return lines[0]


def test_download_unpacks_checks_and_is_idempotent(server: Server, zip_bytes: bytes, tmp_path: Path,
                                                   capsys) -> None:
    server.files["/captcha_images_v2.zip"] = zip_bytes
    out = tmp_path / "v2"
    code = main(["download", "captcha_v2", str(out), "--url", server.url(), "--quiet"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 12  # the top folder is stripped, __MACOSX is skipped
    assert not (out / "__MACOSX").exists() and not (out / "captcha_images_v2").exists()
    assert not (out / PART).exists() and (out / COMPLETE).is_file()
    assert "12 PNG images" in stdout and "200x50" in stdout and "alphabet" in stdout
    assert "warning: expected 1040 images, found 12" in err  # a mismatch is a warning, not a failure
    # a second run does nothing but the check: no request reaches the server
    n = len(server.requests)
    code = main(["download", "captcha_v2", str(out), "--url", server.url(), "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0 and len(server.requests) == n
    assert "already downloaded" in err and '"count": 12' in stdout


def test_resumes_a_partial_download_with_range(server: Server, zip_bytes: bytes, tmp_path: Path) -> None:
    server.files["/captcha_images_v2.zip"] = zip_bytes
    out = tmp_path / "v2"
    out.mkdir()
    half = len(zip_bytes) // 2
    (out / PART).write_bytes(zip_bytes[:half])
    chk = download_dataset("captcha_v2", out, url=server.url(), progress=False)
    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert chk.count == 12 and chk.sizes == {"200x50": 12} and chk.label_lengths == {5: 12}
    assert set(chk.alphabet) <= set(ALPHABET)


def test_resume_survives_a_redirect(server: Server, zip_bytes: bytes, tmp_path: Path) -> None:
    server.files["/raw/captcha_images_v2.zip"] = zip_bytes
    server.redirects["/gh/captcha_images_v2.zip"] = server.url("/raw/captcha_images_v2.zip")
    out = tmp_path / "v2"
    out.mkdir()
    (out / PART).write_bytes(zip_bytes[:500])
    chk = download_dataset("captcha_v2", out, url=server.url("/gh/captcha_images_v2.zip"), progress=False)
    assert [r["range"] for r in server.requests] == ["bytes=500-", "bytes=500-"]
    assert chk.count == 12


def test_cut_off_download_resumes_on_the_next_run(server: Server, zip_bytes: bytes, tmp_path: Path,
                                                  capsys) -> None:
    server.files["/captcha_images_v2.zip"] = zip_bytes
    out = tmp_path / "v2"
    server.cut = len(zip_bytes) // 3
    code = main(["download", "captcha_v2", str(out), "--url", server.url(), "--quiet"])
    line = one_error_line(code, capsys.readouterr().err)
    assert "cut off" in line and "run again" in line
    assert (out / PART).stat().st_size == len(zip_bytes) // 3
    server.cut = None
    code = main(["download", "captcha_v2", str(out), "--url", server.url(), "--quiet"])
    assert code == 0
    assert server.requests[-1]["range"] == f"bytes={len(zip_bytes) // 3}-"
    assert len(list(out.glob("*.png"))) == 12


def test_server_without_range_support_restarts(server: Server, zip_bytes: bytes, tmp_path: Path) -> None:
    server.files["/captcha_images_v2.zip"] = zip_bytes
    server.ranges = False
    out = tmp_path / "v2"
    out.mkdir()
    (out / PART).write_bytes(zip_bytes[:1000])
    chk = download_dataset("captcha_v2", out, url=server.url(), progress=False)
    assert chk.count == 12 and not (out / PART).exists()


def test_unreachable_url_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    url = f"http://127.0.0.1:{closed_port()}/captcha_images_v2.zip"
    code = main(["download", "captcha_v2", str(tmp_path / "v2"), "--url", url])
    line = one_error_line(code, capsys.readouterr().err)
    assert "download failed" in line and url in line


def test_http_404_and_non_zip_are_errors(server: Server, tmp_path: Path, capsys) -> None:
    code = main(["download", "captcha_v2", str(tmp_path / "a"), "--url", server.url("/missing.zip")])
    assert "HTTP 404" in one_error_line(code, capsys.readouterr().err)
    server.files["/page.zip"] = b"<html>not a zip</html>"
    code = main(["download", "captcha_v2", str(tmp_path / "b"), "--url", server.url("/page.zip"), "--quiet"])
    assert "not a zip" in one_error_line(code, capsys.readouterr().err)
    assert not (tmp_path / "b" / PART).exists()  # dropped, so the next run starts clean


def test_zip_option_needs_no_network(zip_bytes: bytes, tmp_path: Path, capsys) -> None:
    z = tmp_path / "captcha_images_v2.zip"
    z.write_bytes(zip_bytes)
    out = tmp_path / "v2"
    code = main(["download", "captcha_v2", str(out), "--zip", str(z), "--url", "http://127.0.0.1:1/never"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert len(list(out.glob("*.png"))) == 12 and z.is_file()  # the user's zip is left alone
    code = main(["download", "captcha_v2", str(tmp_path / "x"), "--zip", str(tmp_path / "nope.zip")])
    assert "nope.zip" in one_error_line(code, capsys.readouterr().err)


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("d/ok.png", b"x")
        info = zipfile.ZipInfo("d/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize("evil", ["../evil.png", "captcha_images_v2/../../evil.png", "/tmp/evil.png",
                                  "C:/evil.png", "..\\evil.png", "symlink"])
def test_path_escaping_members_are_rejected(evil: str, tmp_path: Path, capsys) -> None:
    z = tmp_path / "bad.zip"
    z.write_bytes(_symlink_zip() if evil == "symlink" else make_zip(3, extra={evil: b"pwned"}))
    out = tmp_path / "deep" / "v2"
    code = main(["download", "captcha_v2", str(out), "--zip", str(z)])
    line = one_error_line(code, capsys.readouterr().err)
    assert "refusing to unpack" in line
    # checked before anything is written
    assert not list(out.glob("**/*.png"))
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "deep" / "evil.png").exists()
    assert not (out / COMPLETE).exists()


def test_archive_without_images_is_an_error(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", b"hello")
    z = tmp_path / "empty.zip"
    z.write_bytes(buf.getvalue())
    with pytest.raises(CaptchaError, match="no readable PNG"):
        download_dataset("captcha_v2", tmp_path / "v2", zip_file=z, progress=False)


def test_oversized_archive_is_refused(zip_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import captcha_crnn.data.download as dl

    monkeypatch.setattr(dl, "MAX_UNPACKED", 1000)
    z = tmp_path / "big.zip"
    z.write_bytes(zip_bytes)
    with pytest.raises(CaptchaError, match="refusing to unpack.*GiB"):
        download_dataset("captcha_v2", tmp_path / "v2", zip_file=z, progress=False)
    assert not list((tmp_path / "v2").glob("*.png"))
