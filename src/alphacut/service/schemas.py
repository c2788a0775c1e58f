"""Request and response schemas of the removebg_mask API (the hosted API's contract)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_TRUE = {"true", "yes", "1", "on", "y", "t"}
_FALSE = {"false", "no", "0", "off", "n", "f", ""}


def parse_bool(value: Any) -> Any:
    """Clients of the hosted API send true/false, "true"/"false", "yes"/"no" and 1/0."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("expected a boolean (true/false, yes/no or 1/0)")


def _none_to(default: Any):
    return lambda value: default if value is None or value == "" else value


LenientBool = Annotated[bool, BeforeValidator(parse_bool)]


def _threshold(default: int, high: int, description: str):
    return Annotated[int, BeforeValidator(_none_to(default)),
                     Field(ge=0, le=high, description=description)]


class RemoveBgRequest(BaseModel):
    """Body of ``POST /api/v5/removebg_mask`` (JSON, form or multipart)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{
                "key": "", "seed": 12345,
                "image": "https://example.com/boy.png",
                "post_process_mask": False, "only_mask": False, "alpha_matting": False,
                "webhook": None, "track_id": None,
            }]
        },
    )

    key: Annotated[str, BeforeValidator(_none_to(""))] = Field(
        "", description="Your API key (checked against ALPHACUT_API_KEYS)")
    image: str = Field(description="http(s) URL of the image, or a data:image/...;base64, URI")
    alpha_matting: LenientBool = False
    post_process_mask: LenientBool = False
    only_mask: LenientBool = False
    inverse_mask: LenientBool = Field(False, description="Invert the mask / cutout (v6)")
    seed: Annotated[int | None, BeforeValidator(_none_to(None))] = Field(
        None, description="Echoed in meta; null draws a random one")
    alpha_matting_foreground_threshold: _threshold(240, 255, "Sure-foreground threshold") = 240
    alpha_matting_background_threshold: _threshold(20, 255, "Sure-background threshold") = 20
    alpha_matting_erode_size: _threshold(5, 64, "Erosion of the sure regions (px)") = 5
    webhook: Annotated[str | None, BeforeValidator(_none_to(None))] = Field(
        None, description="URL that receives the result by POST when the job ends")
    track_id: Annotated[str | int | None, BeforeValidator(_none_to(None))] = Field(
        None, description="Echoed in the webhook call")
    base64: LenientBool = Field(False, description="Write the output as base64 text")
    temp: LenientBool = Field(False, description="Store the output temporarily")
    instant_response: LenientBool = Field(
        False, description="Answer 'processing' at once and let the client fetch the result")
    model: Annotated[str | None, BeforeValidator(_none_to(None))] = Field(
        None, description="Installed model name (default: the server's)")


class FetchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: Annotated[str, BeforeValidator(_none_to(""))] = ""
    request_id: Annotated[str | int | None, BeforeValidator(_none_to(None))] = None


class SuccessResponse(BaseModel):
    status: str = "success"
    generationTime: float
    id: int
    output: list[str]
    meta: dict[str, Any]


class ProcessingResponse(BaseModel):
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
    status: str = "error"
    message: str


class FailedResponse(BaseModel):
    status: str = "failed"
    id: int | str
    message: str
