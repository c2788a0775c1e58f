"""The fp16 -> fp32 conversion (models/convert.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from alphacut.models.convert import convert_fp16_to_fp32, ensure_fp32


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
