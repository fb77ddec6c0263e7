"""Request parsing for ``POST /v1/read`` (the body: raw, JSON base64 or multipart; the options) and
the body and JSON checks the labelling page's ``POST /api/answer`` shares.

Every problem is an ``HTTPException`` with the status and message the client gets.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import HTTPException, Request

OPTION_KEYS = ("model", "beam", "length", "charset")


def _fail(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


async def _read_body(request: Request, limit: int) -> bytes:
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise _fail(400, "bad Content-Length header") from None
        if n > limit:
            raise _fail(413, f"request body too large ({n} bytes > {limit})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _fail(413, f"request body too large (over {limit} bytes)")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _b64(s: Any, i: int) -> bytes:
    where = f"images[{i}]" if i >= 0 else "image"
    if not isinstance(s, str):
        raise _fail(422, f"{where}: expected a base64 string")
    if s.startswith("data:"):
        s = s.partition(",")[2]
    if any(c.isspace() for c in s[:80]) or any(c.isspace() for c in s[-80:]):
        s = "".join(s.split())
    if "-" in s or "_" in s:
        s = s.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise _fail(422, f"{where}: not valid base64") from None
    if not data:
        raise _fail(422, f"{where}: empty image")
    return data


def _json_object(body: bytes, shape: str) -> dict[str, Any]:
    """The body as a JSON object; 422 when it is not JSON or not an object (`shape`: what it should be)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise _fail(422, "body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _fail(422, f"JSON body must be an object: {shape}")
    return obj


def _parse_json(body: bytes, max_images: int) -> tuple[list[bytes], bool, dict[str, Any]]:
    obj = _json_object(body, '{"image": BASE64} or {"images": [BASE64, ...]}')
    if ("image" in obj) == ("images" in obj):
        raise _fail(422, 'JSON body needs exactly one of "image" (base64) or "images" (list of base64)')
    if "image" in obj:
        images, single = [_b64(obj["image"], -1)], True
    else:
        items = obj["images"]
        if not isinstance(items, list) or not items:
            raise _fail(422, '"images" must be a non-empty list of base64 strings')
        if len(items) > max_images:
            raise _fail(413, f"too many images ({len(items)} > {max_images})")
        images, single = [_b64(x, i) for i, x in enumerate(items)], False
    return images, single, {k: obj[k] for k in OPTION_KEYS if obj.get(k) is not None}


async def _parse_multipart(
    request: Request, body: bytes, max_images: int
) -> tuple[list[bytes], list[str | None], dict[str, Any]]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=max_images, max_fields=32,
                                     max_part_size=64 * 1024).parse()
    except MultiPartException as e:
        msg = str(e.message)
        raise _fail(413 if "Too many files" in msg else 422, f"multipart: {msg}") from None
    except Exception as e:
        raise _fail(422, f"multipart: could not parse the form ({type(e).__name__})") from None
    images: list[bytes] = []
    names: list[str | None] = []
    opts: dict[str, Any] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                if not data:
                    raise _fail(422, f"multipart: file {value.filename or key!r} is empty")
                images.append(data)
                names.append(value.filename)
            elif key in OPTION_KEYS and value != "":
                opts[key] = value
    finally:
        await form.close()
    if not images:
        raise _fail(422, "multipart: no image files in the form")
    return images, names, opts


def _as_int(v: Any, name: str, lo: int, hi: int) -> int | None:
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            raise _fail(422, f"{name} must be an integer") from None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(422, f"{name} must be an integer")
    if not lo <= v <= hi:
        raise _fail(422, f"{name} must be between {lo} and {hi}")
    return v


def _as_str(v: Any, name: str, max_len: int) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise _fail(422, f"{name} must be a string")
    if not v or len(v) > max_len:
        raise _fail(422, f"{name} must have 1 to {max_len} characters")
    return v
