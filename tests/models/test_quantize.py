"""Static int8 quantisation (models/quantize.py): the tiny model, then the real ISNet."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from typer.testing import CliRunner

from alphacut.cli import app
from alphacut.engine import Engine
from alphacut.models.quantize import QuantizeRecipe, calibration_photos, quantize_model
from alphacut.models.registry import BUILTIN_MODELS, known_models, resolve_model
from tests.conftest import (
    PHOTOS,
    LiveServer,
    make_tiny_settings,
    png_data_uri,
    real_settings,
    requires_real_model,
    subject_image,
    write_tiny_model,
)


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


@pytest.fixture(scope="module")
def int8_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with ``tiny`` and, built by the CLI command, ``tiny-int8``."""
    model_dir = tmp_path_factory.mktemp("int8-home") / "models"
    write_tiny_model(model_dir)
    env = {"ALPHACUT_HOME": str(model_dir.parent), "ALPHACUT_MODEL_DIR": str(model_dir)}
    result = CliRunner().invoke(app, ["models", "quantize", "tiny", "--photos", "2"], env=env)
    assert result.exit_code == 0, result.output
    assert f"model tiny-int8 ready: {model_dir / 'tiny-int8.onnx'}" in result.output
    return model_dir


def test_cli_selects_the_int8_model_and_names_the_command_that_builds_one(
    int8_model_dir: Path, tmp_path: Path
) -> None:
    env = {
        "ALPHACUT_HOME": str(tmp_path / "home"),
        "ALPHACUT_MODEL_DIR": str(int8_model_dir),
        "ALPHACUT_MODEL": "tiny",
    }
    cli = CliRunner()
    listing = cli.invoke(app, ["models", "list"], env=env).output
    assert "tiny-int8" in listing and "medium-int8" in listing
    image, mask = subject_image()
    image.save(tmp_path / "photo.png")
    out = tmp_path / "int8.png"
    command = ["remove", str(tmp_path / "photo.png"), "--only-mask", "-o", str(out)]
    result = cli.invoke(app, [*command, "--model", "tiny-int8"], env=env)
    assert result.exit_code == 0, result.output
    alpha = np.asarray(Image.open(out)) > 127
    assert _iou(alpha, mask) > 0.9
    # Not built yet: the error says how to build it, not where to copy a file from.
    result = cli.invoke(app, [*command, "--model", "medium-int8"], env=env)
    assert result.exit_code == 1
    assert "run `alphacut models quantize medium`" in result.output


def test_http_selects_the_int8_model(int8_model_dir: Path, tmp_path: Path) -> None:
    settings = make_tiny_settings(tmp_path / "home", int8_model_dir)
    image, mask = subject_image()
    body = {"image": png_data_uri(image), "only_mask": True}
    with LiveServer(settings) as server:
        url = server.url + "/api/v5/removebg_mask"
        answer = httpx.post(url, json={**body, "model": "tiny-int8"}, timeout=120).json()
        assert answer["status"] == "success", answer
        output = httpx.get(answer["output"][0], timeout=30).content
        alpha = np.asarray(Image.open(io.BytesIO(output)).convert("L")) > 127
        assert _iou(alpha, mask) > 0.9
        missing = httpx.post(url, json={**body, "model": "medium-int8"}, timeout=120)
    # Not built on this server: a client error naming the model (the server's paths and
    # commands are the operator's business, not the client's).
    assert missing.status_code == 422
    assert missing.json()["message"] == "model 'medium-int8' is not installed on this server"
