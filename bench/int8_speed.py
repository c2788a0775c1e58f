"""fp32 against int8 ISNet inference on this CPU: the same input, the sessions alternated.

    .venv/bin/python bench/int8_speed.py [--reps 5]

Both sessions are built with alphacut's session options (all physical cores, 1024² pinned) and
run in turn on one preprocessed photo, so machine load hits both alike. Prints each model's median
wall time and CPU time (process time: less sensitive to other processes on a shared machine)
and the fp32/int8 ratios. Build the int8 model first: `alphacut models quantize medium`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from common import MODEL_DIR, PHOTOS
from PIL import Image

from alphacut.models.processing import preprocess
from alphacut.models.registry import BUILTIN_MODELS
from alphacut.models.session import session_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    paths = {
        "fp32": BUILTIN_MODELS["medium"].runtime_path(MODEL_DIR),
        "int8": BUILTIN_MODELS["medium-int8"].path(MODEL_DIR),
    }
    sessions = {
        name: ort.InferenceSession(
            str(path), session_options(input_size=1024), providers=["CPUExecutionProvider"]
        )
        for name, path in paths.items()
    }
    with Image.open(PHOTOS / "animal-1.jpg") as photo:
        batch = preprocess(photo, BUILTIN_MODELS["medium"])[np.newaxis]
    for session in sessions.values():
        session.run(None, {"input": batch})  # warm-up
    wall: dict[str, list[float]] = {name: [] for name in sessions}
    cpu: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.reps):
        for name, session in sessions.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            session.run(None, {"input": batch})
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    for name in sessions:
        print(
            f"{name}: wall median {statistics.median(wall[name]):.2f} s "
            f"(min {min(wall[name]):.2f}), CPU median {statistics.median(cpu[name]):.2f} s"
        )
    wall_ratio = statistics.median(wall["fp32"]) / statistics.median(wall["int8"])
    cpu_ratio = statistics.median(cpu["fp32"]) / statistics.median(cpu["int8"])
    print(f"fp32/int8: wall {wall_ratio:.2f}x, CPU time {cpu_ratio:.2f}x")


if __name__ == "__main__":
    main()
