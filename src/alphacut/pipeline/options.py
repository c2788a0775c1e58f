"""The processing options: one typed, validated definition for every entry point.

The HTTP API's request schema extends ``RemoveOptions``, the CLI's flags are generated from its
fields, the job record stores its JSON dump, and the library validates keyword arguments with
it, so a value is accepted, normalised and refused the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from alphacut.errors import AlphacutError
from alphacut.pipeline.matting import AlphaMattingParams
from alphacut.pipeline.option_values import (
    RGBA,
    Margin,
    color_to_hex,
    parse_bool,
    parse_color,
    parse_margin,
    parse_position,
    parse_scale,
    position_to_text,
)

MaskQuality = Literal["normal", "high"]
OutputFormat = Literal["png", "webp", "jpg"]
Channels = Literal["rgba", "alpha"]
FORMAT_ALIASES = {"jpeg": "jpg"}


def _choice(aliases: dict[str, str] | None = None) -> Callable[[Any], Any]:
    def normalise(value: Any) -> Any:
        text = str(value).strip().lower()
        return (aliases or {}).get(text, text)

    return normalise


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else parse(value)


def _margin_json(margin: Margin) -> int | str:
    return str(margin) if margin.relative else int(margin.amount)


def _nullable(types: list[str], examples: list[Any]) -> dict[str, Any]:
    """The JSON schema of a field sent as one of ``types`` or null (null: the default)."""
    return {"anyOf": [{"type": kind} for kind in [*types, "null"]], "examples": examples}


LenientBool = Annotated[bool, PlainValidator(parse_bool), WithJsonSchema({"type": "boolean"})]


Color = Annotated[
    RGBA | None,
    PlainValidator(_optional(parse_color)),
    PlainSerializer(lambda c: None if c is None else color_to_hex(c), when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "examples": ["#ffffff", "255,255,255,128"],
        }
    ),
]
CropMargin = Annotated[
    Margin,
    PlainValidator(parse_margin),
    PlainSerializer(_margin_json, when_used="json"),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}], "examples": [20, "10%"]}),
]
Scale = Annotated[
    float | None,
    PlainValidator(parse_scale),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}],
            "examples": [0.8, "80%"],
        }
    ),
]
Position = Annotated[
    tuple[float, float] | None,
    PlainValidator(parse_position),
    PlainSerializer(lambda p: None if p is None else position_to_text(p), when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "examples": ["center", "bottom", "50%,100%"],
        }
    ),
]


class RemoveOptions(BaseModel):
    """What to compute and how to write it. The defaults give the hosted API's output.

    Every field accepts the API's spellings (``"yes"``, ``"80%"``, ``"#fff"``, ``null`` for the
    default); the model holds normalised values (an RGBA tuple, a ``Margin``...) and dumps them
    back to the API's spellings with ``model_dump(mode="json")``.
    """

    model_config = ConfigDict(extra="forbid")

    # Fields whose null or "" is an answer of its own ("image is required"), not "the default".
    kept_when_empty: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _unset_means_default(cls, data: Any) -> Any:
        # Clients of the hosted API send null or "" for "not set": both mean the default.
        if isinstance(data, dict):
            return {
                name: value
                for name, value in data.items()
                if name in cls.kept_when_empty
                or not (value is None or (isinstance(value, str) and value == ""))
            }
        return data

    only_mask: LenientBool = Field(False, description="Return the mask instead of the cutout")
    post_process_mask: LenientBool = Field(
        False, description="Drop far specks, fill holes the model was unsure about, smooth"
    )
    alpha_matting: LenientBool = Field(
        False, description="Refine soft edges (hair, fur) with closed-form alpha matting"
    )
    alpha_matting_foreground_threshold: int = Field(
        240,
        ge=0,
        le=255,
        description="Alpha matting: model confidence (0..255) above which a pixel is sure subject",
    )
    alpha_matting_background_threshold: int = Field(
        20,
        ge=0,
        le=255,
        description="Alpha matting: model confidence (0..255) below which a pixel is background",
    )
    alpha_matting_erode_size: int = Field(
        5, ge=0, le=64, description="Alpha matting: minimum erosion of the sure regions, in pixels"
    )
    inverse_mask: LenientBool = Field(False, description="Invert the mask / cutout")
    mask_quality: Annotated[MaskQuality, BeforeValidator(_choice())] = Field(
        "normal",
        description="'high' also runs the model on the mirrored image: better edges, about "
        "twice the inference time",
    )
    guided_upsampling: LenientBool = Field(
        True,
        description="Upsample the model's mask along the photo's edges (false: plain bilinear)",
    )
    decontaminate: LenientBool = Field(
        True,
        description="Give the cutout's soft edge pixels the subject's own colour, not the old "
        "background's",
    )
    bg_color: Color = Field(
        None, description="Background colour: #rgb, #rrggbb, #rrggbbaa, 'r,g,b[,a]' or a name"
    )
    bg_image: str | None = Field(
        None,
        description="Background image (URL or data URI; a file path in the CLI and library), "
        "resized to cover the canvas",
    )
    crop: LenientBool = Field(False, description="Crop to the subject's bounding box")
    crop_margin: CropMargin = Field(
        Margin(0),
        json_schema_extra={"default": 0},
        description="Margin around the crop: pixels (0..500) or a share of the subject's size "
        "('10%', at most 50%)",
    )
    scale: Scale = Field(None, description="Subject size relative to the canvas: 0.01..1 or '80%'")
    position: Position = Field(
        None, description="Subject position: center, top, bottom, left, right or 'x%,y%'"
    )
    format: Annotated[OutputFormat, BeforeValidator(_choice(FORMAT_ALIASES))] = Field(
        "png", description="Output format: png, webp (lossless unless quality) or jpg"
    )
    quality: int | None = Field(
        None, ge=1, le=100, description="Lossy quality 1..100 for webp and jpg (jpg default 90)"
    )
    channels: Annotated[Channels, BeforeValidator(_choice())] = Field(
        "rgba", description="'alpha' returns the mask (same as only_mask)"
    )

    @model_validator(mode="after")
    def _output_rules(self) -> RemoveOptions:
        if self.channels == "alpha":
            self.only_mask = True
        if self.only_mask and (self.bg_color or self.bg_image):
            raise ValueError(
                "bg_color and bg_image fill the cutout's background; they cannot be combined "
                "with only_mask or channels=alpha"
            )
        opaque = self.bg_image is not None or (
            self.bg_color is not None and self.bg_color[3] == 255
        )
        if self.format == "jpg" and not self.only_mask and not opaque:
            raise ValueError(
                "format jpg cannot store transparency: add an opaque bg_color or a bg_image, "
                "or use png or webp"
            )
        if self.quality is not None and self.format == "png":
            raise ValueError("quality applies to webp and jpg only; png is always lossless")
        return self

    @property
    def matting(self) -> AlphaMattingParams:
        return AlphaMattingParams(
            foreground_threshold=self.alpha_matting_foreground_threshold,
            background_threshold=self.alpha_matting_background_threshold,
            erode_size=self.alpha_matting_erode_size,
        )

    @property
    def moves_subject(self) -> bool:
        return self.crop or self.scale is not None or self.position is not None


class InvalidOptions(AlphacutError, ValueError):
    """Options that break the definition; the message names each field and what is wrong."""

    __module__ = "alphacut"  # public as alphacut.InvalidOptions

    status_code = 422

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message, 400 if missing else None)
        self.missing = missing


def describe_errors(exc: ValidationError) -> InvalidOptions:
    """One readable message for a pydantic error, the same from the API, the CLI and the
    library: ``crop_margin: must be ...; quality: Input should be less than or equal to 100``."""
    problems = []
    missing = False
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "missing":
            missing = True
            problems.append(f"{where} is required")
        elif error["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown option")
        else:
            # Our own validators raise ValueError; pydantic's "Value error, " prefix is noise.
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
    return InvalidOptions("; ".join(problems), missing)


def make_options(**fields: Any) -> RemoveOptions:
    """``RemoveOptions(**fields)``, raising ``InvalidOptions`` with the shared message."""
    try:
        return RemoveOptions.model_validate(fields)
    except ValidationError as exc:
        raise describe_errors(exc) from None
