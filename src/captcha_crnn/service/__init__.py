"""The HTTP service: ``captcha-crnn serve`` (FastAPI + uvicorn), micro-batching, metrics, web page."""

from .app import create_app
from .config import ServiceConfig
from .models import ModelEntry, load_models
from .server import serve

__all__ = ["ModelEntry", "ServiceConfig", "create_app", "load_models", "serve"]
