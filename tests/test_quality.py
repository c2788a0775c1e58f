"""Mask quality: guided filter, trimap, matting fallbacks, decontamination, post-processing and
``mask_quality`` (pure functions and the tiny model over HTTP; the real model is in
tests/test_matting.py)."""

from __future__ import annotations

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from alphacut.jobs.worker import options_from_record
from alphacut.pipeline import matting
from alphacut.pipeline.filters import box_filter
from alphacut.pipeline.foreground import estimate_foreground
from alphacut.pipeline.matting import (
    AlphaMattingParams,
    alpha_matting,
    build_trimap,
    erode_kernel_size,
    reject_resegmentation,
)
from alphacut.pipeline.options import RemoveOptions
from alphacut.pipeline.postprocess import post_process_mask
from alphacut.pipeline.probability import probability_to_mask, upsample_probability
from alphacut.pipeline.refine import (
    _coefficients,
    _resize_region,
    guided_filter,
    guided_upsample_mask,
    upsample_mask,
)
from alphacut.pipeline.remove import predict_probability, remove_background
from tests.conftest import subject_image

RNG = np.random.default_rng(7)

# ---------------------------------------------------------------- guided filter


def test_guided_filter_with_a_flat_guide_is_a_box_blur():
    src = RNG.random((60, 80)).astype(np.float32)
    guide = np.full((60, 80, 3), 0.4, np.float32)
    out = guided_filter(guide, src, radius=3, eps=1e-3)
    # No guide structure: a = 0, b = the local mean, averaged once more.
    assert np.allclose(out, box_filter(box_filter(src, 3), 3), atol=1e-5)
    assert out.std() < src.std() / 3


def test_guided_filter_keeps_the_guides_edge():
    guide = np.zeros((40, 40), np.float32)
    guide[:, 20:] = 1.0
    src = guide + RNG.normal(0, 0.1, guide.shape).astype(np.float32)
    out = guided_filter(guide, src, radius=4, eps=1e-3)
    blurred = box_filter(src, 4)
    # Two pixels either side of the edge: the guided result is still on its side...
    assert np.abs(out[:, 18] - 0).max() < 0.15 and np.abs(out[:, 21] - 1).max() < 0.15
    # ...where a plain blur of the same size mixes both sides.
    assert blurred[:, 19].mean() > 0.3
    # And the noise is smoothed away.
    assert np.abs(out - guide).mean() < np.abs(src - guide).mean() / 2


def test_colour_guide_separates_colours_a_grey_guide_cannot():
    # Red and green of the same luminance: one edge for a colour guide, none for grey.
    guide = np.zeros((30, 30, 3), np.float32)
    guide[:, :15] = (0.6, 0.2, 0.2)
    guide[:, 15:] = (0.2, 0.4, 0.2)
    src = np.zeros((30, 30), np.float32)
    src[:, 15:] = 1.0
    colour = guided_filter(guide, src, radius=3, eps=1e-4)
    assert colour[:, 13].max() < 0.1 and colour[:, 16].min() > 0.9


def test_resize_region_matches_cv2_resize():
    array = RNG.random((50, 70, 4)).astype(np.float32)
    full = cv2.resize(array, (333, 211), interpolation=cv2.INTER_LINEAR)
    part = _resize_region(array, 333, 211, (37, 150), (20, 300))
    assert np.abs(full[37:150, 20:300] - part).max() < 1e-4


