"""OpenAPI models of the service (documentation; responses are serialised directly for speed)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .config import MAX_BEAM, MAX_CHARSET, MAX_LENGTH


class ReadResult(BaseModel):
    text: str = Field(description="the text read")
    confidence: float = Field(description="probability of the whole text")
    char_confidences: list[float] = Field(description="probability of each character")
    ms: float = Field(description="milliseconds from the request's arrival to this image's result")
    filename: str | None = Field(None, description="multipart file name")


class ReadResponse(BaseModel):
    model: str
    ms: float = Field(description="milliseconds the request took in the server")
    results: list[ReadResult] = Field(description="one per image, in request order")
    text: str | None = Field(None, description="single-image requests: the text (also in results[0])")
    confidence: float | None = None
    char_confidences: list[float] | None = None


class ReadJSON(BaseModel):
    image: str | None = Field(None, description="base64 image (a data: URL works too)")
    images: list[str] | None = Field(None, description="several base64 images")
    model: str | None = None
    beam: int | None = Field(None, ge=1, le=MAX_BEAM)
    length: int | None = Field(None, ge=1, le=MAX_LENGTH)
    charset: str | None = Field(None, min_length=1, max_length=MAX_CHARSET)


class InputSize(BaseModel):
    height: int
    width: int | None = Field(description="fixed width, or null when the aspect ratio is kept")
    channels: int


class Recent(BaseModel):
    minutes: float
    readings: int
    unsure: int
    unsure_share: float


class ModelInfo(BaseModel):
    name: str
    alphabet: str
    input: InputSize
    source: str
    sha256: str = Field(description="SHA-256 of the model file in service")
    loaded_at: str = Field(description="when it was loaded (UTC)")
    unsure_below: float = Field(description="readings under this confidence count as unsure")
    default: bool
    recent: Recent = Field(description="readings and unsure readings of the last minutes (the drift signal)")


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    models: list[str]


class ErrorResponse(BaseModel):
    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse} for c in codes}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
READ_BODY = {
    "requestBody": {
        "description": "One image as the raw body, multipart files, or JSON with base64 images.",
        "required": True,
        "content": {
            "image/png": _BINARY,
            "image/jpeg": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "model": {"type": "string"},
                        "beam": {"type": "integer", "minimum": 1, "maximum": MAX_BEAM},
                        "length": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH},
                        "charset": {"type": "string", "minLength": 1},
                    },
                }
            },
            "application/json": {"schema": ReadJSON.model_json_schema()},
        },
    }
}
