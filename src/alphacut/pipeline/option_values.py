"""User spellings of option values: colours, margins, scales, positions, booleans.

Each parser accepts what the HTTP API, the CLI and the library accept, and raises ValueError
with a message that says what is allowed; ``pipeline/options.py`` applies them.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

from PIL import ImageColor

RGBA = tuple[int, int, int, int]

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


class Margin(NamedTuple):
    amount: float  # pixels, or a fraction of the subject's size when ``relative``
    relative: bool = False

    def pixels(self, size: int) -> int:
        return round(self.amount * size) if self.relative else int(self.amount)

    def __str__(self) -> str:
        return f"{self.amount * 100:g}%" if self.relative else str(int(self.amount))


def _text(value: Any) -> str:
    """A user's value as text: strings and plain numbers only (no lists, no 5000-digit ints)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be a string or a number")
    if isinstance(value, int) and abs(value) > 10**9:
        raise ValueError("is out of range")
    return str(value).strip()


def parse_color(value: Any) -> RGBA:
    """``#rgb``, ``#rgba``, ``#rrggbb``, ``#rrggbbaa``, ``r,g,b[,a]`` (0..255) or a CSS name;
    in code also a tuple or list of 3 or 4 ints."""
    if isinstance(value, tuple | list):
        parts = list(value)
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
            parts = []  # floats, booleans, strings: refused below with the usual message
    elif not isinstance(value, str):
        parts = []  # a bare number is not a colour
    else:
        text = value.strip().lower()
        match = _HEX.match(text)
        if match:
            digits = match.group(1)
            if len(digits) in (3, 4):
                digits = "".join(c * 2 for c in digits)
            digits += "ff" if len(digits) == 6 else ""
            red, green, blue, alpha = (int(digits[i : i + 2], 16) for i in range(0, 8, 2))
            return (red, green, blue, alpha)
        if text in ImageColor.colormap:
            red, green, blue = ImageColor.getrgb(text)[:3]
            return (red, green, blue, 255)
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
    red, green, blue, alpha = (*numbers, 255)[:4]
    return (red, green, blue, alpha)


def color_to_hex(color: RGBA) -> str:
    return "#" + "".join(f"{c:02x}" for c in (color if color[3] != 255 else color[:3]))


def parse_margin(value: Any) -> Margin:
    """Pixels (``12``, ``"12"``, ``"12px"``) or a share of the subject's size (``"10%"``)."""
    if isinstance(value, Margin):
        return value
    if value is None or value == "":
        return Margin(0)
    text = _text(value).lower()
    percent = _PERCENT.match(text)
    if percent:
        fraction = float(percent.group(1)) / 100
        if fraction > MAX_MARGIN_FRACTION:
            raise ValueError(f"must be at most {MAX_MARGIN_FRACTION:.0%} of the subject's size")
        return Margin(fraction, relative=True)
    text = text.removesuffix("px").strip()
    try:
        pixels = float(text)
        if not math.isfinite(pixels):
            raise ValueError
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
    if value is None or value == "":
        return None
    text = _text(value)
    if text.lower() == "original":
        return None
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
    if value is None:
        return None
    if isinstance(value, tuple | list):  # (x, y) fractions, from code
        if len(value) != 2 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1 for v in value
        ):
            raise ValueError("must be two fractions from 0 to 1, e.g. (0.5, 1.0)")
        return (float(value[0]), float(value[1]))
    text = _text(value).lower()
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


_TRUE = {"true", "yes", "1", "on", "y", "t"}
_FALSE = {"false", "no", "0", "off", "n", "f", ""}


def parse_bool(value: Any) -> bool:
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
