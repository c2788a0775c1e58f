"""fp32 against int8 ISNet inference on this CPU: the same input, the sessions alternated.

    .venv/bin/python bench/int8_speed.py [--reps 5] [--fp16] [--sizes 768,640,512]

Both sessions are built with alphacut's session options (all physical cores, 1024² pinned) and
run in turn on one preprocessed photo, so machine load hits both alike. Prints each model's median
wall time and CPU time (process time: less sensitive to other processes on a shared machine)
and the fp32/int8 ratios. ``--fp16`` adds the original fp16 file (img.ly's download) as a third
session; ``--sizes`` adds the fp32 model at other input sizes
(``ALPHACUT_INPUT_SIZE``). Build the int8 model first: `alphacut models quantize medium`.

``bench/run.py --only int8`` (``run_int8``) runs the same sessions and adds rembg's own inference
on the same fp32 weights, in a rembg worker process (bench/libworker.py, ``infer``), alternated
with them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.*` from any cwd

from bench.common import MODEL_DIR, PHOTOS  # noqa: E402

PHOTO = "animal-1.jpg"
# A timed run: () -> (wall seconds, CPU seconds of the process that ran it).
Timed = Callable[[], tuple[float, float]]


def model_paths(fp16: bool = False) -> dict[str, Path]:
    from alphacut.models.registry import BUILTIN_MODELS

    paths = {
        "fp32": BUILTIN_MODELS["medium"].runtime_path(MODEL_DIR),
        "int8": BUILTIN_MODELS["medium-int8"].path(MODEL_DIR),
    }
    if fp16:
        paths["fp16"] = BUILTIN_MODELS["medium"].path(MODEL_DIR)  # img.ly's original file
    return paths


def alphacut_runs(
    paths: dict[str, Path], photo: Path, sizes: tuple[int, ...] = ()
) -> dict[str, Timed]:
    """One session per model with alphacut's options, each warmed up, fed alphacut's input;
    ``sizes``: the fp32 model again at each of these input sizes (``fp32@768``, ...)."""
    import dataclasses

    from PIL import Image

    from alphacut.models.processing import preprocess
    from alphacut.models.registry import BUILTIN_MODELS
    from alphacut.models.session import session_options

    jobs = [(name, path, 1024) for name, path in paths.items()]
    jobs += [(f"fp32@{size}", paths["fp32"], size) for size in sizes if size != 1024]
    runs: dict[str, Timed] = {}
    for name, path, size in jobs:
        spec = dataclasses.replace(BUILTIN_MODELS["medium"], input_size=size)
        with Image.open(photo) as image:
            feed = {"input": preprocess(image, spec)[np.newaxis]}
        session = ort.InferenceSession(
            str(path), session_options(input_size=size), providers=["CPUExecutionProvider"]
        )
        session.run(None, feed)  # warm-up

        def run(session: Any = session, feed: Any = feed) -> tuple[float, float]:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            session.run(None, feed)
            return time.perf_counter() - start_wall, time.process_time() - start_cpu

        runs[name] = run
    return runs


def alternate(runs: dict[str, Timed], reps: int) -> dict[str, dict[str, list[float]]]:
    """``reps`` rounds, each running every entry once; the order is reversed every other round
    so that no entry always follows the same one."""
    out: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in runs}
    for rep in range(reps):
        for name in runs if rep % 2 == 0 else reversed(list(runs)):
            wall, cpu = runs[name]()
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
    return out


def ensure_int8(log: Callable[[str], None] = print) -> Path:
    """The int8 file, built with `alphacut models quantize medium` (minutes) if it is missing."""
    path = model_paths()["int8"]
    if not path.is_file():
        log(f"{path} is missing: building it with `alphacut models quantize medium` (minutes)")
        alphacut = Path(sys.executable).with_name("alphacut")
        subprocess.run([str(alphacut), "models", "quantize", "medium"], check=True)
    return path


def run_int8(ctx: Any) -> dict[str, Any]:
    """alphacut fp32, int8 and the original fp16 file, and rembg's own session on the same fp32
    weights as alphacut (its default SessionOptions, its preprocessing), alternated run by run."""
    from bench.common import fmt_table, median, rembg_worker

    ensure_int8(ctx.log)
    reps = 2 if ctx.quick else ctx.int8_reps
    photo = PHOTOS / PHOTO
    runs = alphacut_runs(model_paths(fp16=True), photo)
    worker = rembg_worker(ctx)

    def rembg_run() -> tuple[float, float]:
        reply = worker.call(op="infer", path=str(photo))
        return reply["wall"], reply["cpu"]

    rembg_run()  # rembg's own warm-up ran on a tiny image: one at the photo's input too
    try:
        samples = alternate({**runs, "rembg fp32": rembg_run}, reps)
    finally:
        worker.close()
    names = {
        "fp32": "alphacut fp32 (our conversion)",
        "int8": "alphacut medium-int8",
        "fp16": "alphacut, img.ly fp16 file",
        "rembg fp32": "rembg session, same fp32 weights",
    }
    fp32 = samples["fp32"]
    rows = [
        [
            names[name],
            median(s["wall"]),
            min(s["wall"]),
            median(s["cpu"]),
            median(s["wall"]) / median(fp32["wall"]),
            median(s["cpu"]) / median(fp32["cpu"]),
        ]
        for name, s in samples.items()
    ]
    ctx.log(
        f"\ninference at 1024², {PHOTO}, {reps} alternated rounds (session.run only; rembg in "
        "its own process, its default SessionOptions and its preprocessing):"
    )
    ctx.log(
        fmt_table(
            ["session", "wall s (median)", "wall s (min)", "CPU s", "wall / fp32", "CPU / fp32"],
            rows,
        )
    )
    return {"reps": reps, "photo": PHOTO, "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--fp16", action="store_true", help="also the original fp16 file")
    parser.add_argument("--sizes", default="", help="fp32 also at these input sizes: 768,640")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(",") if s)
    samples = alternate(alphacut_runs(model_paths(args.fp16), PHOTOS / PHOTO, sizes), args.reps)
    fp32_wall, fp32_cpu = (statistics.median(samples["fp32"][k]) for k in ("wall", "cpu"))
    for name, s in samples.items():
        wall, cpu = statistics.median(s["wall"]), statistics.median(s["cpu"])
        print(
            f"{name}: wall median {wall:.3f} s (min {min(s['wall']):.3f}), CPU median "
            f"{cpu:.3f} s; / fp32: wall {wall / fp32_wall:.3f}, CPU {cpu / fp32_cpu:.3f}"
        )
    fp32, int8 = samples["fp32"], samples["int8"]
    wall_ratio = statistics.median(fp32["wall"]) / statistics.median(int8["wall"])
    cpu_ratio = statistics.median(fp32["cpu"]) / statistics.median(int8["cpu"])
    print(f"fp32/int8: wall {wall_ratio:.2f}x, CPU time {cpu_ratio:.2f}x")


if __name__ == "__main__":
    main()
