"""Turn an image and an alpha into the requested output: cutout, layout, background.

Output options (crop, scale, position, background) run after the mask is final, so they never
change what the model or matting decided; they only move and paint pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageColor, ImageOps

from alphacut.pipeline.parallel import in_parts, parts_for
from alphacut.pipeline.refine import nonzero_box

RGBA = tuple[int, int, int, int]

# Alpha above this (about 4 %) counts as subject when finding its box: the model leaves a faint
# haze of 1..10 values over busy backgrounds, which would otherwise stretch the box to the edges.
FOREGROUND_THRESHOLD = 10
# remove.bg's limits for crop_margin; they also bound the canvas a request can make us allocate.
MAX_MARGIN_PX = 500
MAX_MARGIN_FRACTION = 0.5

_HEX = re.compile(r"^#?([0-9a-f]{3,4}|[0-9a-f]{6}|[0-9a-f]{8})$", re.IGNORECASE)
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")
_NAMED_POSITIONS = {
    "center": (0.5, 0.5),
    "centre": (0.5, 0.5),
    "top": (0.5, 0.0),
    "bottom": (0.5, 1.0),
    "left": (0.0, 0.5),
    "right": (1.0, 0.5),
}


class Box(NamedTuple):
    """The subject's bounding box in the input image, in pixels."""

    left: int
    top: int
    width: int
    height: int

    def as_dict(self) -> dict[str, int]:
        return {"top": self.top, "left": self.left, "width": self.width, "height": self.height}


class Margin(NamedTuple):
    amount: float  # pixels, or a fraction of the subject's size when ``relative``
    relative: bool = False

    def pixels(self, size: int) -> int:
        return round(self.amount * size) if self.relative else int(self.amount)

    def __str__(self) -> str:
        return f"{self.amount * 100:g}%" if self.relative else str(int(self.amount))


def parse_color(value: Any) -> RGBA:
    """``#rgb``, ``#rgba``, ``#rrggbb``, ``#rrggbbaa``, ``r,g,b[,a]`` (0..255) or a CSS name."""
    if isinstance(value, tuple | list):
        parts = list(value)
    else:
        text = str(value).strip().lower()
        match = _HEX.match(text)
        if match:
            digits = match.group(1)
            if len(digits) in (3, 4):
                digits = "".join(c * 2 for c in digits)
            digits += "ff" if len(digits) == 6 else ""
            return tuple(int(digits[i : i + 2], 16) for i in range(0, 8, 2))  # type: ignore[return-value]
        if text in ImageColor.colormap:
            return (*ImageColor.getrgb(text)[:3], 255)  # type: ignore[return-value]
        parts = [p.strip() for p in text.split(",")] if "," in text else []
    try:
        numbers = [int(p) for p in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) not in (3, 4) or not all(0 <= n <= 255 for n in numbers):
        raise ValueError(
            "must be a hex colour (#rgb, #rrggbb, #rrggbbaa), 'r,g,b' or "
            "'r,g,b,a' with values 0..255, or a colour name"
        )
    return (*numbers, 255)[:4] if len(numbers) == 3 else tuple(numbers)  # type: ignore[return-value]


def color_to_hex(color: RGBA) -> str:
    return "#" + "".join(f"{c:02x}" for c in (color if color[3] != 255 else color[:3]))


def parse_margin(value: Any) -> Margin:
    """Pixels (``12``, ``"12"``, ``"12px"``) or a share of the subject's size (``"10%"``)."""
    if isinstance(value, Margin):
        return value
    if value is None or value == "":
        return Margin(0)
    text = str(value).strip().lower()
    percent = _PERCENT.match(text)
    if percent:
        fraction = float(percent.group(1)) / 100
        if fraction > MAX_MARGIN_FRACTION:
            raise ValueError(f"must be at most {MAX_MARGIN_FRACTION:.0%} of the subject's size")
        return Margin(fraction, relative=True)
    text = text.removesuffix("px").strip()
    try:
        pixels = float(text)
    except ValueError:
        raise ValueError(
            "must be pixels (e.g. 20 or '20px') or a percentage of the subject's size (e.g. '10%')"
        ) from None
    if pixels != int(pixels) or not 0 <= pixels <= MAX_MARGIN_PX:
        raise ValueError(
            f"must be a whole number of pixels from 0 to {MAX_MARGIN_PX}, "
            "or a percentage such as '10%'"
        )
    return Margin(int(pixels))


