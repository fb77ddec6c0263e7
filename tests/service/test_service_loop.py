"""The service loop: `serve --keep-unsure` keeps what it cannot read (once, under a cap), the drift signal, a model
swap without a restart (and a bad file that leaves the old model serving), and the whole loop end to end:
serve, keep, label on the page, train, publish, swap."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import random
import threading
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from conftest import render_clean  # noqa: E402
from PIL import Image  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from captcha_crnn.files import atomic_write, copy_file  # noqa: E402
from captcha_crnn.service import ServiceConfig, create_app  # noqa: E402
from captcha_crnn.service.keep import KEPT_CSV, KeptReader, parse_cap  # noqa: E402
from captcha_crnn.service.models import ModelEntry  # noqa: E402

PNG = {"content-type": "image/png"}


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def kept_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".png")


def test_keep_max_reads_images_or_bytes() -> None:
    assert parse_cap("5000") == (5000, None)
    assert parse_cap("200MB") == (None, 200_000_000) == parse_cap("200m")
    assert parse_cap("1.5GB") == (None, 1_500_000_000)
    with pytest.raises(ValueError, match="--keep-max"):
        parse_cap("lots")


def test_unsure_images_are_kept_once_each_and_never_past_the_cap(tmp_path: Path, trained) -> None:
    keep = tmp_path / "kept"
    entry = ModelEntry.load("digits", str(trained.model_path), below=1.0)  # every reading is unsure
    app = create_app([entry], ServiceConfig(keep_unsure=str(keep), keep_max_images=5, watch_s=0))
    images = [png(render_clean(f"{i:03d}", seed=i)) for i in range(12)]
    with TestClient(app) as c:
        for data in images[:3] + images[:3]:  # the same three twice: kept once each
            assert c.post("/v1/read", content=data, headers=PNG).status_code == 200
        app.state.keep.flush()
        assert len(kept_images(keep)) == 3
        for data in images:
            assert c.post("/v1/read", content=data, headers=PNG).status_code == 200
        app.state.keep.flush()
        metrics = c.get("/metrics").text
    files = kept_images(keep)
    assert len(files) == 5  # the cap, not one more
    assert all(p.stem == hashlib.sha256(p.read_bytes()).hexdigest()[:24] for p in files)  # named by content
    rows = list(csv.DictReader(open(keep / KEPT_CSV)))
    assert sorted(r["filename"] for r in rows) == [p.name for p in files]
    assert all(r["model"] == "digits" and 0 <= float(r["confidence"]) < 1 for r in rows)
    assert app.state.keep.counts["full"] == 7 and app.state.keep.counts["duplicate"] == 6
    assert 'captcha_crnn_kept_images_total{outcome="full"} 7.0' in metrics
    # the label page pre-fills from the service's readings, without reading again
    got = KeptReader(keep).predict([str(p) for p in files])
    assert [g.text for g in got] == [next(r["reading"] for r in rows if r["filename"] == p.name) for p in files]


def test_a_flood_of_unsure_images_stops_at_the_byte_cap(tmp_path: Path, trained) -> None:
    keep = tmp_path / "kept"
    images = [png(render_clean(f"{i:04d}", seed=1000 + i)) for i in range(300)]
    cap = 3 * max(map(len, images))
    entry = ModelEntry.load("digits", str(trained.model_path), below=1.0)
    app = create_app([entry], ServiceConfig(keep_unsure=str(keep), keep_max_images=None, keep_max_bytes=cap,
                                            watch_s=0))
    failed = []
    with TestClient(app) as c:
        def send(part: list[bytes]) -> None:
            for data in part:
                r = c.post("/v1/read", content=data, headers=PNG)
                if r.status_code != 200:
                    failed.append(r.status_code)

        threads = [threading.Thread(target=send, args=(images[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        app.state.keep.flush()
    assert failed == []
    assert 0 < sum(p.stat().st_size for p in kept_images(keep)) <= cap


def test_the_unsure_threshold_is_the_models_own_and_readings_show_in_metrics(trained) -> None:
    entry = ModelEntry.load("digits", str(trained.model_path))
    assert "99% precision" in entry.threshold_source and 0 < entry.threshold <= 1
    with TestClient(create_app([entry], ServiceConfig(watch_s=0))) as c:
        for i in range(4):
            assert c.post("/v1/read", content=png(render_clean("123", seed=i)), headers=PNG).status_code == 200
        blank = png(Image.new("L", (96, 32), 255))  # nothing to read: unsure
        assert c.post("/v1/read", content=blank, headers=PNG).status_code == 200
        metrics = c.get("/metrics").text
        m = c.get("/v1/models").json()["models"][0]
    assert 'captcha_crnn_read_confidence_count{model="digits"} 5.0' in metrics
    assert 'captcha_crnn_unsure_readings_total{model="digits"}' in metrics
    assert m["recent"]["readings"] == 5 and m["recent"]["unsure"] >= 1
    assert m["unsure_below"] == pytest.approx(entry.threshold, abs=1e-6)
    assert len(m["sha256"]) == 64 and m["loaded_at"].endswith("Z")


def other_version(src: Path, dst: Path, note: str) -> None:
    """The same weights under other metadata (another file hash), written over dst atomically."""
    from captcha_crnn.model.modelfile import load_bundle, save_bundle

    b = load_bundle(src)
    b.info = {**b.info, "note": note}
    tmp = dst.with_name(dst.name + ".new")
    save_bundle(b, tmp)
    os.replace(tmp, dst)


def wait_for(cond, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_a_changed_file_is_swapped_in_under_load_and_a_bad_one_leaves_the_old(tmp_path: Path, trained,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    served = tmp_path / "digits.safetensors"
    copy_file(trained.model_path, served)
    app = create_app([ModelEntry.load("digits", str(served))], ServiceConfig(watch_s=0.1))
    images = [png(render_clean(f"{i:03d}", seed=i)) for i in range(8)]
    statuses: list[int] = []
    stop = threading.Event()
    with TestClient(app) as c:
        def load() -> None:
            while not stop.is_set():
                statuses.append(c.post("/v1/read", content=random.choice(images), headers=PNG).status_code)

        first = c.get("/v1/models").json()["models"][0]
        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        hashes = {first["sha256"]}
        for k in range(3):  # three swaps while the load runs: the watcher picks each up
            other_version(trained.model_path, served, f"v{k}")
            assert wait_for(lambda: c.get("/v1/models").json()["models"][0]["sha256"] not in hashes)
            hashes.add(c.get("/v1/models").json()["models"][0]["sha256"])
        assert c.post("/v1/models/digits/reload").status_code == 200  # on request too
        with caplog.at_level(logging.ERROR, logger="captcha_crnn.service"):
            data = served.read_bytes()
            atomic_write(served, lambda f: f.write(data[: len(data) // 2]))  # a truncated model file
            r = c.post("/v1/models/digits/reload")
            time.sleep(0.5)  # the watcher tries it too
        stop.set()
        for t in threads:
            t.join()
        assert r.status_code == 422 and "keeps serving" in r.json()["detail"] and str(served) in r.json()["detail"]
        assert c.get("/v1/models").json()["models"][0]["sha256"] in hashes  # the last good one
        assert c.post("/v1/read", content=images[0], headers=PNG).status_code == 200
        assert c.post("/v1/models/nope/reload").status_code == 404
    assert len(statuses) > 20 and set(statuses) == {200}  # no request failed because of a swap
    lines = [rec.getMessage() for rec in caplog.records if "not reloaded" in rec.getMessage()]
    assert lines and all(str(served) in line for line in lines)


def test_reload_needs_the_api_key(tmp_path: Path, trained) -> None:
    app = create_app([ModelEntry.load("digits", str(trained.model_path))], ServiceConfig(api_key="k", watch_s=0))
    with TestClient(app) as c:
        assert c.post("/v1/models/digits/reload").status_code == 401
        assert c.post("/v1/models/digits/reload", headers={"X-API-Key": "k"}).status_code == 200


def other_style(folder: Path, n: int, seed: int) -> dict[str, str]:
    """n digit captchas of the `captcha` package's style (not the served model's), {png bytes' hash: label}."""
    from captcha.image import ImageCaptcha

    gen, rng = ImageCaptcha(width=96, height=32, font_sizes=(26,)), random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for i in range(n):
        label = "".join(rng.choice("0123456789") for _ in range(3))
        data = png(gen.generate_image(label))
        (folder / f"{label}-{i}.png").write_bytes(data)
        labels[hashlib.sha256(data).hexdigest()[:24]] = label
    return labels


def cer(read, folder: Path) -> float:
    """The character error rate of read(png bytes) -> text over a folder of other_style's images."""
    from captcha_crnn.evaluate import score

    paths = sorted(folder.iterdir())
    return score([p.name.split("-")[0] for p in paths], [read(p.read_bytes()) for p in paths]).cer


@pytest.mark.slow
def test_the_loop_serve_keep_label_train_publish_swap(tmp_path: Path, trained) -> None:
    """A service reading one style meets another: it keeps the images it is unsure of, a person labels them on
    the label page, "Train now" publishes over the served file, and the service reads the new style better
    without a restart and without a failed request while a load runs."""
    from captcha_crnn.data.label_store import LabelStore
    from captcha_crnn.service.labelling import Session, create_label_app

    served, keep = tmp_path / "served.safetensors", tmp_path / "kept"
    copy_file(trained.model_path, served)
    seen = other_style(tmp_path / "seen", 60, seed=1)
    other_style(tmp_path / "new", 30, seed=2)
    app = create_app([ModelEntry.load("digits", str(served), below=0.999)],
                     ServiceConfig(keep_unsure=str(keep), watch_s=0.2))
    statuses: list[int] = []
    stop = threading.Event()
    from captcha_crnn.infer import Recognizer

    old = Recognizer.load(served)
    before = cer(lambda data: old.predict([data])[0].text, tmp_path / "new")  # not through the service: not kept
    with TestClient(app) as c:
        for p in sorted((tmp_path / "seen").iterdir()):
            assert c.post("/v1/read", content=p.read_bytes(), headers=PNG).status_code == 200
        app.state.keep.flush()
        kept = kept_images(keep)
        assert len(kept) >= 40  # the other style is read unsurely

        store = LabelStore(keep)
        page = TestClient(create_label_app(Session(store, KeptReader(keep)), train_args=(
            "--max-minutes", "0.4", "--charset", "0123456789"), publish=served))
        first = page.get("/api/next").json()
        assert first["prefill"] == next(r["reading"] for r in csv.DictReader(open(keep / KEPT_CSV))
                                        if r["filename"] == first["name"])  # the service's reading pre-fills
        for p in kept[:40]:
            r = page.post("/api/answer", json={"name": p.name, "action": "label", "label": seen[p.stem]})
            assert r.status_code == 200

        def load() -> None:
            images = [p.read_bytes() for p in sorted((tmp_path / "new").iterdir())]
            while not stop.is_set():
                statuses.append(c.post("/v1/read", content=random.choice(images), headers=PNG).status_code)

        loader = threading.Thread(target=load)
        loader.start()
        sha = c.get("/v1/models").json()["models"][0]["sha256"]
        assert page.post("/api/train").status_code == 200
        assert wait_for(lambda: page.get("/api/train").json()["state"] != "running", 240)
        status = page.get("/api/train").json()
        assert status["state"] == "done", status
        assert wait_for(lambda: c.get("/v1/models").json()["models"][0]["sha256"] != sha, 10)
        time.sleep(0.5)
        stop.set()
        loader.join()
        after = cer(lambda data: c.post("/v1/read", content=data, headers=PNG).json()["text"], tmp_path / "new")
    assert len(statuses) > 20 and set(statuses) == {200}
    assert after < before - 0.1, (before, after)


def test_train_now_with_earlier_labels_trains_on_both_and_keeps_the_rest_unlabelled(tmp_path: Path) -> None:
    from conftest import make_clean_set

    from captcha_crnn.data.labels import read_csv
    from captcha_crnn.service.trainer import BackgroundTrainer

    kept, earlier = tmp_path / "kept", tmp_path / "earlier"
    make_clean_set(kept, 4)
    make_clean_set(earlier, 3, seed=1)
    names = sorted(p.name for p in kept.iterdir())
    (kept / "labels.csv").write_text("filename,label\n" + "".join(f"{n},{n.split('-')[0]}\n" for n in names[:2]))
    earlier_csv = tmp_path / "earlier.csv"
    earlier_csv.write_text("filename,label\n" + "".join(f"earlier/{p.name},{p.name.split('-')[0]}\n"
                                                         for p in sorted(earlier.iterdir())))
    t = BackgroundTrainer(kept, lambda p: None, publish=tmp_path / "served.safetensors", with_labels=earlier_csv)
    data, flag, pool = t.inputs(tmp_path / "run")
    both = read_csv(data)
    assert len(both) == 5 and all(Path(s.path).is_absolute() and Path(s.path).is_file() for s in both)
    assert (flag, pool) == ("--unlabelled", str(kept))  # the unanswered kept images stay unlabelled ones
    assert BackgroundTrainer(kept, lambda p: None).inputs(tmp_path / "run2") == [str(kept / "labels.csv")]


def test_serve_flags_of_the_loop_fail_in_one_line(capsys: pytest.CaptureFixture) -> None:
    from captcha_crnn.cli import main

    assert main(["serve", "--keep-unsure", "x", "--keep-max", "lots"]) == 2
    assert main(["serve", "--keep-unsure", "x", "--below", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--keep-max 'lots'" in err[0] and "--below 1.5" in err[1]


def test_the_page_shows_the_drift(trained) -> None:
    with TestClient(create_app([ModelEntry.load("digits", str(trained.model_path))], ServiceConfig(watch_s=0))) as c:
        html = c.get("/").text
    assert 'id="drift"' in html and "unsure_share" in html and "setInterval(refreshDrift" in html
