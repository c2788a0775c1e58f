"""Model conversions done once at pull time.

The img.ly ISNet "medium" file stores fp16 weights with Cast nodes around the graph. On CPUs
without fast fp16 this costs time, so we store an fp32 copy: initializers and fp16 constants are
cast to fp32 and Cast-to-fp16 nodes retargeted to fp32 (they become no-ops the runtime removes).
The file also exports six side outputs of the network that nobody reads; we drop them and the
nodes that only feed them, which saves compute and several 4 MB output copies per inference.

The export also has a fixed 1x3x1024x1024 input. We make the batch dimension symbolic
(``batch``) so that queued requests can run as one batch on a GPU, and the spatial dims symbolic
(``height``/``width``) so that ``ALPHACUT_INPUT_SIZE`` can trade quality for speed. The tracer
baked the upsampling targets of ISNet's ``_upsample_like`` into constants (32..1024 for a 1024
input); we recompute them from the input's shape, which is exact for sizes divisible by 64.
The session pins these dims again (``add_free_dimension_override_by_name``), so the default
1024 graph is as static, and as fast, as the original.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Bump when the conversion changes, so that `alphacut models pull` rewrites older files.
CONVERSION_VERSION = "2"
_VERSION_KEY = "alphacut_conversion"


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


def _constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute:
            return numpy_helper.to_array(node.attribute[0].t)
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _traced_resize_sizes(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, int]] | None:
    """(Concat node, input index) of each Resize's constant target size, or None if any Resize
    has a target we cannot rewrite (then the spatial dims must stay fixed)."""
    producer = {name: node for node in graph.node for name in node.output}
    found = []
    for node in graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
            continue  # scale-based Resize works at any size
        concat = producer.get(node.input[3])
        if concat is None or concat.op_type != "Concat":
            return None
        value = _constant_value(graph, concat.input[-1])
        if value is None or value.shape != (2,):
            return None
        found.append((concat, len(concat.input) - 1))
    return found


def make_dims_dynamic(model: onnx.ModelProto) -> bool:
    """Symbolic batch (and, where possible, height/width) on the single 4-D input and the
    outputs. Returns whether the spatial dims became dynamic."""
    graph = model.graph
    if len(graph.input) != 1 or len(graph.input[0].type.tensor_type.shape.dim) != 4:
        return False
    source = graph.input[0]
    dims = source.type.tensor_type.shape.dim
    base = (dims[2].dim_value, dims[3].dim_value)
    resizes = _traced_resize_sizes(graph) if all(base) else None
    spatial = resizes is not None
    if resizes:
        made: dict[tuple[int, int], str] = {}
        nodes = [
            helper.make_node("Shape", [source.name], ["alphacut/input_shape"]),
            helper.make_node(
                "Slice", ["alphacut/input_shape", "alphacut/2", "alphacut/4"], ["alphacut/input_hw"]
            ),
        ]
        inits = [
            numpy_helper.from_array(np.array(v, np.int64), name)
            for name, v in (
                ("alphacut/2", [2]),
                ("alphacut/4", [4]),
                ("alphacut/base_hw", list(base)),
            )
        ]
        for concat, index in resizes:
            value = _constant_value(graph, concat.input[index])
            assert value is not None
            size = (int(value[0]), int(value[1]))
            if size not in made:
                # traced size * input size // traced input size (int64, floor: exact when the
                # input is a multiple of 64, as every ISNet pooling level then halves evenly)
                name = f"alphacut/hw_{size[0]}x{size[1]}"
                inits.append(numpy_helper.from_array(np.array(size, np.int64), f"{name}/traced"))
                nodes += [
                    helper.make_node(
                        "Mul", ["alphacut/input_hw", f"{name}/traced"], [f"{name}/scaled"]
                    ),
                    helper.make_node("Div", [f"{name}/scaled", "alphacut/base_hw"], [name]),
                ]
                made[size] = name
            concat.input[index] = made[size]
        used = {name for node in graph.node for name in node.input}
        kept = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
        del graph.node[:]
        graph.node.extend(nodes + kept)  # the new nodes depend only on the graph input
        graph.initializer.extend(inits)
    for value in [source, *graph.output]:
        value_dims = value.type.tensor_type.shape.dim
        if value_dims:
            value_dims[0].dim_param = "batch"
        if spatial and len(value_dims) == 4:
            for i, param in ((2, "height"), (3, "width")):
                if value_dims[i].dim_value == base[i - 2]:
                    value_dims[i].dim_param = param
    # Intermediate shapes were recorded for 1x3x1024x1024; ORT infers them again.
    del graph.value_info[:]
    return spatial


def convert_fp16_to_fp32(
    model: onnx.ModelProto, keep_outputs: tuple[str, ...] = ("output",)
) -> onnx.ModelProto:
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT16:
            graph.initializer[i].CopyFrom(_fp16_tensor_to_fp32(init))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
            elif (
                attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16
            ):
                attr.t.CopyFrom(_fp16_tensor_to_fp32(attr.t))
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    if keep_outputs and all(any(o.name == k for o in graph.output) for k in keep_outputs):
        _prune_to_outputs(graph, set(keep_outputs))
    make_dims_dynamic(model)
    helper.set_model_props(
        model, {**{p.key: p.value for p in model.metadata_props}, _VERSION_KEY: CONVERSION_VERSION}
    )
    return model


def conversion_version(path: Path) -> str | None:
    """The CONVERSION_VERSION an fp32 file was written with (None: before versioning)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable or truncated: treat as outdated and convert again
        return None
    return next((p.value for p in model.metadata_props if p.key == _VERSION_KEY), None)


def ensure_fp32(src: Path, dest: Path) -> Path:
    """Write the fp32 conversion of ``src`` to ``dest`` atomically, unless it is up to date."""
    if (
        dest.is_file()
        and dest.stat().st_mtime >= src.stat().st_mtime
        and conversion_version(dest) == CONVERSION_VERSION
    ):
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
