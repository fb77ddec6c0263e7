"""`captcha-crnn label DIR`: a page for labelling a folder of captchas, one at a time, with the
model's reading pre-filled and the images it is least sure of first.

Routes (all but the page need the API key when one is set): ``GET /`` the page, ``GET /api/next``
(the next image to answer, after ``?after=NAME``), ``GET /api/item/NAME`` (one image's entry, for
going back), ``GET /api/image/NAME`` (its bytes), ``POST /api/answer`` ({"name", "action": label |
skip | unreadable, "label"}), ``GET /api/progress``, ``GET`` / ``POST /api/train`` ("Train now"),
``GET /metrics``. Answers go to DIR/labels.csv at once (data/label_store.py). The routes are one
router on the service's app factory (factory.py): the same middleware, JSON errors, metrics and
launcher as ``serve``.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse

from ..data.label_store import Answers, LabelStore
from ..errors import CaptchaError
from ..model.ddddocr_package import INSTALL_HINT
from ..progress import bar_disable
from .config import api_key_setting
from .factory import build_app
from .requests import _fail, _json_object, _read_body
from .server import run_app
from .trainer import BackgroundTrainer

if TYPE_CHECKING:
    from ..infer import Reader

MAX_BODY = 16_384  # bytes in one answer


def _read_all(reader: Reader, paths: list[Path], progress: bool, chunk: int = 256) -> list[Any]:
    """Every image read (CaptchaError in place of an unreadable one), with a progress bar if asked."""
    import sys

    from tqdm import tqdm

    out: list[Any] = []
    with tqdm(total=len(paths), desc="pre-fill", unit="img", disable=bar_disable(progress), file=sys.stderr) as bar:
        for i in range(0, len(paths), chunk):
            out += reader.predict(paths[i : i + chunk], errors="return")
            bar.update(min(chunk, len(paths) - i))
    return out


def better_reader(current: Reader | None, new: Reader, path: Path) -> str | None:
    """None when the new model (at `path`) reads its own held-out labels at least as well as the
    `current` pre-fill does; else a note saying why the current one stays. A zero-shot reader can
    beat a model trained on a few dozen labels (ddddocr reads captcha_v2 at 97% before any label)."""
    from ..evaluate import score
    from ..model.format import read_metadata
    from ..training.sets import held_out_samples

    test = held_out_samples(read_metadata(path)) if current is not None else []
    if not test:
        return None
    truth, paths = [s.label for s in test], [s.path for s in test]
    scores = [score(truth, ["" if isinstance(p, CaptchaError) else p.text for p in r.predict(paths, errors="return")])
              .sequence_accuracy for r in (current, new)]
    if scores[1] >= scores[0]:
        return None
    return (f"kept the pre-fill in use: it reads {scores[0]:.0%} of the {len(test)} held-out labels, "
            f"the new model {scores[1]:.0%}")


class Session:
    """The order of a labelling session and its pace."""

    def __init__(self, store: LabelStore, recognizer: Reader | None = None, progress: bool = False):
        self.store = store
        self.answered, self.t0 = 0, None
        self.model: str | None = None
        self.use(recognizer, progress=progress)

    def use(self, recognizer: Reader | None, name: str | None = None, progress: bool = False) -> None:
        """Pre-fill and order by `recognizer` (None: no pre-fill, file order): least confident first."""
        readings: dict[str, tuple[str, float]] = {}
        if recognizer is not None:
            paths = [self.store.path(n) for n in self.store.names]
            for n, p in zip(self.store.names, _read_all(recognizer, paths, progress)):
                readings[n] = ("", 0.0) if isinstance(p, CaptchaError) else (p.text, p.confidence)
        order = sorted(self.store.names, key=lambda n: readings.get(n, ("", 0.0))[1])  # ties keep file order
        # swapped at once for the handlers
        self.readings, self.order, self.model, self.reader = readings, order, name, recognizer

    def use_model(self, path: Path) -> str:
        """Swap in a newly trained model (called by the background trainer when it is done), unless
        the pre-fill in use reads the new model's held-out labels better; says which was kept."""
        from ..infer import Recognizer

        new = Recognizer.load(path, threads=1)
        kept = better_reader(self.reader, new, path)
        if kept is not None:
            return kept
        self.use(new, str(path))
        return f"pre-fill now from {path}"

    def entry(self, name: str, a: Answers | None = None) -> dict[str, Any]:
        """What the page shows of one image; `a`: the answers, when just read."""
        a = a or self.store.read()
        text, conf = self.readings.get(name, ("", None))
        state = ("labelled" if name in a.labels else "unreadable" if name in a.unreadable
                 else "skipped" if name in a.skipped else "new")
        return {"name": name, "prefill": a.labels.get(name, text), "confidence": conf, "state": state,
                "progress": self.progress(a)}

    def next(self, after: str | None) -> dict[str, Any] | None:
        """The first unanswered image after `after` in the order (skipped ones come round again last)."""
        a = self.store.read()
        start = self.order.index(after) + 1 if after in self.order else 0
        rotated = self.order[start:] + self.order[:start]
        for pool in ([n for n in rotated if not a.done(n) and n not in a.skipped],
                     [n for n in rotated if n in a.skipped and not a.done(n)]):
            if pool:
                return self.entry(pool[0], a)
        return None

    def answer(self, name: str, action: str, label: str | None) -> dict[str, Any]:
        a = self.store.answer(name, action, label)
        self.answered += 1
        self.t0 = self.t0 or time.monotonic()
        return self.progress(a)

    def progress(self, a: Any = None) -> dict[str, Any]:
        a = a or self.store.read()
        minutes = (time.monotonic() - self.t0) / 60 if self.t0 else 0.0
        return {"labelled": len(a.labels), "unreadable": len(a.unreadable), "skipped": len(a.skipped),
                "total": len(self.store.names),
                "per_minute": round(self.answered / minutes, 1) if minutes > 0.05 else None}


