"""Output options (bg_color, bg_image, crop, scale, position, format, quality, channels, model).

Three layers: the pure compose functions, the HTTP contract with the tiny model (validation,
formats, content types, meta), and the real ISNet model through the API (every option at least
once, combined into few requests since each real inference costs seconds).
"""

from __future__ import annotations

import base64
import io
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from alphacut.pipeline.compose import (
    apply_background,
    arrange,
    compose_output,
    foreground_box,
)
from alphacut.pipeline.encode import encode_image
from alphacut.pipeline.option_values import (
    Margin,
    parse_color,
    parse_margin,
    parse_position,
    parse_scale,
)
from alphacut.pipeline.options import RemoveOptions
from alphacut.pipeline.regions import Box
from tests.conftest import PHOTOS, LiveServer, real_settings, requires_real_model, subject_image

# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    "value, expected",
    [
        ("#fff", (255, 255, 255, 255)),
        ("#3366FF", (0x33, 0x66, 0xFF, 255)),
        ("#11223344", (0x11, 0x22, 0x33, 0x44)),
        ("#1234", (0x11, 0x22, 0x33, 0x44)),
        ("10,20,30", (10, 20, 30, 255)),
        (" 10, 20, 30, 40 ", (10, 20, 30, 40)),
        ("white", (255, 255, 255, 255)),
        ((1, 2, 3), (1, 2, 3, 255)),
    ],
)
def test_parse_color(value, expected):
    assert parse_color(value) == expected


@pytest.mark.parametrize(
    "value", ["#12345", "red-ish", "1,2", "1,2,3,4,5", "256,0,0", "-1,0,0", "#ggg", ""]
)
def test_parse_color_rejects(value):
    with pytest.raises(ValueError, match="hex colour"):
        parse_color(value)


def test_parse_margin_scale_position():
    assert parse_margin(12) == Margin(12) and parse_margin("12px") == Margin(12)
    assert parse_margin("10%") == Margin(0.1, True) and str(Margin(0.1, True)) == "10%"
    for bad in ("-3", "600", "51%", "1.5", "abc"):
        with pytest.raises(ValueError):
            parse_margin(bad)
    assert parse_scale("80%") == 0.8 and parse_scale(0.5) == 0.5 and parse_scale(None) is None
    for bad in ("0", "1.5", "150%", "big"):
        with pytest.raises(ValueError):
            parse_scale(bad)
    assert parse_position("bottom") == (0.5, 1.0) and parse_position("25%,75%") == (0.25, 0.75)
    assert parse_position("30%") == (0.3, 0.3) and parse_position("10% 20%") == (0.1, 0.2)
    for bad in ("middle", "120%,0%", "1,2", "10%,20%,30%"):
        with pytest.raises(ValueError):
            parse_position(bad)


def _square_cutout(size=(100, 80), box: Box | None = None) -> np.ndarray:
    box = box or Box(30, 20, 20, 10)
    out = np.zeros((size[1], size[0], 4), np.uint8)
    out[..., :3] = (200, 50, 50)
    out[box.top : box.top + box.height, box.left : box.left + box.width, 3] = 255
    return out


def test_foreground_box_ignores_faint_haze():
    rgba = _square_cutout()
    rgba[0, 0, 3] = 8  # model haze below the threshold
    assert foreground_box(rgba[..., 3]) == Box(30, 20, 20, 10)
    assert foreground_box(np.zeros((5, 5), np.uint8)) is None


def test_crop_with_margins_and_padding():
    rgba = _square_cutout()
    box = foreground_box(rgba[..., 3])
    out = arrange(rgba, box, RemoveOptions(crop=True, crop_margin=5))
    assert out.shape == (20, 30, 4) and out[5:15, 5:25, 3].min() == 255
    assert out[:5, :, 3].max() == 0
    out = arrange(rgba, box, RemoveOptions(crop=True, crop_margin="50%"))
    assert out.shape == (20, 40, 4)  # 50% of 20 wide and 10 high on each side
    # A margin past the image edge is transparent padding, not an error.
    edge = _square_cutout(box=Box(0, 0, 10, 10))
    out = arrange(edge, foreground_box(edge[..., 3]), RemoveOptions(crop=True, crop_margin=4))
    assert out.shape == (18, 18, 4) and out[:4, :, 3].max() == 0 and out[4:14, 4:14, 3].min() == 255


