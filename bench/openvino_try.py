"""Is OpenVINO faster than ONNX Runtime's CPU provider for ISNet here, with the same masks?

Self-contained (numpy, Pillow, and whichever of onnxruntime / onnxruntime-openvino / openvino
the interpreter has); run it from a throwaway venv, see bench/README.md:

    python bench/openvino_try.py ~/.alphacut/models/isnet-imgly-medium.fp32.onnx --reps 4

Backends found are run alternately on the same preprocessed photos: ``ort-cpu`` (ONNX
Runtime's CPU provider with alphacut's options), ``ort-openvino`` (the OpenVINO provider inside
ONNX Runtime) and ``openvino`` (the OpenVINO runtime itself), all fp32. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "photos"
SIZE = 1024


def preprocess(path: Path) -> np.ndarray:
    """alphacut's preprocessing for the img.ly ISNet: bilinear 1024, (x - 128) / 256."""
    image = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    array = (np.asarray(image, np.float32) - 128.0) / 256.0
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])


def backends(model: str, threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    found: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    try:
        import onnxruntime as ort

        def ort_session(providers: list) -> Callable[[np.ndarray], np.ndarray]:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            for name, value in (("batch", 1), ("height", SIZE), ("width", SIZE)):
                options.add_free_dimension_override_by_name(name, value)
            session = ort.InferenceSession(model, options, providers=providers)
            return lambda x: session.run(None, {"input": x})[0]

        found["ort-cpu"] = ort_session(["CPUExecutionProvider"])
        if "OpenVINOExecutionProvider" in ort.get_available_providers():
            found["ort-openvino"] = ort_session(
                [
                    (
                        "OpenVINOExecutionProvider",
                        {"device_type": "CPU", "precision": "FP32", "num_of_threads": str(threads)},
                    ),
                    "CPUExecutionProvider",
                ]
            )
    except ImportError:
        pass
    try:
        import openvino as ov

        core = ov.Core()
        network = core.read_model(model)
        network.reshape({"input": [1, 3, SIZE, SIZE]})
        # f32 explicitly: on CPUs with bf16 units OpenVINO would otherwise run in bf16.
        compiled = core.compile_model(
            network,
            "CPU",
            {
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": "f32",
            },
        )
        request = compiled.create_infer_request()
        found["openvino"] = lambda x: np.array(request.infer({0: x})[compiled.output(0)])
    except ImportError:
        pass
    return found


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    ref_u8 = np.clip(reference * 255 + 0.5, 0, 255).astype(np.int16)
    oth_u8 = np.clip(other * 255 + 0.5, 0, 255).astype(np.int16)
    a, b = reference >= 0.5, other >= 0.5
    union = np.count_nonzero(a | b)
    return {
        "max_abs_diff": float(np.abs(reference - other).max()),
        "mask_levels_max_diff": int(np.abs(ref_u8 - oth_u8).max()),
        "mask_pixels_differing": float(np.mean(ref_u8 != oth_u8)),
        "iou_at_0.5": float(np.count_nonzero(a & b) / union) if union else 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument(
        "--images", nargs="*", default=["girl-1.jpg", "animal-1.jpg", "plants-1.jpg"]
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    inputs = [preprocess(PHOTOS / name) for name in args.images]
    runs = backends(args.model, args.threads)
    outputs = {name: [run(x) for x in inputs] for name, run in runs.items()}  # also warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(args.reps):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for x in inputs:
            for name in order:
                started = time.perf_counter()
                runs[name](x)
                times[name].append(time.perf_counter() - started)
    base = "ort-cpu" if "ort-cpu" in runs else next(iter(runs))
    summary = {
        "backends": list(runs),
        "threads": args.threads,
        "loadavg": os.getloadavg(),
        "median_s": {k: statistics.median(v) for k, v in times.items()},
    }
    summary["ratio_vs_" + base] = {
        k: v / summary["median_s"][base] for k, v in summary["median_s"].items()
    }
    summary["vs_" + base] = {
        name: [
            compare(ref[0, 0], out[0, 0])
            for ref, out in zip(outputs[base], outputs[name], strict=True)
        ]
        for name in runs
        if name != base
    }
    try:
        import onnxruntime

        summary["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import openvino

        summary["openvino"] = openvino.__version__
    except ImportError:
        pass
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