MIN_TRAIN_LABELS = 10  # labels needed before "Train now" (training keeps 10% for validation)
PROTECTED = ("/api/", "/metrics")  # the page itself carries no data


def train_options(charset: str | None) -> tuple[str, ...]:
    """The options of "Train now": a short budget, and the page's own characters as the style's alphabet."""
    return ("--max-minutes", "3", *(("--charset", charset) if charset else ()))


def create_label_app(session: Session, api_key: str | None = None, train_args: tuple[str, ...] | None = None,
                     publish: str | Path | None = None, with_labels: str | Path | None = None) -> FastAPI:
    """The labelling page and its API over one Session, on the service's app factory (factory.py);
    "Train now" runs `captcha-crnn train` with `train_args` (default: train_options) on the labels so far (and
    `with_labels`), and copies the model over `publish` where given (service/trainer.py)."""
    trainer = BackgroundTrainer(session.store.folder, session.use_model, train_args or train_options(None),
                                publish, with_labels)
    return build_app([label_router(session, trainer)], title="captcha-crnn label", api_key=api_key,
                     protected=PROTECTED, max_body=MAX_BODY)


def _check_known(session: Session, name: str) -> None:
    if not session.store.has(name):
        raise _fail(404, f"{name}: not an image of {session.store.folder}")


def label_router(session: Session, trainer: BackgroundTrainer) -> APIRouter:
    """The page at / and its API under /api/ (the module doc)."""
    router = APIRouter()
    _add_item_routes(router, session)
    _add_answer_routes(router, session, trainer)
    return router


def _add_item_routes(router: APIRouter, session: Session) -> None:
    page = resources.files(__package__).joinpath("label.html").read_text(encoding="utf-8")

    @router.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @router.get("/api/next")
    def next_item(after: str | None = None) -> Any:
        return session.next(after) or {"name": None, "progress": session.progress()}

    @router.get("/api/item/{name}")
    def item(name: str) -> Any:
        _check_known(session, name)
        return session.entry(name)

    @router.get("/api/image/{name}")
    def image(name: str) -> Any:
        _check_known(session, name)
        return FileResponse(session.store.path(name))

    @router.get("/api/progress")
    def progress() -> Any:
        return session.progress()