def test_scale_and_position_place_the_subject():
    rgba = _square_cutout()  # subject 20x10 in a 100x80 canvas
    opts = RemoveOptions(scale="50%", position="bottom")
    out = arrange(rgba, foreground_box(rgba[..., 3]), opts)
    assert out.shape == rgba.shape
    # fits 50x40 keeping 2:1 -> 50x25, centred horizontally, touching the bottom
    assert foreground_box(out[..., 3]) == Box(25, 55, 50, 25)
    out = arrange(rgba, foreground_box(rgba[..., 3]), RemoveOptions(position="0%,0%"))
    assert foreground_box(out[..., 3]) == Box(0, 0, 20, 10)
    mask = rgba[..., 3].copy()
    out = arrange(mask, foreground_box(mask), RemoveOptions(scale=1.0))
    assert out.ndim == 2 and foreground_box(out) == Box(0, 15, 100, 50)


def test_background_colour_and_image():
    rgba = _square_cutout()
    rgba[0, 0, 3] = 128  # a half-transparent pixel mixes with the background
    out = apply_background(rgba, (0, 0, 255, 255), None)
    assert out.shape == (80, 100, 3)
    assert tuple(out[50, 90]) == (0, 0, 255) and tuple(out[25, 35]) == (200, 50, 50)
    assert abs(int(out[0, 0, 0]) - 100) <= 1 and abs(int(out[0, 0, 2]) - 152) <= 1
    stripes = Image.new("RGB", (10, 40), (0, 255, 0))  # cover: scaled up, centre-cropped
    out = apply_background(rgba, None, stripes)
    assert out.shape == (80, 100, 3) and tuple(out[70, 5]) == (0, 255, 0)
    translucent = apply_background(rgba, (0, 0, 0, 0), None)
    assert translucent.shape == (80, 100, 4)


def test_compose_output_without_subject_leaves_canvas():
    empty = np.zeros((40, 60, 4), np.uint8)
    out, box = compose_output(empty, empty[..., 3], RemoveOptions(crop=True, scale=0.5))
    assert box is None and out.shape == (40, 60, 4)


def test_encode_formats_roundtrip():
    rgba = _square_cutout()
    webp = Image.open(io.BytesIO(encode_image(rgba, "webp")))
    assert webp.format == "WEBP" and webp.mode == "RGBA"
    decoded = np.asarray(webp)
    visible = rgba[..., 3] > 0
    assert np.array_equal(decoded[..., 3], rgba[..., 3])
    assert np.array_equal(decoded[visible], rgba[visible])  # lossless where it shows
    lossy = Image.open(io.BytesIO(encode_image(rgba, "webp", quality=50)))
    assert lossy.format == "WEBP"
    jpg = Image.open(io.BytesIO(encode_image(rgba[..., :3].copy(), "jpg", quality=95)))
    assert jpg.format == "JPEG" and jpg.mode == "RGB"
    flattened = Image.open(io.BytesIO(encode_image(rgba, "jpg")))  # transparent -> white
    assert np.asarray(flattened)[70, 90].min() > 245


# ---------------------------------------------------------------- HTTP, tiny model


@pytest.fixture
def server(live_server, tiny_settings):
    return live_server(tiny_settings)


@pytest.fixture
def served(file_server):
    base, root = file_server
    image, mask = subject_image()
    image.save(root / "opt-subject.png")
    Image.new("RGB", (40, 30), (0, 200, 0)).save(root / "opt-green.png")
    (root / "opt-page.html").write_text("<html></html>")
    return base, image, mask


def post(server, body) -> httpx.Response:
    return httpx.post(server.url + "/api/v5/removebg_mask", json=body, timeout=150)


def fetch_output(body) -> tuple[httpx.Response, Image.Image]:
    response = httpx.get(body["output"][0], timeout=30)
    return response, Image.open(io.BytesIO(response.content))


