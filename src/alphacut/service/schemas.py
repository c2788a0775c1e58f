"""Request and response schemas of the removebg_mask API (the hosted API's contract)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from alphacut.pipeline.compose import (
    color_to_hex,
    parse_color,
    parse_margin,
    parse_position,
    parse_scale,
    position_to_text,
)
from alphacut.service.examples import (
    ERROR_EXAMPLE,
    FAILED_EXAMPLE,
    PROCESSING_EXAMPLE,
    REQUEST_EXAMPLES,
    SUCCESS_EXAMPLE,
)

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


def _color(value: str | None) -> str | None:
    return None if value is None else color_to_hex(parse_color(value))


def _image_ref(value: str | None) -> str | None:
    if value is not None and not value.strip().lower().startswith(("http://", "https://", "data:")):
        raise ValueError("must be an http(s) URL or a data:image/...;base64, URI")
    return value


def _margin(value: Any) -> int | str:
    margin = parse_margin(value)
    return str(margin) if margin.relative else int(margin.amount)


def _position(value: Any) -> str | None:
    position = parse_position(value)
    return None if position is None else position_to_text(position)


def _choice(default: str, aliases: dict[str, str] | None = None):
    def normalise(value: Any) -> Any:
        if value is None or value == "":
            return default
        text = str(value).strip().lower()
        return (aliases or {}).get(text, text)

    return normalise


def _threshold(default: int, high: int, description: str):
    return Annotated[
        int, BeforeValidator(_none_to(default)), Field(ge=0, le=high, description=description)
    ]


class RemoveBgRequest(BaseModel):
    """Body of ``POST /api/v5/removebg_mask`` (JSON, form or multipart)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [example["value"] for example in REQUEST_EXAMPLES.values()]},
    )

    key: Annotated[str, BeforeValidator(_none_to(""))] = Field(
        "", description="Your API key (checked against ALPHACUT_API_KEYS)"
    )
    image: str = Field(description="http(s) URL of the image, or a data:image/...;base64, URI")
    alpha_matting: LenientBool = False
    post_process_mask: LenientBool = False
    only_mask: LenientBool = False
    inverse_mask: LenientBool = Field(False, description="Invert the mask / cutout (v6)")
    seed: Annotated[int | None, BeforeValidator(_none_to(None))] = Field(
        None, description="Echoed in meta; null draws a random one"
    )
    alpha_matting_foreground_threshold: _threshold(240, 255, "Sure-foreground threshold") = 240
    alpha_matting_background_threshold: _threshold(20, 255, "Sure-background threshold") = 20
    alpha_matting_erode_size: _threshold(5, 64, "Erosion of the sure regions (px)") = 5
    webhook: Annotated[str | None, BeforeValidator(_none_to(None))] = Field(
        None, description="URL that receives the result by POST when the job ends"
    )
    track_id: Annotated[str | int | None, BeforeValidator(_none_to(None))] = Field(
        None, description="Echoed in the webhook call"
    )
    base64: LenientBool = Field(False, description="Write the output as base64 text")
    temp: LenientBool = Field(False, description="Store the output temporarily")
    instant_response: LenientBool = Field(
        False, description="Answer 'processing' at once and let the client fetch the result"
    )
    model: Annotated[str | None, BeforeValidator(_none_to(None))] = Field(
        None, description="Installed model name (default: the server's)"
    )
    mask_quality: Annotated[Literal["normal", "high"], BeforeValidator(_choice("normal"))] = Field(
        "normal",
        description="'high' also runs the model on the mirrored image: "
        "better edges, about twice the inference time",
    )
    # Output options (alphacut additions). Their defaults give the hosted API's output.
    bg_color: Annotated[str | None, BeforeValidator(_none_to(None)), AfterValidator(_color)] = (
        Field(None, description="Background colour: #rgb, #rrggbb, #rrggbbaa or 'r,g,b[,a]'")
    )
    bg_image: Annotated[str | None, BeforeValidator(_none_to(None)), AfterValidator(_image_ref)] = (
        Field(None, description="Background image URL (or data URI), resized to cover the canvas")
    )
    crop: LenientBool = Field(False, description="Crop to the subject's bounding box")
    crop_margin: Annotated[int | str, BeforeValidator(_margin)] = Field(
        0, description="Margin around the crop: pixels (0..500) or '10%' of the subject's size"
    )
    scale: Annotated[float | None, BeforeValidator(parse_scale)] = Field(
        None, description="Subject size relative to the canvas: 0.01..1 or '80%'"
    )
    position: Annotated[str | None, BeforeValidator(_position)] = Field(
        None, description="Subject position: center, top, bottom, left, right or 'x%,y%'"
    )
    format: Annotated[
        Literal["png", "webp", "jpg"], BeforeValidator(_choice("png", {"jpeg": "jpg"}))
    ] = Field("png", description="Output format: png, webp (lossless unless quality) or jpg")
    quality: Annotated[int | None, BeforeValidator(_none_to(None)), Field(ge=1, le=100)] = Field(
        None, description="Lossy quality 1..100 for webp and jpg (jpg default 90)"
    )
    channels: Annotated[Literal["rgba", "alpha"], BeforeValidator(_choice("rgba"))] = Field(
        "rgba", description="'alpha' returns the mask (same as only_mask)"
    )

    @model_validator(mode="after")
    def _output_rules(self) -> RemoveBgRequest:
        if self.channels == "alpha":
            self.only_mask = True
        if self.only_mask and (self.bg_color or self.bg_image):
            raise ValueError(
                "bg_color and bg_image fill the cutout's background; they cannot "
                "be combined with only_mask or channels=alpha"
            )
        if (
            self.format == "jpg"
            and not self.only_mask
            and self.bg_image is None
            and (self.bg_color is None or parse_color(self.bg_color)[3] != 255)
        ):
            raise ValueError(
                "format jpg cannot store transparency: add an opaque bg_color or "
                "a bg_image, or use png or webp"
            )
        if self.quality is not None and self.format == "png":
            raise ValueError("quality applies to webp and jpg only; png is always lossless")
        return self

    def compose_options(self) -> dict[str, Any]:
        """The output options as the worker rebuilds them (bg_image travels as a file)."""
        return {
            "bg_color": self.bg_color,
            "crop": self.crop,
            "crop_margin": self.crop_margin,
            "scale": self.scale,
            "position": self.position,
        }


class FetchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: Annotated[str, BeforeValidator(_none_to(""))] = ""
    request_id: Annotated[str | int | None, BeforeValidator(_none_to(None))] = None


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