def _add_answer_routes(router: APIRouter, session: Session, trainer: BackgroundTrainer) -> None:
    @router.get("/api/train")
    def train_status() -> Any:
        return {**trainer.status(), "model_in_use": session.model}

    @router.post("/api/train")
    def train_now() -> Any:
        n = len(session.store.read().labels)
        if n < MIN_TRAIN_LABELS:
            raise _fail(409, f"label at least {MIN_TRAIN_LABELS} images before training ({n} so far)")
        return {**trainer.start(), "model_in_use": session.model}

    @router.post("/api/answer")
    async def answer(request: Request) -> Any:
        data = _json_object(await _read_body(request, MAX_BODY), '{"name", "action", "label"}')
        if not isinstance(data.get("name"), str):
            raise _fail(422, "body must be a JSON object with a string 'name'")
        label = data.get("label")
        if label is not None and not isinstance(label, str):
            raise _fail(422, "'label' must be a string")
        _check_known(session, data["name"])
        return session.answer(data["name"], str(data.get("action", "label")), label)


def load_reader(model: str | None, charset: str | None, folder: str | Path | None = None
                ) -> tuple[Reader | None, str | None]:
    """(what pre-fills the page, its name): a trained model; the service's own readings where `folder` holds
    images kept by `serve --keep-unsure` (kept.csv); ddddocr's own model zero-shot, restricted to `charset` (the
    default where the pretrained extra is installed); or nothing ("none")."""
    import sys

    from ..infer import ddddocr_reader
    from .keep import KEPT_CSV, KeptReader

    if model is None and folder is not None and (Path(folder) / KEPT_CSV).is_file():
        return KeptReader(folder), f"the service's readings ({Path(folder) / KEPT_CSV})"  # type: ignore[return-value]
    if model is None:
        if not ddddocr_reader.available():
            return None, None
        try:
            return load_reader(ddddocr_reader.NAME, charset)
        except CaptchaError as e:  # the default must not stop the page: file order instead
            print(f"captcha-crnn: no pre-fill ({e})", file=sys.stderr)
            return None, None
    if model == "none":
        return None, None
    if model == ddddocr_reader.NAME:
        if not ddddocr_reader.available():
            raise CaptchaError(f"--model ddddocr needs ddddocr 1.6 or later: {INSTALL_HINT}")
        reader = ddddocr_reader.DdddocrReader(charset)
        if reader.missing:
            print(f"captcha-crnn: ddddocr's model never reads {reader.missing!r}; type those yourself",
                  file=sys.stderr)
        return reader, f"{ddddocr_reader.NAME} (zero-shot)"
    from ..infer import Recognizer

    return Recognizer.load(model), model


def serve_labels(folder: str, model: str | None = None, host: str = "127.0.0.1", port: int = 8001,
                 api_key: str | None = None, charset: str | None = None, publish: str | None = None,
                 with_labels: str | None = None) -> None:
    """Run the labelling page for `folder` until stopped, pre-filled by `model` (load_reader); "Train now" adds
    `with_labels`' images to the folder's labels and copies its model over `publish` (a served model's file)."""
    import sys

    store = LabelStore(folder, charset)  # a bad folder or labels.csv fails here, before binding the port
    if with_labels:
        from ..data.labels import read_samples

        read_samples(with_labels)  # a bad path fails here too
    recognizer, name = load_reader(model, charset, folder)
    if recognizer is not None:
        print(f"captcha-crnn: reading {len(store.names)} images with {name} to order them ...", file=sys.stderr)
    session = Session(store, recognizer, progress=True)
    session.model = name
    api_key = api_key_setting(api_key)
    url = f"http://{host}:{port}/" + (f"#key={api_key}" if api_key else "")
    print(f"captcha-crnn: labelling {folder} ({session.progress()['labelled']} of {len(store.names)} labelled) "
          f"on {url}", file=sys.stderr)
    if publish:
        print(f"captcha-crnn: \"Train now\" copies its model over {publish}", file=sys.stderr)
    run_app(create_label_app(session, api_key, train_options(charset), publish, with_labels), host, port,
            log_level="warning")
