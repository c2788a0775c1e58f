"""The pipeline entry (pipeline/remove.py): mask_quality "high" averages with the mirror."""

from __future__ import annotations

import numpy as np
from PIL import Image

from alphacut.pipeline.remove import predict_probability

RNG = np.random.default_rng(7)


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