def test_formats_extensions_and_content_types(server, served):
    base, image, mask = served
    url = f"{base}/opt-subject.png"
    cases = [
        ({}, "png", "image/png", "RGBA"),
        ({"format": "webp"}, "webp", "image/webp", "RGBA"),
        ({"format": "WEBP", "quality": 70}, "webp", "image/webp", "RGBA"),
        ({"format": "jpeg", "bg_color": "#000"}, "jpg", "image/jpeg", "RGB"),
    ]
    for options, ext, ctype, mode in cases:
        body = post(server, {"image": url, **options}).json()
        assert body["status"] == "success", body
        meta = body["meta"]
        assert meta["file_prefix"].endswith(f".{ext}") and body["output"][0].endswith(ext)
        assert meta["format"] == ext
        response, out = fetch_output(body)
        assert response.headers["content-type"] == ctype
        assert out.mode == mode and out.size == image.size
    # meta's additions; the seed's keys keep their types (checked in test_api)
    assert (meta["width"], meta["height"], meta["model"]) == (200, 150, "tiny")
    # the true box is (50, 37) 100x75; the 64 px tiny model blurs the edge by a pixel
    fg = meta["foreground"]
    assert _close((fg["left"], fg["top"], fg["width"], fg["height"]), (50, 37, 100, 75))
    assert meta["bg_color"] == "#000000" and meta["quality"] is None


def test_bg_color_crop_channels_and_base64(server, served):
    base, image, mask = served
    url = f"{base}/opt-subject.png"
    body = post(
        server, {"image": url, "bg_color": "255,0,0", "crop": "yes", "crop_margin": "10"}
    ).json()
    _, out = fetch_output(body)
    fg = body["meta"]["foreground"]
    assert out.mode == "RGB" and out.size == (fg["width"] + 20, fg["height"] + 20)
    assert tuple(np.asarray(out)[2, 2]) == (255, 0, 0)
    alias = post(server, {"image": url, "channels": "alpha"}).json()
    plain = post(server, {"image": url, "only_mask": True}).json()
    assert alias["meta"]["only_mask"] is True and alias["meta"]["channels"] == "alpha"
    assert np.array_equal(np.asarray(fetch_output(alias)[1]), np.asarray(fetch_output(plain)[1]))
    encoded = post(server, {"image": url, "format": "webp", "base64": True}).json()
    assert encoded["output"][0].endswith(".base64")
    text = httpx.get(encoded["output"][0]).content
    assert Image.open(io.BytesIO(base64.b64decode(text))).format == "WEBP"


