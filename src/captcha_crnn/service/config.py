"""Settings of one server: ``ServiceConfig`` (limits, batching), the limits of the read options and
the API key setting (``api_key_setting``: the one reader of ``$CAPTCHA_CRNN_API_KEY``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from ..decode.limits import MAX_BEAM, MAX_CHARSET, MAX_LENGTH

__all__ = ["ENV_API_KEY", "ENV_CONFIG", "MAX_BEAM", "MAX_CHARSET", "MAX_LENGTH", "ServiceConfig", "api_key_setting"]
ENV_CONFIG = "CAPTCHA_CRNN_SERVE"  # models and config handed to ``uvicorn --factory`` workers (JSON)
ENV_API_KEY = "CAPTCHA_CRNN_API_KEY"


def api_key_setting(given: str | None = None) -> str | None:
    """The API key of `serve` and `label`: `given` (--api-key), else $CAPTCHA_CRNN_API_KEY; None: no key."""
    return given or os.environ.get(ENV_API_KEY) or None


@dataclass
class ServiceConfig:
    """Limits and batching settings of one server."""

    api_key: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024  # whole request body -> 413
    max_pixels: int = 4_000_000  # per image (header check before decoding) -> 413
    max_images: int = 64  # per request -> 413
    max_batch: int = 64  # images per forward pass
    max_wait_ms: float = 2.0  # how long a batch waits for more images
    max_queue: int = 4096  # images waiting per model -> 503
    timeout_s: float = 10.0  # per request -> 504
    warmup: bool = True  # one dummy read per model at start
    watch_s: float = 2.0  # how often the model files are checked for a change to reload (0: never)
    keep_unsure: str | None = None  # folder for the images read under the threshold (off: None)
    keep_below: float | None = None  # that threshold (None: each model's own 99%-precision confidence)
    keep_max_images: int | None = 10_000  # the folder's cap in images ...
    keep_max_bytes: int | None = None  # ... and in bytes (None: none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
