"""Reading request bodies (JSON, form, multipart) into validated models."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from alphacut.errors import AlphacutError, ImageTooLarge, InvalidRequest
from alphacut.pipeline.options import describe_errors
from alphacut.service.limits import max_body_bytes


async def read_body(request: Request) -> tuple[dict[str, Any], bytes | None]:
    """The body's fields, plus the bytes of an uploaded ``image`` file (multipart) if any."""
    settings = request.app.state.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            # A data URI in a text field may be as large as the body may be (RequestLimits).
            form = await request.form(max_part_size=max_body_bytes(settings))
        except AlphacutError:  # the body cap, its deadline or a disconnect (service/limits.py)
            raise
        except Exception as exc:  # malformed multipart raises several starlette/multipart types
            raise InvalidRequest(f"malformed form body: {exc}", 400) from exc
        fields: dict[str, Any] = {}
        upload: bytes | None = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name == "image":
                    # The same limit as a downloaded image or a data URI.
                    limit = settings.max_download_bytes
                    if value.size is not None and value.size > limit:
                        raise ImageTooLarge(f"image is larger than the {limit} byte limit")
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
    return parse_json_object(raw), None


# The most JSON values (objects, arrays and the items in them) a body may hold. A request has
# about 20 fields; the cap keeps a body of `{}`s from costing ~26x its size in Python objects
# before its key is even read (31 MiB of them took 815 MB).
MAX_JSON_VALUES = 10_000


def parse_json_object(raw: bytes, max_values: int = MAX_JSON_VALUES) -> dict[str, Any]:
    """A JSON object body. JSON that Python cannot hold (nesting deeper than the recursion
    limit, integers over 4300 digits), more than ``max_values`` values, or a string that is not
    valid Unicode (a lone surrogate escape, ``"\\ud800"``) is a malformed body, not a server
    error."""
    # Every value past the first follows a comma, and every container opens with a bracket:
    # counted on the raw bytes (commas inside strings count too, so this only overestimates),
    # before anything is parsed.
    if raw.count(b",") + raw.count(b"{") + raw.count(b"[") > max_values:
        raise InvalidRequest(f"malformed JSON body: more than {max_values} values", 400)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise InvalidRequest("malformed JSON body: nested too deeply", 400) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, too many int digits
        raise InvalidRequest(f"malformed JSON body: {exc}", 400) from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the JSON body must be an object", 400)
    _check_unicode(body)
    return body


def _check_unicode(value: Any) -> None:
    """Raises InvalidRequest for a string (key or value, at any depth) that cannot be encoded
    as UTF-8: JSON's \\u escapes can spell lone surrogates, which fail wherever the string is
    hashed, stored or logged."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest(
                    "malformed JSON body: a string is not valid Unicode (a lone surrogate)", 400
                ) from None


def validate(model: type[BaseModel], fields: dict[str, Any]) -> Any:
    """Validate with pydantic; errors read as the CLI's and the library's do."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise describe_errors(exc) from exc