def test_bg_image_is_fetched_safely(server, served):
    base, image, _ = served
    url = f"{base}/opt-subject.png"
    body = post(server, {"image": url, "bg_image": f"{base}/opt-green.png"}).json()
    assert body["status"] == "success" and body["meta"]["bg_image"] == f"{base}/opt-green.png"
    _, out = fetch_output(body)
    assert out.mode == "RGB" and tuple(np.asarray(out)[2, 2]) == (0, 200, 0)
    green = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 200, 0)).save(green, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(green.getvalue()).decode()
    body = post(server, {"image": url, "bg_image": uri, "format": "jpg"}).json()
    assert body["status"] == "success" and body["meta"]["bg_image"] == "data-uri"
    for bg, status, words in [
        ("http://10.1.2.3/bg.png", 400, "bg_image: "),
        (f"{base}/opt-missing.png", 422, "HTTP 404"),
        (f"{base}/opt-page.html", 415, "bg_image: the data is not a supported image"),
        ("file:///etc/passwd", 422, "bg_image: must be an http(s) URL"),
    ]:
        response = post(server, {"image": url, "bg_image": bg})
        assert response.status_code == status, response.text
        assert words in response.json()["message"]
    # Nothing is left behind by refused backgrounds, and finished jobs clean up theirs.
    assert not list(server.state.storage.inputs.glob("*.bg"))


@pytest.mark.parametrize(
    "options, words",
    [
        ({"bg_color": "#12"}, "bg_color: must be a hex colour"),
        ({"bg_color": "300,0,0"}, "bg_color: must be a hex colour"),
        ({"crop_margin": "70%"}, "crop_margin: must be at most 50%"),
        ({"crop_margin": "lots"}, "crop_margin: must be pixels"),
        ({"scale": 0}, "scale: must be from 0.01 to 1"),
        ({"scale": "200%"}, "scale: must be from 0.01 to 1"),
        ({"position": "middle"}, "position: must be center, top, bottom"),
        ({"format": "gif"}, "format: Input should be 'png', 'webp' or 'jpg'"),
        ({"format": "jpg"}, "format jpg cannot store transparency"),
        ({"format": "jpg", "bg_color": "#ffffff80"}, "format jpg cannot store transparency"),
        ({"quality": 80}, "quality applies to webp and jpg only"),
        ({"format": "webp", "quality": 101}, "quality: Input should be less than or equal to 100"),
        ({"channels": "rgb"}, "channels: Input should be 'rgba' or 'alpha'"),
        ({"only_mask": True, "bg_color": "#fff"}, "cannot be combined with only_mask"),
        ({"bg_image": "not a url"}, "bg_image: must be an http(s) URL"),
        ({"crop": "perhaps"}, "crop: expected a boolean"),
        ({"model": "no-such-model"}, "unknown model"),
    ],
)
def test_invalid_options_are_422(server, served, options, words):
    response = post(server, {"image": f"{served[0]}/opt-subject.png", **options})
    assert response.status_code == 422, response.text
    assert response.json()["status"] == "error" and words in response.json()["message"]


def test_no_foreground_is_success_with_empty_mask(server):
    dark = io.BytesIO()
    Image.new("RGB", (64, 48), (5, 5, 5)).save(dark, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(dark.getvalue()).decode()
    body = post(server, {"image": uri, "crop": True, "scale": 0.5}).json()
    assert body["status"] == "success" and body["meta"]["foreground"] is None
    _, out = fetch_output(body)
    assert out.size == (64, 48) and np.asarray(out)[..., 3].max() == 0


def test_processing_then_fetch_carries_foreground(server, served):
    body = post(
        server,
        {"image": f"{served[0]}/opt-subject.png", "instant_response": True, "format": "webp"},
    ).json()
    assert body["status"] == "processing" and "foreground" not in body["meta"]
    assert body["future_links"][0].endswith(".webp")
    for _ in range(100):
        done = httpx.post(body["fetch_result"], json={"key": ""}).json()
        if done["status"] != "processing":
            break
    assert done["status"] == "success" and abs(done["meta"]["foreground"]["width"] - 100) <= 3


def test_cli_output_options(tiny_model_dir, tmp_path, monkeypatch):
    from alphacut.cli import app

    monkeypatch.setenv("ALPHACUT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ALPHACUT_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("ALPHACUT_MODEL", "tiny")
    subject_image()[0].save(tmp_path / "s.png")
    Image.new("RGB", (10, 10), (0, 0, 255)).save(tmp_path / "bg.png")
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "remove",
            str(tmp_path / "s.png"),
            "--format",
            "jpg",
            "--bg-image",
            str(tmp_path / "bg.png"),
            "--crop",
            "--crop-margin",
            "10%",
            "--quality",
            "90",
        ],
    )
    assert result.exit_code == 0, result.output
    out = Image.open(tmp_path / "s.out.jpg")
    assert out.format == "JPEG" and _close(out.size, (120, 90), 5)  # box ~100x75 + 10%
    result = runner.invoke(
        app,
        [
            "remove",
            str(tmp_path / "s.png"),
            "-o",
            str(tmp_path / "m.webp"),
            "--only-mask",
            "--format",
            "webp",
            "--scale",
            "50%",
            "--position",
            "top",
        ],
    )
    assert result.exit_code == 0, result.output
    found = foreground_box(np.asarray(Image.open(tmp_path / "m.webp").convert("L")))
    assert found is not None and _close(found, (50, 0, 100, 75))
    result = runner.invoke(app, ["remove", str(tmp_path / "s.png"), "--format", "jpg"])
    assert result.exit_code == 1 and "cannot store transparency" in result.output
    result = runner.invoke(app, ["remove", str(tmp_path / "s.png"), "--bg-color", "nope"])
    assert result.exit_code == 1 and "hex colour" in result.output


# ---------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    with LiveServer(real_settings(tmp_path_factory.mktemp("real-options"))) as server:
        yield server


@pytest.fixture
def photo(file_server):
    base, root = file_server
    shutil.copy(PHOTOS / "animal-1.jpg", root / "opt-animal.jpg")
    backdrop = Image.linear_gradient("L").resize((300, 200)).convert("RGB")
    backdrop.save(root / "opt-backdrop.png")
    return f"{base}/opt-animal.jpg", f"{base}/opt-backdrop.png", backdrop


def _expected_placement(
    box: dict, canvas: tuple[int, int], scale: float, position: tuple[float, float]
) -> tuple[int, int, int, int]:
    factor = min(scale * canvas[0] / box["width"], scale * canvas[1] / box["height"])
    w, h = round(box["width"] * factor), round(box["height"] * factor)
    x, y = round(position[0] * (canvas[0] - w)), round(position[1] * (canvas[1] - h))
    return x, y, w, h


def _close(found: Box | tuple, expected: tuple, tolerance: int = 3) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(found, expected, strict=True))


