"""Alpha matting and mask_quality "high" on the real model and real matting photos.

Each image goes through the model once (a memoising predictor), so the plain mask, the matted
mask and the high-quality mask cost three inferences per image, not one per variant.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from alphacut.engine import Engine
from alphacut.pipeline.options import RemoveOptions
from alphacut.pipeline.remove import compute_mask
from tests.conftest import evaldata, real_settings, requires_real_model

pytestmark = [pytest.mark.real_model, requires_real_model]

# Matting photos where the model's soft edge is wide (fur, hair), so matting has work to do.
MATTING_IDS = ("am_GT06", "am_GT16", "am_GT22")


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    engine = Engine(real_settings(tmp_path_factory.mktemp("matting-home")))
    yield engine
    engine.close()


def _load(image_id: str) -> tuple[Image.Image, np.ndarray]:
    root = evaldata("matting")
    image = Image.open(root / "images" / f"{image_id}.png").convert("RGB")
    gt = np.asarray(Image.open(root / "masks" / f"{image_id}.png").convert("L"), np.float64)
    return image, gt / 255.0


def _memo(predict):
    """The model once per image object (compute_mask passes an RGB image through as is)."""
    cache: dict[int, tuple[Image.Image, np.ndarray]] = {}

    def predict_once(image: Image.Image) -> np.ndarray:
        if id(image) not in cache:
            cache[id(image)] = (image, predict(image))  # holding the image pins its id
        return cache[id(image)][1]

    return predict_once


def _sad(mask: np.ndarray, gt: np.ndarray) -> float:
    return float(np.abs(mask / 255.0 - gt).sum() / 1000.0)


def test_alpha_matting_lowers_sad_against_the_plain_mask(engine):
    predict = _memo(engine.runner().predict)
    plain_total = matted_total = 0.0
    for image_id in MATTING_IDS:
        image, gt = _load(image_id)
        plain = compute_mask(image, predict, RemoveOptions())
        matted = compute_mask(image, predict, RemoveOptions(alpha_matting=True))
        plain_sad, matted_sad = _sad(plain, gt), _sad(matted, gt)
        print(f"{image_id}: SAD plain {plain_sad:.2f} matted {matted_sad:.2f}")
        assert matted_sad < plain_sad, image_id
        plain_total += plain_sad
        matted_total += matted_sad
    assert matted_total < 0.8 * plain_total


def test_mask_quality_high_runs_and_agrees_with_normal(engine):
    image, gt = _load("am_GT16")
    result = engine.remove(image, RemoveOptions(mask_quality="high", only_mask=True))
    normal = engine.remove(image, RemoveOptions(only_mask=True))
    assert result.output.shape == gt.shape and result.output.dtype == np.uint8
    high_fg, normal_fg = result.mask > 127, normal.mask > 127
    assert (high_fg & normal_fg).sum() / (high_fg | normal_fg).sum() > 0.95
    assert _sad(result.mask, gt) < 1.1 * _sad(normal.mask, gt)
