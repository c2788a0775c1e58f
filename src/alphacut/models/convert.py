"""Model conversions done once at pull time.

The img.ly ISNet "medium" file stores fp16 weights with Cast nodes around the graph. On CPUs
without fast fp16 this costs time, so we store an fp32 copy: initializers and fp16 constants are
cast to fp32 and Cast-to-fp16 nodes retargeted to fp32 (they become no-ops the runtime removes).
The file also exports six side outputs of the network that nobody reads; we drop them and the
nodes that only feed them, which saves compute and several 4 MB output copies per inference.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


def _fp16_tensor_to_fp32(tensor: TensorProto) -> TensorProto:
    array = numpy_helper.to_array(tensor).astype(np.float32)
    return numpy_helper.from_array(array, tensor.name)


def _prune_to_outputs(graph: onnx.GraphProto, keep: set[str]) -> None:
    """Keep only the ``keep`` outputs and the nodes that feed them, in topological order.

    The img.ly export is not topologically sorted, so walk producers depth-first from the kept
    outputs; the post-order of that walk is a valid topological order.
    """
    outputs = [out for out in graph.output if out.name in keep]
    del graph.output[:]
    graph.output.extend(outputs)
    producer = {name: node for node in graph.node for name in node.output}
    ordered: list[onnx.NodeProto] = []
    visited: set[int] = set()
    needed: set[str] = set()
    stack: list[tuple[onnx.NodeProto, bool]] = [
        (producer[name], False) for name in keep if name in producer
    ]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            ordered.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for name in node.input:
            needed.add(name)
            if name in producer and id(producer[name]) not in visited:
                stack.append((producer[name], False))
    del graph.node[:]
    graph.node.extend(ordered)
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    value_info = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(value_info)


def convert_fp16_to_fp32(model: onnx.ModelProto, keep_outputs: tuple[str, ...] = ("output",)):
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT16:
            graph.initializer[i].CopyFrom(_fp16_tensor_to_fp32(init))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
            elif (attr.type == onnx.AttributeProto.TENSOR
                  and attr.t.data_type == TensorProto.FLOAT16):
                attr.t.CopyFrom(_fp16_tensor_to_fp32(attr.t))
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    if keep_outputs and all(any(o.name == k for o in graph.output) for k in keep_outputs):
        _prune_to_outputs(graph, set(keep_outputs))
    return model


def ensure_fp32(src: Path, dest: Path) -> Path:
    """Write the fp32 conversion of ``src`` to ``dest`` atomically, unless it is up to date."""
    if dest.is_file() and dest.stat().st_mtime >= src.stat().st_mtime:
        return dest
    model = convert_fp16_to_fp32(onnx.load(str(src)))
    onnx.checker.check_model(model)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        onnx.save(model, tmp_name)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return dest
