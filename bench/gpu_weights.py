"""Move an ONNX graph to a machine where its weights cannot go, with random weights there.

A device machine may only receive a few tens of MB, less than ISNet's 88-176 MB of weights.
Inference time does not depend on the weights' values (ISNet has no data-dependent control
flow), so for GPU timing we send the graph alone and fill in random weights of the same shapes
and types on arrival. CPU-vs-GPU agreement is then checked on those same random weights.

    python bench/gpu_weights.py strip MODEL.onnx OUT_DIR   # here: OUT_DIR/model.onnx, small
    python bench/gpu_weights.py fill OUT_DIR               # there: writes OUT_DIR/weights.bin
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, numpy_helper

WEIGHTS = "weights.bin"
_FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


def strip(src: Path, out_dir: Path) -> None:
    model = onnx.load(str(src))
    out_dir.mkdir(parents=True, exist_ok=True)
    offset = 0
    for tensor in model.graph.initializer:
        # Only big float tensors travel as "external": small ones (shapes, scales) stay exact.
        if tensor.data_type not in _FLOATS or len(tensor.raw_data) <= 4096:
            if tensor.data_type in _FLOATS and not tensor.raw_data:
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
            continue
        length = len(tensor.raw_data)
        external_data_helper.set_external_data(tensor, WEIGHTS, offset, length)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        offset += length
    onnx.save(model, str(out_dir / "model.onnx"))
    print(
        f"{out_dir / 'model.onnx'}: {(out_dir / 'model.onnx').stat().st_size} bytes, "
        f"{offset} bytes of weights left behind"
    )


def fill(out_dir: Path, seed: int = 0) -> None:
    model = onnx.load(str(out_dir / "model.onnx"), load_external_data=False)
    rng = np.random.default_rng(seed)
    with open(out_dir / WEIGHTS, "wb") as fh:
        for tensor in model.graph.initializer:
            if tensor.data_location != TensorProto.EXTERNAL:
                continue
            info = {entry.key: entry.value for entry in tensor.external_data}
            dtype = _FLOATS[tensor.data_type]
            dims = tuple(tensor.dims)
            fan_in = int(np.prod(dims[1:])) if len(dims) > 1 else 0
            # He-scaled conv weights keep activations bounded through ~100 ReLU convs.
            values = (
                rng.standard_normal(dims) * np.sqrt(2.0 / fan_in) if fan_in else np.zeros(dims)
            ).astype(dtype)
            fh.seek(int(info["offset"]))
            fh.write(values.tobytes())
            assert len(values.tobytes()) == int(info["length"]), tensor.name
    print(f"filled {out_dir / WEIGHTS}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    strip_cmd = sub.add_parser("strip")
    strip_cmd.add_argument("model", type=Path)
    strip_cmd.add_argument("out_dir", type=Path)
    fill_cmd = sub.add_parser("fill")
    fill_cmd.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    if args.command == "strip":
        strip(args.model, args.out_dir)
    else:
        fill(args.out_dir)


if __name__ == "__main__":
    sys.exit(main())
