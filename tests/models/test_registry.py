"""The model registry: built-in names, rembg file names, side-car JSON (models/registry.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alphacut.errors import InvalidRequest
from alphacut.models.registry import BUILTIN_MODELS, known_models, resolve_model


def test_registry_knows_rembg_models_and_sidecars(tmp_path):
    models = known_models(tmp_path)
    for name in [
        "u2net",
        "u2netp",
        "u2net_human_seg",
        "silueta",
        "isnet-general-use",
        "isnet-anime",
        "birefnet-general",
        "birefnet-general-lite",
        "birefnet-portrait",
        "medium",
        "small",
    ]:
        assert name in models
    assert models["u2net"].input_size == 320 and models["birefnet-general"].input_size == 1024
    (tmp_path / "mine.onnx").write_bytes(b"")
    (tmp_path / "mine.json").write_text(json.dumps({"input_size": 512}))
    (tmp_path / "broken.onnx").write_bytes(b"")
    (tmp_path / "broken.json").write_text("{not json")
    models = known_models(tmp_path)
    assert models["mine"].input_size == 512 and "broken" not in models
    assert resolve_model("mine", tmp_path, input_size=256).input_size == 256
    with pytest.raises(InvalidRequest, match="unknown model"):
        resolve_model("../etc/passwd", tmp_path)


def test_a_pulled_model_is_installed_with_only_its_fp32_conversion(tmp_path: Path) -> None:
    """The container image keeps only the file that runs (not the fp16 original)."""
    spec = BUILTIN_MODELS["medium"]
    assert not spec.is_installed(tmp_path)
    fp32 = tmp_path / spec.filename.replace(".onnx", ".fp32.onnx")
    fp32.write_bytes(b"x")
    assert spec.is_installed(tmp_path) and spec.runtime_path(tmp_path) == fp32