@pytest.mark.real_model
@requires_real_model
def test_real_bg_color_jpg_crop_margin(real_server, photo):
    url = photo[0]
    body = post(
        real_server,
        {
            "image": url,
            "bg_color": "#3366ff",
            "format": "jpg",
            "quality": 85,
            "crop": True,
            "crop_margin": "10%",
        },
    ).json()
    assert body["status"] == "success", body
    meta = body["meta"]
    box = meta["foreground"]
    assert (meta["width"], meta["height"], meta["model"]) == (1000, 667, "medium")
    # the animal fills a good part of the photo, away from the top edge
    assert box["width"] > 400 and box["height"] > 250 and box["top"] > 50
    response, out = fetch_output(body)
    assert response.headers["content-type"] == "image/jpeg" and out.format == "JPEG"
    assert out.mode == "RGB"
    assert out.size == (
        box["width"] + 2 * round(box["width"] * 0.1),
        box["height"] + 2 * round(box["height"] * 0.1),
    )
    pixels = np.asarray(out).astype(int)
    assert np.abs(pixels[3, 3] - (0x33, 0x66, 0xFF)).max() < 12  # margin is background
    cy, cx = out.height // 2, out.width // 2
    centre = pixels[cy - 10 : cy + 10, cx - 10 : cx + 10]
    assert np.abs(centre - (0x33, 0x66, 0xFF)).mean() > 40  # the subject is not


@pytest.mark.real_model
@requires_real_model
def test_real_bg_image_scale_position_webp(real_server, photo):
    url, backdrop_url, backdrop = photo
    body = post(
        real_server,
        {
            "image": url,
            "bg_image": backdrop_url,
            "scale": 0.5,
            "position": "bottom",
            "format": "webp",
        },
    ).json()
    assert body["status"] == "success", body
    response, out = fetch_output(body)
    assert response.headers["content-type"] == "image/webp" and out.format == "WEBP"
    assert out.size == (1000, 667) and out.mode == "RGB"
    cover = np.asarray(ImageOps.fit(backdrop, out.size, Image.Resampling.LANCZOS)).astype(int)
    changed = np.abs(np.asarray(out).astype(int) - cover).max(axis=2) > 40
    x, y, w, h = _expected_placement(body["meta"]["foreground"], out.size, 0.5, (0.5, 1.0))
    found = foreground_box(changed.astype(np.uint8) * 255)
    assert found is not None and y + h == 667
    # the subject's pixels lie inside where it was placed (lossless WebP: exact backdrop)
    assert found.left >= x - 3 and found.top >= y - 3
    assert found.left + found.width <= x + w + 3 and found.top + found.height <= y + h + 3
    assert changed[: y - 3].sum() == 0  # above it: only the backdrop


@pytest.mark.real_model
@requires_real_model
def test_real_channels_alpha_model_crop_scale_position(real_server, photo):
    url = photo[0]
    body = post(
        real_server,
        {
            "image": url,
            "channels": "alpha",
            "model": "medium",
            "crop": True,
            "crop_margin": 40,
            "scale": "80%",
            "position": "25%,75%",
        },
    ).json()
    assert body["status"] == "success", body
    meta = body["meta"]
    assert meta["model"] == "medium" and meta["only_mask"] is True
    _, out = fetch_output(body)
    box = meta["foreground"]
    canvas = (box["width"] + 80, box["height"] + 80)
    assert out.mode == "L" and out.size == canvas
    expected = _expected_placement(box, canvas, 0.8, (0.25, 0.75))
    assert _close(foreground_box(np.asarray(out)), expected)
    response = post(real_server, {"image": url, "model": "nonexistent-model"})
    assert response.status_code == 422 and "unknown model" in response.json()["message"]


def test_position_and_colour_tuples_from_code_are_checked():
    assert RemoveOptions(position=(0.25, 1)).position == (0.25, 1.0)
    assert RemoveOptions(bg_color=(1, 2, 3)).bg_color == (1, 2, 3, 255)
    for bad in [(2.0, -1.0), (0.5,), (True, 0.5)]:
        with pytest.raises(ValueError, match="two fractions"):
            RemoveOptions(position=bad)
    with pytest.raises(ValueError, match="hex colour"):
        RemoveOptions(bg_color=(255.7, 0, 0))
