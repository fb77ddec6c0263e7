"""The labelling page's API and its store: answers reach labels.csv at once, in the format `train`
reads, in least-confident-first order, and bad requests get a 4xx with a message."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import pytest
from conftest import make_clean_set
from fastapi.testclient import TestClient

from captcha_crnn.data.label_store import LabelStore
from captcha_crnn.data.labels import read_samples
from captcha_crnn.errors import CaptchaError
from captcha_crnn.service import labelling
from captcha_crnn.service.labelling import Session, better_reader, create_label_app


def unlabelled(folder: Path, n: int = 8) -> tuple[Path, list[str]]:
    """n generated captchas renamed img000.png... (their truth returned, not in the names)."""
    labels = make_clean_set(folder / "src", n)
    folder.mkdir(exist_ok=True)
    for i, p in enumerate(sorted((folder / "src").glob("*.png"), key=lambda q: int(q.stem.split("-")[1]))):
        p.rename(folder / f"img{i:03d}.png")
    (folder / "src").rmdir()
    return folder, labels


def test_answers_are_written_at_once_and_train_can_read_them(tmp_path: Path) -> None:
    folder, truth = unlabelled(tmp_path / "d")
    client = TestClient(create_label_app(Session(LabelStore(folder))))
    first = client.get("/api/next").json()
    assert first["name"] == "img000.png" and first["prefill"] == "" and first["progress"]["total"] == 8
    assert client.get("/api/image/img000.png").content == (folder / "img000.png").read_bytes()
    p = client.post("/api/answer", json={"name": "img000.png", "action": "label", "label": truth[0]}).json()
    assert p["labelled"] == 1
    rows = list(csv.reader((folder / "labels.csv").open()))
    assert rows == [["filename", "label"], ["img000.png", truth[0]]]
    client.post("/api/answer", json={"name": "img001.png", "action": "skip"})
    client.post("/api/answer", json={"name": "img002.png", "action": "unreadable"})
    nxt = client.get("/api/next", params={"after": "img002.png"}).json()
    assert nxt["name"] == "img003.png"
    # a corrected answer replaces the old one; going back shows what was given
    client.post("/api/answer", json={"name": "img000.png", "action": "label", "label": "0000"})
    assert client.get("/api/item/img000.png").json()["prefill"] == "0000"
    samples = read_samples(folder)  # the folder's labels.csv, as `train DIR` reads it
    assert [(Path(s.path).name, s.label) for s in samples] == [("img000.png", "0000")]
    # a new session (a restarted server) resumes: answered images are not asked again
    again = TestClient(create_label_app(Session(LabelStore(folder))))
    assert again.get("/api/next").json()["name"] == "img003.png"
    names = set()
    for name in [f"img{i:03d}.png" for i in range(3, 8)]:
        again.post("/api/answer", json={"name": name, "action": "label", "label": "1"})
        names.add(name)
    assert again.get("/api/next").json()["name"] == "img001.png"  # skipped images come round again last


def test_bad_requests_get_4xx(tmp_path: Path) -> None:
    folder, _ = unlabelled(tmp_path / "d", 3)
    (tmp_path / "secret.png").write_bytes(b"x")
    client = TestClient(create_label_app(Session(LabelStore(folder, charset="0123456789"))))
    assert client.get("/api/image/nope.png").status_code == 404
    assert client.get("/api/image/..%2Fsecret.png").status_code == 404
    assert client.get("/api/item/labels.csv").status_code == 404
    r = client.post("/api/answer", json={"name": "img000.png", "action": "label", "label": "12ab"})
    assert r.status_code == 422 and "not allowed" in r.json()["detail"]
    assert client.post("/api/answer", json={"name": "img000.png", "action": "label", "label": " "}).status_code == 422
    assert client.post("/api/answer", json={"name": "img000.png", "action": "eat"}).status_code == 422
    assert client.post("/api/answer", content=b"not json").status_code == 422
    assert client.post("/api/answer", content=b"x" * 20_000).status_code == 413
    assert client.post("/api/answer", json={"name": "../x.png", "action": "skip"}).status_code == 404
    assert not (folder / "labels.csv").exists()


def test_api_key_guards_the_api(tmp_path: Path) -> None:
    folder, _ = unlabelled(tmp_path / "d", 2)
    client = TestClient(create_label_app(Session(LabelStore(folder)), api_key="s3cret"))
    assert client.get("/").status_code == 200  # the page itself carries no data
    assert client.get("/api/next").status_code == 401
    assert client.get("/api/next", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_the_page_runs_on_the_service_stack(tmp_path: Path) -> None:
    """The same middleware, errors and metrics as `serve`: request ids, Bearer or X-API-Key, /metrics
    behind the key, requests counted by route."""
    folder, _ = unlabelled(tmp_path / "d", 2)
    client = TestClient(create_label_app(Session(LabelStore(folder)), api_key="s3cret"))
    key = {"X-API-Key": "s3cret"}
    r = client.get("/api/item/img000.png", headers={**key, "X-Request-ID": "req-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-1"
    assert len(client.get("/").headers["x-request-id"]) == 16  # a new one where the client sent none
    assert client.get("/api/next", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    r = client.post("/api/answer", content=b"x" * 20_000, headers=key)
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert client.get("/metrics").status_code == 401
    text = client.get("/metrics", headers=key).text
    assert 'captcha_crnn_http_requests_total{method="GET",route="/api/item/{name}",status="200"} 1.0' in text
    assert 'captcha_crnn_http_errors_total{route="/api/answer",status="413"} 1.0' in text


def test_two_pages_do_not_lose_answers(tmp_path: Path) -> None:
    folder, _ = unlabelled(tmp_path / "d", 8)
    stores = [LabelStore(folder), LabelStore(folder)]  # two sessions on one folder

    def label(store: LabelStore, names: list[str]) -> None:
        for n in names:
            store.answer(n, "label", n[3:6])

    names = sorted(p.name for p in folder.glob("*.png"))
    threads = [threading.Thread(target=label, args=(s, names[i::2])) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(LabelStore(folder).read().labels) == 8


def test_model_orders_least_confident_first(trained, tmp_path: Path) -> None:
    from captcha_crnn import Recognizer

    folder, _ = unlabelled(tmp_path / "d", 10)
    session = Session(LabelStore(folder), Recognizer.load(trained.model_path))
    confs = [session.readings[n][1] for n in session.order]
    assert confs == sorted(confs)
    first = TestClient(create_label_app(session)).get("/api/next").json()
    assert first["name"] == session.order[0] and first["prefill"] == session.readings[first["name"]][0]


def test_damaged_labels_file_is_one_clear_error(tmp_path: Path) -> None:
    folder, _ = unlabelled(tmp_path / "d", 2)
    (folder / "labels.state.json").write_text("{not json")
    with pytest.raises(CaptchaError, match="labels.state.json"):
        LabelStore(folder)


def test_browser_labels_a_folder(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In headless Chromium: pre-fill, accept (Enter), correct, skip (Esc), unreadable (Alt+U), back
    (Alt+Left), reload and continue where it stopped, then "Train now" and the new model's pre-fill."""
    from browser import CHROMIUM, CHROMIUM_ARGS, run_server, sync_playwright

    from captcha_crnn import Recognizer

    sync_api = sync_playwright()
    folder, truth = unlabelled(tmp_path / "d", 16)
    store = LabelStore(folder)
    for i in range(6, 16):  # ten answered earlier, so "Train now" has enough labels
        store.answer(f"img{i:03d}.png", "label", truth[i])
    session = Session(LabelStore(folder), Recognizer.load(trained.model_path))
    monkeypatch.setattr(labelling, "better_reader", lambda *a: None)  # swap even to a weaker model (below)
    app = create_label_app(session, train_args=("--epochs", "2", "--preset", "tiny"))
    base, stop = run_server(app)
    answers = lambda: LabelStore(folder).read()  # noqa: E731
    old_model = session.model

    def current(page) -> str:
        return page.inner_text("#meta").split(" ")[0]

    def wait_next(page, old: str) -> str:
        page.wait_for_function("old => !document.getElementById('meta').textContent.startsWith(old + ' ')", arg=old)
        return current(page)

    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(base + "/")
                page.wait_for_function("document.getElementById('meta').textContent.length > 0")
                first = current(page)
                assert first == next(n for n in session.order if n not in answers().labels)
                assert page.input_value("#label") == session.readings[first][0]  # pre-filled
                page.keyboard.press("Enter")  # accept the pre-fill
                second = wait_next(page, first)
                assert answers().labels[first] == session.readings[first][0]
                page.fill("#label", "9999")
                page.keyboard.press("Enter")  # correct
                third = wait_next(page, second)
                assert answers().labels[second] == "9999"
                page.keyboard.press("Escape")  # skip
                fourth = wait_next(page, third)
                assert third in answers().skipped
                page.keyboard.press("Alt+u")  # unreadable
                fifth = wait_next(page, fourth)
                assert fourth in answers().unreadable
                page.keyboard.press("Alt+ArrowLeft")  # back to the previous answer
                assert wait_next(page, fifth) == fourth
                page.reload()  # a closed tab or a reload continues with what is left
                page.wait_for_function("document.getElementById('meta').textContent.length > 0")
                now = current(page)
                assert now not in (first, second, fourth)
                assert "12 labelled / 16" in page.inner_text("#progress") and not errors
                page.click("#train")  # train in the background; the page swaps in the new model's pre-fill
                page.wait_for_function("document.getElementById('training').textContent.startsWith('trained (')",
                                       timeout=240_000)
                assert session.model not in (None, old_model) and Path(session.model).is_file()
                assert session.model in page.inner_text("#training")
                text, conf = session.readings[now]  # the new model's reading and confidence
                page.wait_for_function("want => document.getElementById('meta').textContent.includes(want)",
                                       arg=f"model confidence {100 * conf:.1f}%")
                assert page.input_value("#label") == text and current(page) == now and not errors
            finally:
                browser.close()
    finally:
        stop()


