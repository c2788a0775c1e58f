"""GPU check: is CUDA really used, what do dynamic batches of 1/2/4/8 give, same masks as CPU?

Run from a fresh venv with onnxruntime-gpu (commands in bench/README.md); alphacut itself need
not be installed, its source is imported from ../src:

    python bench/gpu_check.py ~/.alphacut/models/isnet-imgly-medium.fp32.onnx
    python bench/gpu_check.py --synthetic          # no weights at hand: a random ISNet-sized net

The model needs a dynamic batch dim (our fp32 conversion has one since conversion version 2).
Requests go through alphacut's ModelRunner from many threads, as the server's workers do, so
the batches are the runner's dynamic batches. Prints one JSON object; exit code 2 when the GPU
provider is not active, 3 when GPU and CPU masks disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import onnxruntime as ort  # noqa: E402

from alphacut.models.inference import ModelRunner  # noqa: E402
from alphacut.models.registry import ISNET_IMGLY_MEAN, ISNET_IMGLY_STD, ModelSpec  # noqa: E402
from alphacut.models.session import create_session  # noqa: E402


def synthetic_model(path: Path, size: int) -> None:
    """Random-weight conv net with ISNet's input/output and a dynamic batch (about 60 GFLOP)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev, channels = [], [], "input", 3
    for i, (out, stride) in enumerate(
        [(32, 2), (64, 1), (64, 2), (128, 1), (128, 1), (64, 1), (32, 1), (1, 1)]
    ):
        w = rng.normal(0, (2 / (channels * 9)) ** 0.5, (out, channels, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(
            helper.make_node(
                "Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[stride, stride]
            )
        )
        prev, channels = f"c{i}", out
        if out > 1:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    inits.append(numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "scales"))
    nodes += [
        helper.make_node("Resize", [prev, "", "scales"], ["up"], mode="linear"),
        helper.make_node("Sigmoid", ["up"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, size, size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.save(model, str(path))


def inputs(count: int, size: int) -> list[np.ndarray]:
    """Photos from shared/photos when present (preprocessed as alphacut does), else patterns."""
    from PIL import Image

    from alphacut.models.processing import preprocess

    spec = ModelSpec("check", "check.onnx", size, ISNET_IMGLY_MEAN, ISNET_IMGLY_STD, "-")
    photos = sorted((ROOT.parent / "shared" / "photos").glob("*.jpg"))
    out = []
    for i in range(count):
        if photos:
            image = Image.open(photos[i % len(photos)]).convert("RGB")
        else:
            yy, xx = np.mgrid[0:480, 0:640]
            blob = (yy - 240) ** 2 + (xx - 320 - 20 * i) ** 2 < (120 + 10 * i) ** 2
            array = np.where(blob[..., None], [220, 180, 150], [30, 60, 90]).astype(np.uint8)
            image = Image.fromarray(array)
        out.append(preprocess(image, spec))
    return out


def agreement(cpu: np.ndarray, gpu: np.ndarray) -> dict[str, float]:
    a, b = cpu >= 0.5, gpu >= 0.5
    union = np.count_nonzero(a | b)
    cpu_u8 = np.clip(cpu * 255 + 0.5, 0, 255).astype(np.int16)
    gpu_u8 = np.clip(gpu * 255 + 0.5, 0, 255).astype(np.int16)
    return {
        "max_abs_diff": float(np.abs(cpu - gpu).max()),
        "mask_levels_max_diff": int(np.abs(cpu_u8 - gpu_u8).max()),
        "mask_pixels_differing": float(np.mean(cpu_u8 != gpu_u8)),
        "iou_at_0.5": float(np.count_nonzero(a & b) / union) if union else 1.0,
    }


def measure(
    runner: ModelRunner, tensors: list[np.ndarray], requests: int, clients: int
) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    todo = iter(range(requests))

    def client() -> None:
        while True:
            with lock:
                index = next(todo, None)
            if index is None:
                return
            started = time.perf_counter()
            runner.predict_tensor(tensors[index % len(tensors)])
            with lock:
                latencies.append(time.perf_counter() - started)

    batches, items = runner.batches_run, runner.items_run
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "images_per_s": len(latencies) / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": ordered[max(0, round(0.95 * len(ordered)) - 1)],
        "mean_batch": (runner.items_run - items) / max(1, runner.batches_run - batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--providers", default="cuda", help="e.g. cuda, or tensorrt,cuda")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--requests", type=int, default=48, help="per batch size")
    parser.add_argument("--wait-ms", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cpu-checks", type=int, default=3, help="images compared with CPU")
    args = parser.parse_args()
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, if installed that way
        except Exception as exc:  # noqa: BLE001 - report, the session will tell the rest
            print(f"preload_dlls: {exc}", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    model = args.model
    if args.synthetic or model is None:
        model = tmp / "synthetic.onnx"
        synthetic_model(model, args.size)
    batches = [int(b) for b in args.batches.split(",")]
    providers = tuple(p.strip() for p in args.providers.split(","))
    summary: dict[str, object] = {
        "model": str(model),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
    }
    gpu = create_session(
        model, providers, input_size=args.size, batch_size=max(batches), cache_dir=tmp / "cache"
    )
    active = gpu.get_providers()
    summary["session_providers"] = active
    gpu_active = active[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    summary["gpu_active"] = gpu_active
    spec = ModelSpec("check", model.name, args.size, ISNET_IMGLY_MEAN, ISNET_IMGLY_STD, "-")
    tensors = inputs(8, args.size)
    results = {}
    for batch in batches:
        runner = ModelRunner(gpu, spec, max_batch=batch, max_wait_ms=args.wait_ms)
        try:
            measure(runner, tensors, batch * 2, batch)  # warm-up: kernels for this batch shape
            results[str(batch)] = measure(runner, tensors, args.requests, batch * 2)
        finally:
            runner.close()
        print(f"batch {batch}: {results[str(batch)]}", file=sys.stderr, flush=True)
    summary["by_max_batch"] = results
    cpu = create_session(model, ("cpu",), input_size=args.size, batch_size=1)
    checks = []
    for tensor in tensors[: args.cpu_checks]:
        reference = cpu.run(None, {"input": tensor[None]})[0][0, 0]
        single = gpu.run(None, {"input": tensor[None]})[0][0, 0]
        pair = gpu.run(None, {"input": np.stack([tensor, tensors[-1]])})[0][0, 0]
        checks.append(
            {
                "gpu_batch1_vs_cpu": agreement(reference, single),
                "gpu_batch2_vs_cpu": agreement(reference, pair),
            }
        )
    summary["mask_checks"] = checks
    worst_iou = min(c[k]["iou_at_0.5"] for c in checks for k in c)
    summary["masks_match"] = worst_iou >= 0.995
    summary["loadavg"] = os.getloadavg()
    print(json.dumps(summary, indent=1))
    sys.exit(0 if gpu_active and summary["masks_match"] else 2 if not gpu_active else 3)


if __name__ == "__main__":
    main()
