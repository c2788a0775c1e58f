"""Reading request bodies (JSON, form, multipart) and the image they point to."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from alphacut.config import Settings
from alphacut.errors import ImageTooLarge, InvalidRequest
from alphacut.io.fetch import FetchPolicy, fetch_url

_DATA_URI = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        allowlist=settings.url_allowlist,
        max_bytes=settings.max_download_bytes,
        total_timeout=settings.fetch_timeout,
    )


async def read_body(request: Request) -> tuple[dict[str, Any], bytes | None]:
    """The body's fields, plus the bytes of an uploaded ``image`` file (multipart) if any."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.form()
        except Exception as exc:  # malformed multipart raises several starlette/multipart types
            raise InvalidRequest(f"malformed form body: {exc}", 400) from exc
        fields: dict[str, Any] = {}
        upload: bytes | None = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name == "image":
                    upload = await value.read()
                    fields["image"] = "upload"
            else:
                fields[name] = value
        return fields, upload
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object", 400)
    if content_type not in ("application/json", "", "text/plain") and not content_type.endswith(
        "+json"
    ):
        raise InvalidRequest(
            f"unsupported content type {content_type!r}; send JSON, form or multipart", 415
        )
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON body: {exc}", 400) from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the JSON body must be an object", 400)
    return body, None


def validate(model: type[BaseModel], fields: dict[str, Any]) -> Any:
    """Validate with pydantic and turn its errors into one readable message."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = []
        missing = False
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "body"
            if error["type"] == "missing":
                missing = True
                problems.append(f"{where} is required")
            else:
                # Our own validators raise ValueError; pydantic's "Value error, " prefix is noise.
                message = error["msg"].removeprefix("Value error, ")
                problems.append(f"{where}: {message}" if error["loc"] else message)
        raise InvalidRequest("; ".join(problems), 400 if missing else 422) from exc


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    match = _DATA_URI.match(uri)
    if match is None:
        raise InvalidRequest("image data URI must look like data:image/<type>;base64,<data>", 400)
    payload = uri[match.end() :]
    if len(payload) * 3 // 4 > max_bytes:
        raise ImageTooLarge(f"image is larger than the {max_bytes // (1024 * 1024)} MB limit")
    try:
        return base64.b64decode(payload.strip(), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("image data URI is not valid base64", 400) from exc


def load_image_bytes(image: str, settings: Settings) -> tuple[bytes, str]:
    """Bytes of the requested image and the value meta.image_url reports. Runs in a thread."""
    value = image.strip()
    if value.lower().startswith("data:"):
        return decode_data_uri(value, settings.max_download_bytes), "data-uri"
    if not re.match(r"^https?://", value, re.IGNORECASE):
        raise InvalidRequest("image must be an http(s) URL or a data:image/...;base64, URI", 400)
    return fetch_url(value, fetch_policy(settings)).content, value
