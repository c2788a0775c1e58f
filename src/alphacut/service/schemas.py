"""Request and response schemas of the removebg_mask API (the hosted API's contract)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    field_validator,
)

from alphacut.pipeline.options import LenientBool, RemoveOptions
from alphacut.service.examples import (
    ERROR_EXAMPLE,
    FAILED_EXAMPLE,
    PROCESSING_EXAMPLE,
    REQUEST_EXAMPLES,
    SUCCESS_EXAMPLE,
)


# ids and keys arrive as strings or numbers; both are kept as sent.
def _key(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


# An API key: null means none, as "" does.
Key = Annotated[str, PlainValidator(_key), WithJsonSchema({"type": "string"})]


class RemoveBgRequest(RemoveOptions):
    """Body of ``POST /api/v5/removebg_mask`` (JSON, form or multipart): the processing
    options (``pipeline/options.py``) plus the request's own fields."""

    model_config = ConfigDict(
        # Unknown fields are ignored, as the hosted API does: its clients send some we lack.
        extra="ignore",
        json_schema_extra={"examples": [example["value"] for example in REQUEST_EXAMPLES.values()]},
    )

    kept_when_empty = frozenset({"image"})  # null or "" is "image is missing", not a default

    key: Key = Field("", description="Your API key (checked against ALPHACUT_API_KEYS)")
    image: str = Field(description="http(s) URL of the image, or a data:image/...;base64, URI")
    # A 64-bit integer: the job database and most clients' JSON readers hold no bigger one.
    seed: int | None = Field(
        None,
        ge=-(2**63),
        le=2**63 - 1,
        description="Echoed in meta; null draws a random one",
    )
    webhook: str | None = Field(
        None, description="URL that receives the result by POST when the job ends"
    )
    track_id: str | int | None = Field(None, description="Echoed in the webhook call")
    base64: LenientBool = Field(False, description="Write the output as base64 text")
    temp: LenientBool = Field(False, description="Store the output temporarily")
    instant_response: LenientBool = Field(
        False, description="Answer 'processing' at once and let the client fetch the result"
    )
    model: str | None = Field(None, description="Installed model name (default: the server's)")

    @field_validator("bg_image")
    @classmethod
    def _bg_image_is_remote(cls, value: str | None) -> str | None:
        # The server never reads its own files on a client's behalf.
        if value is not None and not value.strip().lower().startswith(
            ("http://", "https://", "data:")
        ):
            raise ValueError("must be an http(s) URL or a data:image/...;base64, URI")
        return value

    def options(self) -> RemoveOptions:
        """The processing options alone, as the job record stores them."""
        return RemoveOptions.model_validate(
            self.model_dump(mode="json", include=set(RemoveOptions.model_fields))
        )


class FetchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: Key = ""
    request_id: Annotated[
        str | int | None, BeforeValidator(lambda value: None if value == "" else value)
    ] = None


class SuccessResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [SUCCESS_EXAMPLE]})

    status: str = "success"
    generationTime: float
    id: int
    output: list[str]
    meta: dict[str, Any]


class ProcessingResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [PROCESSING_EXAMPLE]})

    status: str = "processing"
    id: int
    eta: float
    message: str
    messege: str
    tip: str
    fetch_result: str
    future_links: list[str]
    output: list[str]
    meta: dict[str, Any]


class ErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ERROR_EXAMPLE]})

    status: str = "error"
    message: str


class FailedResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [FAILED_EXAMPLE]})

    status: str = "failed"
    id: int | str
    message: str
