"""The HTTP service: ``captcha-crnn serve`` (FastAPI + uvicorn), micro-batching, metrics, web page."""

from .app import ServiceConfig, create_app
from .models import ModelEntry, load_models
from .server import serve

__all__ = ["ModelEntry", "ServiceConfig", "create_app", "load_models", "serve"]