def _disc(size: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (np.hypot(yy - size / 2, xx - size / 2) < radius).astype(np.float32)


def test_fast_guided_upsampling_puts_the_edge_on_the_photo():
    truth = _disc(400, 130)
    photo = np.where(truth[..., None] > 0, [200, 60, 40], [30, 90, 200]).astype(np.uint8)
    low = cv2.resize(truth, (100, 100), interpolation=cv2.INTER_AREA)  # a 4x coarser map
    guided = guided_upsample_mask(photo, low).astype(np.float32) / 255
    bilinear = cv2.resize(low, (400, 400), interpolation=cv2.INTER_LINEAR)
    assert guided.shape == truth.shape
    assert np.abs(guided - truth).mean() < np.abs(bilinear - truth).mean() / 2
    assert ((guided > 0.1) & (guided < 0.9)).sum() < ((bilinear > 0.1) & (bilinear < 0.9)).sum()


def test_guided_upsample_mask_matches_the_float_filter():
    """The uint8 shortcut on flat tiles gives what the float filter would, within a level."""
    photo = RNG.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    photo[:, :450] = (RNG.random((700, 450, 3)) * 40 + 100).astype(np.uint8)
    low = np.zeros((100, 100), np.float32)
    low[30:70, 20:45] = 1.0
    low = cv2.GaussianBlur(low, (5, 5), 1.0)
    mask = guided_upsample_mask(photo, low, tile=64)
    assert mask.dtype == np.uint8 and mask.shape == (700, 900)
    assert mask[:100].max() == 0 and mask[350, 250] == 255  # flat tiles: exact 0 and 255
    small_guide = cv2.resize(photo, (100, 100), interpolation=cv2.INTER_AREA) / 255.0
    a, b = _coefficients(small_guide.astype(np.float32), low, 1, 1e-4)
    a_up = cv2.resize(a, (900, 700), interpolation=cv2.INTER_LINEAR)
    b_up = cv2.resize(b, (900, 700), interpolation=cv2.INTER_LINEAR)
    reference = probability_to_mask(
        np.clip((a_up * (photo / 255.0)).sum(-1) + b_up, 0, 1).astype(np.float32)
    )
    assert np.abs(mask.astype(int) - reference).max() <= 1


def test_upsample_mask_is_bilinear_when_the_photo_is_not_larger():
    prob = RNG.random((64, 64)).astype(np.float32)
    photo = np.zeros((50, 60, 3), np.uint8)
    assert np.array_equal(
        upsample_mask(prob, photo), probability_to_mask(upsample_probability(prob, 60, 50))
    )
    big = np.zeros((70, 60, 3), np.uint8)  # taller than the map: guided
    mask = upsample_mask(prob, big)
    assert mask.shape == (70, 60) and mask.dtype == np.uint8


# ---------------------------------------------------------------- trimap and matting


def test_trimap_band_scales_with_the_image_and_respects_erode_size():
    params = AlphaMattingParams()
    assert erode_kernel_size((600, 800), params) == 8  # 0.8% of a 1000 px diagonal
    assert erode_kernel_size((3000, 4000), params) == 40
    assert erode_kernel_size((60, 80), params) == params.erode_size  # the user's minimum
    assert erode_kernel_size((60, 80), AlphaMattingParams(erode_size=20)) == 20

    def band_width(size: int) -> float:
        mask = (_disc(size, size / 3) * 255).astype(np.uint8)
        mask = cv2.GaussianBlur(mask, (0, 0), size / 200)
        trimap = build_trimap(mask, params)
        assert set(np.unique(trimap)) == {0, 128, 255}
        return (trimap == 128).sum() / (2 * np.pi * size / 3)

    small, large = band_width(400), band_width(1600)
    assert 3.0 < large / small < 5.0  # 4x the size, about 4x the band


def _matting_scene(size: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A soft-edged subject (true alpha), its photo, and a blurry model-like mask of it."""
    alpha = cv2.GaussianBlur(_disc(size, size / 3), (0, 0), 1.5)
    fg = np.array([230, 120, 40], np.float32)
    bg = np.array([40, 90, 200], np.float32)
    photo = (alpha[..., None] * fg + (1 - alpha[..., None]) * bg).astype(np.uint8)
    model = cv2.GaussianBlur(alpha, (0, 0), 5)
    return photo, (alpha * 255).astype(np.uint8), (model * 255 + 0.5).astype(np.uint8)


def _sad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).sum() / 255 / 1000)


def test_alpha_matting_sharpens_a_blurry_mask_towards_the_truth():
    photo, truth, model = _matting_scene()
    refined = alpha_matting(photo, model, AlphaMattingParams())
    assert refined.dtype == np.uint8 and refined.shape == model.shape
    assert _sad(refined, truth) < 0.5 * _sad(model, truth)


def test_alpha_matting_solver_failure_returns_the_plain_mask(monkeypatch, caplog):
    photo, _, model = _matting_scene()

    def broken(*args, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(matting, "solve_alpha", broken)
    assert np.array_equal(alpha_matting(photo, model, AlphaMattingParams()), model)
    assert "alpha matting failed" in caplog.text

    monkeypatch.setattr(
        matting,
        "solve_alpha",
        lambda image, trimap, *a, **k: np.full(trimap.shape, np.nan, np.float32),
    )
    assert np.array_equal(alpha_matting(photo, model, AlphaMattingParams()), model)


def test_alpha_matting_rejects_a_solver_that_deletes_the_subject(monkeypatch, caplog):
    photo, _, model = _matting_scene()
    # A solver that answers "background" everywhere it may: the am_GT26 failure mode.
    monkeypatch.setattr(
        matting, "solve_alpha", lambda image, trimap, *a, **k: (trimap == 255).astype(np.float32)
    )
    mask = model.copy()
    mask[40:120, 40:120] = np.maximum(mask[40:120, 40:120], 200)  # a large unsure subject
    out = alpha_matting(photo, mask, AlphaMattingParams())
    assert "re-segmented" in caplog.text
    band = (mask >= 20) & (mask <= 240)
    assert np.array_equal(out[band], mask[band])  # the plain mask, exactly


def test_reject_resegmentation_is_per_region():
    trimap = np.full((50, 100), 0, np.uint8)
    trimap[10:40, 5:45] = 128  # region A
    trimap[10:40, 55:95] = 128  # region B
    prior = np.where(trimap == 128, 0.8, 0.0).astype(np.float32)
    alpha = prior.copy()
    alpha[10:40, 5:45] = 0.0  # A flipped to background entirely
    alpha[10:12, 55:95] = 0.1  # B only nudged
    checked, rejected = reject_resegmentation(alpha, prior, trimap, max_flip=0.3)
    assert rejected is not None and rejected[20, 20] and not rejected[20, 70]
    assert np.array_equal(checked[:, :50], prior[:, :50])
    assert np.array_equal(checked[:, 50:], alpha[:, 50:])


def test_alpha_matting_without_an_unknown_band_thresholds_the_mask():
    photo = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 250
    mask[0, 0] = 10
    out = alpha_matting(photo, mask, AlphaMattingParams())
    assert out[0, 0] == 0 and out[10, 10] == 255


# ---------------------------------------------------------------- decontamination


def test_decontamination_removes_the_background_colour_from_edge_pixels():
    size = 300
    yy, xx = np.mgrid[:size, :size]
    alpha = np.clip((xx - 140) / 12.0, 0, 1).astype(np.float32)  # a 12 px soft edge
    fg = np.empty((size, size, 3), np.float32)
    fg[...] = (200, 150, 100)
    fg += (yy[..., None] % 7) * 3.0  # some texture
    green = np.array([0, 255, 0], np.float32)
    photo = (alpha[..., None] * fg + (1 - alpha[..., None]) * green + 0.5).astype(np.uint8)
    a8 = (alpha * 255 + 0.5).astype(np.uint8)
    out = estimate_foreground(photo, a8)
    soft = (a8 > 40) & (a8 < 220)
    before = np.abs(photo[soft].astype(float) - fg[soft]).mean()
    after = np.abs(out[soft].astype(float) - fg[soft]).mean()
    assert after < before / 4
    # The green cast is gone: the edge pixels' green is the subject's, not the screen's.
    assert np.abs(out[soft][:, 1] - fg[soft][:, 1]).mean() < 15
    # Any memory layout gives the same answer (a Fortran-ordered copy must not be lost).
    assert np.array_equal(estimate_foreground(np.asfortranarray(photo), a8), out)
    with pytest.raises(ValueError):
        estimate_foreground(np.dstack([photo, a8]), a8)  # RGBA, not RGB
    # Opaque and transparent pixels are untouched.
    hard = (a8 <= 1) | (a8 >= 254)
    assert np.array_equal(out[hard], photo[hard])


def test_decontamination_of_a_hard_mask_changes_nothing():
    photo = RNG.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 5:30] = 255
    assert np.array_equal(estimate_foreground(photo, mask), photo)


def test_cutout_uses_decontaminated_colours_unless_disabled():
    image, _ = subject_image(80, 60)
    array = np.asarray(image)

    def predict(img: Image.Image) -> np.ndarray:
        # A soft-edged "probability" of the bright rectangle at 32 px.
        small = np.asarray(img.convert("L").resize((32, 32)), np.float32) / 255
        return cv2.GaussianBlur(small, (0, 0), 1.0)

    on = remove_background(image, predict, RemoveOptions())
    off = remove_background(image, predict, RemoveOptions(decontaminate=False))
    assert np.array_equal(on.mask, off.mask)
    assert np.array_equal(off.output[..., :3], array)
    soft = (on.mask > 1) & (on.mask < 254)
    assert soft.any() and "foreground" in on.timings
    # Edge pixels of the light subject over the dark background get lighter (less background).
    assert on.output[..., :3][soft].astype(int).sum() > off.output[..., :3][soft].astype(int).sum()


# ---------------------------------------------------------------- post_process_mask


def test_post_process_drops_far_specks_keeps_near_parts_and_fills_unsure_holes():
    mask = np.zeros((300, 300), np.uint8)
    mask[60:240, 60:240] = 255  # the subject
    mask[100:110, 100:110] = 90  # a hole the model was unsure about
    mask[200:215, 200:215] = 0  # a hole the model was sure about (between two legs)
    mask[5:9, 290:294] = 200  # a speck far away
    mask[62:66, 244:248] = 200  # a detached bit right next to the subject
    out = post_process_mask(mask)
    assert set(np.unique(out)) <= {0, 255}
    assert out[105, 105] == 255  # unsure hole filled
    assert out[207, 207] == 0  # sure hole kept
    assert out[7, 292] == 0  # far speck dropped
    assert out[64, 246] == 255  # near bit kept


def test_post_process_keeps_a_mask_without_subject_empty():
    assert not post_process_mask(np.zeros((40, 40), np.uint8)).any()


# ---------------------------------------------------------------- mask_quality


def test_predict_probability_high_averages_logits_with_the_mirror():
    calls = []
    ramp = np.tile(np.linspace(0.05, 0.95, 8, dtype=np.float32), (4, 1))

    def predict(img: Image.Image) -> np.ndarray:
        calls.append(img)
        return ramp  # the same map whatever the orientation: the mirror disagrees

    image = Image.new("RGB", (8, 4))
    assert predict_probability(image, predict) is ramp and len(calls) == 1
    high = predict_probability(image, predict, "high")
    assert len(calls) == 3 and high.dtype == np.float32
    # ramp and its mirror are symmetric around 0.5: their logits cancel everywhere.
    assert np.allclose(high, 0.5, atol=1e-5)
    same = predict_probability(image, lambda img: np.full((4, 8), 0.9, np.float32), "high")
    assert np.allclose(same, 0.9, atol=1e-5)


def test_options_from_record_reads_mask_quality():
    request = {
        "options": {
            "only_mask": False,
            "post_process_mask": False,
            "alpha_matting": False,
            "alpha_matting_foreground_threshold": 240,
            "alpha_matting_background_threshold": 20,
            "alpha_matting_erode_size": 5,
            "inverse_mask": False,
        }
    }
    assert options_from_record(request).mask_quality == "normal"  # an older server's job
    request["options"]["mask_quality"] = "high"
    assert options_from_record(request).mask_quality == "high"


def test_mask_quality_over_http(live_server, tiny_settings, file_server):
    base, root = file_server
    image, truth = subject_image()
    image.save(root / "quality.png")
    server = live_server(tiny_settings)
    url = f"{base}/quality.png"
    body = httpx.post(
        server.url + "/api/v5/removebg_mask",
        timeout=150,
        json={"image": url, "mask_quality": "High", "only_mask": True},
    ).json()
    assert body["status"] == "success" and body["meta"]["mask_quality"] == "high"
    bad = httpx.post(
        server.url + "/api/v5/removebg_mask",
        timeout=150,
        json={"image": url, "mask_quality": "ultra"},
    )
    assert bad.status_code == 422 and "mask_quality" in bad.json()["message"]
    plain = httpx.post(
        server.url + "/api/v5/removebg_mask", timeout=150, json={"image": url}
    ).json()
    assert plain["meta"]["mask_quality"] == "normal"


@pytest.mark.parametrize("command", ["remove", "eval"])
def test_cli_rejects_an_unknown_mask_quality(command, tmp_path):
    from alphacut.cli import app

    target = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(target)
    result = CliRunner().invoke(app, [command, str(target), "--mask-quality", "ultra"])
    assert (
        result.exit_code != 0
        and "mask_quality: Input should be 'normal' or 'high'" in result.output
    )
