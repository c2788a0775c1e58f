"""Static int8 quantisation (models/quantize.py): the tiny model, then the real ISNet."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from alphacut.engine import Engine
from alphacut.models.quantize import QuantizeRecipe, calibration_photos, quantize_model
from alphacut.models.registry import BUILTIN_MODELS, known_models, resolve_model
from tests.conftest import PHOTOS, real_settings, requires_real_model, write_tiny_model


def test_shipped_calibration_photos_are_small_and_licensed() -> None:
    photos = calibration_photos()
    assert len(photos) >= 8
    assert sum(p.stat().st_size for p in photos) < 1_500_000
    assert "MIT License" in (photos[0].parent / "README.md").read_text()
    for photo in photos:
        with Image.open(photo) as image:
            assert max(image.size) <= 1024


def test_quantize_tiny_model_writes_a_selectable_int8_model(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    write_tiny_model(model_dir)
    photos = sorted(PHOTOS.glob("*.jpg"))
    path = quantize_model("tiny", model_dir, QuantizeRecipe(), photos=photos)

    assert path == model_dir / "tiny-int8.onnx"
    assert "tiny-int8" in known_models(model_dir)
    spec = resolve_model("tiny-int8", model_dir)
    assert spec.input_size == 64 and spec.mean == (0.5, 0.5, 0.5)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert not list(model_dir.glob("alphacut-quantize-*"))  # the work folder is gone

    ramp = np.linspace(-1, 1, 64, dtype=np.float32)
    batch = np.broadcast_to(ramp, (1, 3, 64, 64)).copy()
    fp32 = ort.InferenceSession(str(model_dir / "tiny.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = fp32.run(None, {"input": batch})[0]
    got = int8.run(None, {"input": batch})[0]
    assert np.abs(got - expected).max() < 0.05


def test_quantize_refuses_unknown_or_missing_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        quantize_model("nope", tmp_path)
    with pytest.raises(FileNotFoundError, match="models pull"):
        quantize_model("medium", tmp_path)


def test_medium_int8_is_a_builtin_model() -> None:
    spec = BUILTIN_MODELS["medium-int8"]
    assert spec.filename.endswith(".int8.onnx") and spec.input_size == 1024
    assert spec.mean == BUILTIN_MODELS["medium"].mean and spec.npm_resource is None


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


@pytest.mark.real_model
@requires_real_model
def test_int8_medium_mask_is_close_to_fp32_on_a_real_photo(tmp_path: Path) -> None:
    """Reuses ``medium-int8`` if built; else quantises with two calibration photos (~1 min)."""
    settings = real_settings(tmp_path / "home")
    model_dir = settings.model_dir
    int8_path = BUILTIN_MODELS["medium-int8"].path(model_dir)
    if not int8_path.is_file():
        model_dir = tmp_path / "models"
        model_dir.mkdir()
        for name in ("isnet-imgly-medium.onnx", "isnet-imgly-medium.fp32.onnx"):
            (model_dir / name).symlink_to(settings.model_dir / name)
        quantize_model("medium", model_dir, QuantizeRecipe(photos=2))
        settings = settings.model_copy(update={"model_dir": model_dir})
    photo = Image.open(PHOTOS / "animal-1.jpg").convert("RGB")  # not a calibration photo
    masks = {}
    for model in ("medium", "medium-int8"):
        engine = Engine(settings.model_copy(update={"model": model}))
        try:
            masks[model] = engine.remove(photo).mask.astype(np.float32) / 255
        finally:
            engine.close()
    fp32, int8 = masks["medium"], masks["medium-int8"]
    assert _iou(fp32 > 0.5, int8 > 0.5) > 0.97
    assert np.abs(fp32 - int8).mean() < 0.01
    shutil.rmtree(tmp_path / "models", ignore_errors=True)