def parse_scale(value: Any) -> float | None:
    """Subject size relative to the canvas: ``0.8`` or ``"80%"``; None/"original" keeps it."""
    if value is None or value == "" or str(value).strip().lower() == "original":
        return None
    text = str(value).strip()
    percent = _PERCENT.match(text)
    try:
        scale = float(percent.group(1)) / 100 if percent else float(text)
    except ValueError:
        raise ValueError(
            "must be a number from 0.01 to 1 (e.g. 0.8) or a percentage (e.g. '80%')"
        ) from None
    if not 0.01 <= scale <= 1:
        raise ValueError("must be from 0.01 to 1 (1% to 100% of the canvas)")
    return scale


def parse_position(value: Any) -> tuple[float, float] | None:
    """``center``, ``top``, ``bottom``, ``left``, ``right`` or ``"x%,y%"`` (one value: both)."""
    if value is None or isinstance(value, tuple):
        return value
    text = str(value).strip().lower()
    if text in ("", "original"):
        return None
    if text in _NAMED_POSITIONS:
        return _NAMED_POSITIONS[text]
    parts = [p for p in re.split(r"[,\s]+", text) if p]
    matches = [_PERCENT.match(p) for p in parts]
    if len(parts) not in (1, 2) or not all(matches):
        raise ValueError("must be center, top, bottom, left, right or 'x%,y%' (e.g. '50%,100%')")
    values = [float(m.group(1)) / 100 for m in matches if m]
    if not all(0 <= v <= 1 for v in values):
        raise ValueError("percentages must be from 0% to 100%")
    return (values[0], values[-1])


def position_to_text(position: tuple[float, float]) -> str:
    named = {v: k for k, v in _NAMED_POSITIONS.items() if k != "centre"}
    return named.get(position) or f"{position[0] * 100:g}%,{position[1] * 100:g}%"


@dataclass(frozen=True)
class ComposeOptions:
    """What to do with the cutout once the mask is final. The defaults change nothing.

    Fields accept the API's spellings (``bg_color="#fff"``, ``crop_margin="10%"``,
    ``scale="80%"``, ``position="bottom"``) and are normalised on construction.
    """

    bg_color: RGBA | None = None
    bg_image: Image.Image | None = field(default=None, compare=False, repr=False)
    crop: bool = False
    crop_margin: Margin = Margin(0)
    scale: float | None = None
    position: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.bg_color is not None:
            object.__setattr__(self, "bg_color", parse_color(self.bg_color))
        object.__setattr__(self, "crop_margin", parse_margin(self.crop_margin))
        object.__setattr__(self, "scale", parse_scale(self.scale))
        object.__setattr__(self, "position", parse_position(self.position))

    @property
    def moves_subject(self) -> bool:
        return self.crop or self.scale is not None or self.position is not None

    @property
    def has_background(self) -> bool:
        return self.bg_color is not None or self.bg_image is not None


