"""Turn an image and an alpha into the requested output: cutout, layout, background.

Output options (crop, scale, position, background) run after the mask is final, so they never
change what the model or matting decided; they only move and paint pixels.

The canvas they make is bounded like an input image: crop margins are pixels, so a 1x60000
subject with ``crop_margin`` 500 would need a 1001x61000 canvas (61 MP) from a PNG of 200 bytes.
``arrange`` computes the output's size first and refuses one over the pixel limit
(``ImageTooLarge``, HTTP 413) before allocating anything; scale, position and backgrounds
never make the output larger than that canvas.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from alphacut.errors import ImageTooLarge
from alphacut.parallel import in_parts, parts_for
from alphacut.pipeline.option_values import RGBA
from alphacut.pipeline.options import RemoveOptions
from alphacut.pipeline.regions import Box, nonzero_box

# Alpha above this (about 4 %) counts as subject when finding its box: the model leaves a faint
# haze of 1..10 values over busy backgrounds, which would otherwise stretch the box to the edges.
FOREGROUND_THRESHOLD = 10

# The default of ``Settings.max_pixels`` (ALPHACUT_MAX_PIXELS), for callers that pass no limit.
DEFAULT_MAX_PIXELS = 50_000_000


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
    return nonzero_box(alpha > threshold)


def _window(array: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
    """``array[top:top+height, left:left+width]``, padded with zeros where it leaves the image."""
    out = np.zeros((height, width, *array.shape[2:]), dtype=array.dtype)
    src_h, src_w = array.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + width, src_w), min(top + height, src_h)
    if x1 > x0 and y1 > y0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
    return out


def canvas_box(shape: tuple[int, ...], box: Box, options: RemoveOptions) -> Box:
    """Where ``arrange``'s canvas lies in the input's coordinates: the crop box plus margins
    (it may reach past the image's edges), or the whole input when not cropping."""
    if not options.crop:
        return Box(0, 0, shape[1], shape[0])
    mx = options.crop_margin.pixels(box.width)
    my = options.crop_margin.pixels(box.height)
    return Box(box.left - mx, box.top - my, box.width + 2 * mx, box.height + 2 * my)


def check_output_size(
    shape: tuple[int, ...],
    box: Box,
    canvas: Box,
    options: RemoveOptions,
    max_pixels: int | None = None,
) -> None:
    """Refuse (``ImageTooLarge``) an output ``canvas`` over ``max_pixels`` (default
    ``DEFAULT_MAX_PIXELS``) before anything of its size is allocated. An output no larger than
    the input (``shape``) is always allowed: the input has passed the same limit."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    pixels = canvas.width * canvas.height
    if pixels <= max(limit, shape[0] * shape[1]):
        return
    raise ImageTooLarge(
        f"the output would be {canvas.width}x{canvas.height} = {pixels} pixels (the "
        f"subject's {box.width}x{box.height} box with crop_margin {options.crop_margin} on "
        f"each side); the limit is {limit} pixels: use a smaller crop_margin"
    )


def arrange(
    output: np.ndarray, box: Box | None, options: RemoveOptions, max_pixels: int | None = None
) -> np.ndarray:
    """Crop to the subject (plus margin), then scale and position it on the canvas.

    The canvas is the crop box when cropping, otherwise the input's size. Without a subject
    there is nothing to place, so the output is returned unchanged. A canvas over
    ``max_pixels`` (default ``DEFAULT_MAX_PIXELS``) is refused before it is allocated.
    """
    if box is None or not options.moves_subject:
        return output
    canvas = canvas_box(output.shape, box, options)
    check_output_size(output.shape, box, canvas, options, max_pixels)
    left, top, canvas_w, canvas_h = canvas
    if options.scale is None and options.position is None:
        return _window(output, left, top, canvas_w, canvas_h)
    patch = output[box.top : box.top + box.height, box.left : box.left + box.width]
    if options.scale is not None:
        # The patch fits the canvas (factor <= canvas / box on both axes): never larger.
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
    output: np.ndarray,
    alpha: np.ndarray,
    options: RemoveOptions,
    background: Image.Image | None = None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, Box | None]:
    """Apply the output options to a cutout (HxWx4) or mask (HxW); also return the subject box.

    ``alpha`` is the final alpha at input size; the box is found in it (before any move), so it
    describes where the subject is in the input image. ``background`` is ``options.bg_image``,
    decoded by the caller. Backgrounds apply to cutouts only. ``max_pixels`` bounds the output
    (``arrange``); the background is drawn at the output's size, so it adds nothing beyond it.
    """
    box = foreground_box(alpha)
    output = arrange(output, box, options, max_pixels)
    if output.ndim == 3 and (options.bg_color is not None or background is not None):
        output = apply_background(output, options.bg_color, background)
    return output, box
