"""Model input preparation and probability-map handling (pure array work)."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from alphacut.models.registry import ModelSpec


def preprocess(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """RGB, resized to the model's square input (bilinear), normalised, CHW float32."""
    size = spec.input_size
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    std = np.asarray(spec.std, dtype=np.float32) * 255.0
    array = (array - mean) * (1.0 / std)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def to_probability(raw: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Turn one raw model output (any leading singleton dims) into a HxW 0..1 float32 map."""
    prob = np.asarray(raw, dtype=np.float32).reshape(raw.shape[-2], raw.shape[-1])
    if spec.output_transform == "sigmoid":
        prob = 1.0 / (1.0 + np.exp(-prob))
    elif spec.output_transform == "minmax":
        lo, hi = float(prob.min()), float(prob.max())
        prob = (prob - lo) / (hi - lo) if hi > lo else np.zeros_like(prob)
    return np.clip(prob, 0.0, 1.0, out=prob)


def upsample_probability(prob: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bring the model-resolution probability back to the image size (bilinear)."""
    if prob.shape == (height, width):
        return prob
    return cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)


def probability_to_mask(prob: np.ndarray) -> np.ndarray:
    """0..1 float map to a uint8 0..255 alpha."""
    return np.clip(prob * 255.0 + 0.5, 0, 255).astype(np.uint8)