def cutout(
    rgb: np.ndarray, alpha: np.ndarray, edge_colours: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """RGBA array of the image's colour and ``alpha``; ``edge_colours`` (flat pixel indices
    and their uint8 colours, from ``foreground.soft_edge_colours``) replace the colour of
    those pixels."""
    out = np.empty((*alpha.shape, 4), dtype=np.uint8)

    def rows(top: int, bottom: int) -> None:
        out[top:bottom, :, :3] = rgb[top:bottom]
        out[top:bottom, :, 3] = alpha[top:bottom]

    in_parts(rows, alpha.shape[0], parts_for(alpha.size))
    if edge_colours is not None:
        indices, colours = edge_colours
        out.reshape(-1, 4)[indices, :3] = colours  # a view: ``out`` is C-ordered
    return out


def invert(alpha: np.ndarray) -> np.ndarray:
    return 255 - alpha


def foreground_box(alpha: np.ndarray, threshold: int = FOREGROUND_THRESHOLD) -> Box | None:
    """Bounding box of the pixels more than ``threshold`` opaque, or None if there are none."""
    found = nonzero_box(alpha > threshold)
    if found is None:
        return None
    y0, y1, x0, x1 = found
    return Box(x0, y0, x1 - x0, y1 - y0)


def _window(array: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
    """``array[top:top+height, left:left+width]``, padded with zeros where it leaves the image."""
    out = np.zeros((height, width, *array.shape[2:]), dtype=array.dtype)
    src_h, src_w = array.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + width, src_w), min(top + height, src_h)
    if x1 > x0 and y1 > y0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
    return out


def arrange(output: np.ndarray, box: Box | None, options: ComposeOptions) -> np.ndarray:
    """Crop to the subject (plus margin), then scale and position it on the canvas.

    The canvas is the crop box when cropping, otherwise the input's size. Without a subject
    there is nothing to place, so the output is returned unchanged.
    """
    if box is None or not options.moves_subject:
        return output
    height, width = output.shape[:2]
    if options.crop:
        mx = options.crop_margin.pixels(box.width)
        my = options.crop_margin.pixels(box.height)
        left, top, canvas_w, canvas_h = (
            box.left - mx,
            box.top - my,
            box.width + 2 * mx,
            box.height + 2 * my,
        )
    else:
        left, top, canvas_w, canvas_h = 0, 0, width, height
    if options.scale is None and options.position is None:
        return _window(output, left, top, canvas_w, canvas_h)
    patch = output[box.top : box.top + box.height, box.left : box.left + box.width]
    if options.scale is not None:
        factor = min(options.scale * canvas_w / box.width, options.scale * canvas_h / box.height)
        size = (max(1, round(box.width * factor)), max(1, round(box.height * factor)))
        # Pillow resamples RGBA premultiplied, so no dark fringe bleeds in from transparent pixels.
        patch = np.asarray(Image.fromarray(patch).resize(size, Image.Resampling.LANCZOS))
    px, py = options.position or (0.5, 0.5)
    ph, pw = patch.shape[:2]
    x, y = round(px * (canvas_w - pw)), round(py * (canvas_h - ph))
    out = np.zeros((canvas_h, canvas_w, *output.shape[2:]), dtype=output.dtype)
    out[y : y + ph, x : x + pw] = patch
    return out


def apply_background(rgba: np.ndarray, color: RGBA | None, image: Image.Image | None) -> np.ndarray:
    """Composite an RGBA cutout over a colour and/or an image (resized to cover the canvas).

    The image is drawn over the colour, so a colour shows through a transparent background
    image. The result is RGB when fully opaque (smaller files, and what JPEG needs).
    """
    height, width = rgba.shape[:2]
    base = Image.new("RGBA", (width, height), color or (0, 0, 0, 0))
    if image is not None:
        cover = ImageOps.fit(image.convert("RGBA"), (width, height), Image.Resampling.LANCZOS)
        base = Image.alpha_composite(base, cover) if color else cover
    out = np.asarray(Image.alpha_composite(base, Image.fromarray(rgba, "RGBA")))
    if out[..., 3].min() == 255:
        return np.ascontiguousarray(out[..., :3])
    return out


def compose_output(
    output: np.ndarray, alpha: np.ndarray, options: ComposeOptions
) -> tuple[np.ndarray, Box | None]:
    """Apply the output options to a cutout (HxWx4) or mask (HxW); also return the subject box.

    ``alpha`` is the final alpha at input size; the box is found in it (before any move), so it
    describes where the subject is in the input image. Backgrounds apply to cutouts only.
    """
    box = foreground_box(alpha)
    output = arrange(output, box, options)
    if output.ndim == 3 and options.has_background:
        output = apply_background(output, options.bg_color, options.bg_image)
    return output, box