@pytest.mark.slow
def test_train_now_runs_in_the_background_and_swaps_the_model(tmp_path: Path) -> None:
    import time

    folder, truth = unlabelled(tmp_path / "d", 50)
    session = Session(LabelStore(folder))
    client = TestClient(create_label_app(session, train_args=("--epochs", "2", "--preset", "tiny")))
    assert client.post("/api/train").status_code == 409  # too few labels yet
    for i, t in enumerate(truth[:40]):  # the other 10 stay unanswered: training learns from them unlabelled
        client.post("/api/answer", json={"name": f"img{i:03d}.png", "action": "label", "label": t})
    assert client.post("/api/train").json()["state"] == "running"
    t0 = time.monotonic()
    while client.get("/api/train").json()["state"] == "running" and time.monotonic() - t0 < 240:
        t1 = time.perf_counter()
        assert client.get("/api/next").status_code == 200
        assert time.perf_counter() - t1 < 1.0  # labelling goes on while the model trains
        time.sleep(0.5)
    status = client.get("/api/train").json()
    assert status["state"] == "done", status
    assert status["model_in_use"] == status["model"] and Path(status["model"]).is_file()
    assert session.readings and status["val_accuracy"] is not None  # the new model pre-fills
    assert status["reader"] == "single model"  # 40 labels: the small model trains alone
    history = json.loads((Path(status["model"]).parent / "history.json").read_text())["history"]
    assert all("unlabelled_used" in e for e in history)  # the unanswered images were its unlabelled pool


def test_a_weaker_new_model_does_not_replace_the_pre_fill(trained, tmp_path: Path) -> None:
    """The new model is swapped in only when it reads its held-out labels at least as well as the
    pre-fill in use (a zero-shot reader can be the better one for the first rounds)."""
    from captcha_crnn.infer import Prediction

    class Fixed:
        def __init__(self, right: bool):
            self.right = right

        def predict(self, paths, errors="raise"):
            return [Prediction(Path(p).name.split("-")[0] if self.right else "", 1.0) for p in paths]

    path = Path(trained.model_path)
    note = better_reader(Fixed(True), Fixed(False), path)
    assert note is not None and "kept the pre-fill in use: it reads 100%" in note and "new model 0%" in note
    assert better_reader(Fixed(False), Fixed(True), path) is None
    assert better_reader(None, Fixed(False), path) is None  # nothing in use: any model is better
