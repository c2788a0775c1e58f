"""Cold start: process start to first result for one photo (issue 13, part 3).

Three measurements, alternated run by run so that background load hits all alike:

* ``alphacut remove photo.jpg`` and ``rembg i`` (same fp32 weights, ``dis_custom``) as whole
  processes, wall time from spawn to exit, with the mask cache off (ALPHACUT_CACHE_BYTES=0:
  every run is a true first sight of the photo) and, separately, on and already holding the
  photo (a user re-running the command with other options); beside them bench/bare_ort.py,
  the least a Python command can do with the same saved graph (the floor of the aim);
* the split inside one fresh process (``--split``): interpreter start, imports, session
  creation (from the saved optimised graph, as `alphacut remove` does), the first pipeline
  run (its inference and the rest), then a warm ``session.run`` alone: the inference floor
  the aim (remove <= 1.3x inference) is measured against;
* session creation without the saved optimised graph (ONNX Runtime optimising at
  ORT_ENABLE_ALL, the cost that the cache in models/session.py removes).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # `bench.*` when run as a script

COLD_PHOTO = "animal-1.jpg"  # 0.67 MP: mid-range of the photos the other parts use


def _split(photo: Path, graph_cache: bool) -> dict[str, float]:
    """Run in a fresh process: the stages of `alphacut remove` on one photo, timed."""
    started = time.time()
    import numpy as np

    from alphacut.config import load_settings
    from alphacut.engine import Engine
    from alphacut.pipeline.encode import encode_image
    from alphacut.pipeline.options import RemoveOptions

    imported = time.time()
    settings = load_settings(cache_bytes=0)
    if not graph_cache:
        from alphacut.models.session import create_session

        spec = Engine(settings).spec()
        t = time.time()
        create_session(spec.runtime_path(settings.model_dir), settings.providers, input_size=1024)
        return {"session_uncached_s": time.time() - t}
    engine = Engine(settings, warm_up=False)
    runner = engine.runner()
    loaded = time.time()
    options = RemoveOptions()
    result = engine.remove(photo.read_bytes(), options)
    encode_image(result.output, options.format, options.quality, settings.png_compress_level)
    first = time.time()
    size = runner.spec.input_size
    feed = {runner.input_name: np.zeros((1, 3, size, size), np.float32)}
    warm, warm_cpu = [], []
    for _ in range(2):
        t, cpu = time.time(), time.process_time()
        runner.session.run([runner.output_name], feed)
        warm.append(time.time() - t)
        warm_cpu.append(time.process_time() - cpu)
    return {
        "started": started,
        "imports_s": imported - started,
        "session_s": loaded - imported,
        "first_result_s": first - loaded,
        "first_inference_s": result.timings.get("inference", 0.0),
        "warm_session_run_s": min(warm),
        "warm_session_run_cpu_s": min(warm_cpu),
    }


def _user_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment as a user's shell has it: Python writes and reuses bytecode.

    These machines set PYTHONDONTWRITEBYTECODE=1; every alphacut module was then compiled from
    source on every start (~0.05-0.1 s), while rembg's, installed by pip, come compiled.
    """
    env = {**os.environ, **extra}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all threads) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        cmd, env=_user_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {cmd[1]} failed ({done.returncode}): {done.stderr[-2000:]}")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def run_coldstart(ctx: Any) -> dict[str, Any]:
    from alphacut.models.session import cache_path, physical_cores
    from bench.common import FP32, MODEL_DIR, PHOTOS, fmt_table, median, rembg_home

    reps = 3 if ctx.quick else max(3, ctx.reps)
    photo = PHOTOS / COLD_PHOTO
    out = ctx.tmp / "coldstart"
    out.mkdir(exist_ok=True)
    alphacut_bin = str(Path(sys.executable).with_name("alphacut"))
    home = ctx.tmp / "coldstart-home"
    base_env = {"ALPHACUT_HOME": str(home), "ALPHACUT_MODEL_DIR": str(MODEL_DIR)}
    rembg_bin = str(Path(ctx.rembg_python).with_name("rembg"))
    # rembg only loads model_path from inside its home (bench/common.py, rembg_home).
    rembg_dir = rembg_home(ctx.tmp, ctx.weights_rembg)
    rembg_env = {"REMBG_HOME": str(rembg_dir)}
    graph = cache_path(MODEL_DIR / "cache", FP32, input_size=1024, batch_size=1)
    extras = json.dumps(
        {"model_path": str(rembg_dir / "models" / "dis_custom" / ctx.weights_rembg.name)}
    )
    commands = {
        "alphacut remove (cache off)": (
            [alphacut_bin, "remove", str(photo), "-o", str(out / "a.png")],
            {**base_env, "ALPHACUT_CACHE_BYTES": "0"},
        ),
        "alphacut remove (mask cached)": (
            [alphacut_bin, "remove", str(photo), "-o", str(out / "b.png"), "--only-mask"],
            base_env,
        ),
        # Run after alphacut's untimed first run below, which saves the graph it loads.
        "bare ONNX Runtime script": (
            [
                sys.executable,
                str(BENCH_DIR / "bare_ort.py"),
                str(graph),
                str(photo),
                str(out / "m.png"),
                str(physical_cores()),
            ],
            {},
        ),
        "rembg i": (
            [rembg_bin, "i", "-m", "dis_custom", "-x", extras, str(photo), str(out / "r.png")],
            rembg_env,
        ),
    }
    # One untimed run each: the optimised-graph cache, the mask cache entry, rembg's numba
    # cache, the bytecode and the page cache are then what a user's second command finds.
    for cmd, env in commands.values():
        _timed(cmd, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu_times: dict[str, list[float]] = {name: [] for name in commands}
    splits, uncached = [], []
    me = [sys.executable, str(BENCH_DIR / "coldstart.py"), str(photo)]
    for rep in range(reps):
        order = list(commands) if rep % 2 == 0 else list(reversed(commands))
        for name in order:
            wall, cpu = _timed(*commands[name])
            times[name].append(wall)
            cpu_times[name].append(cpu)
        spawned = time.time()
        child = subprocess.run(me, env=_user_env(base_env), capture_output=True, text=True)
        split = json.loads(child.stdout.strip().splitlines()[-1])
        split["interpreter_s"] = split.pop("started") - spawned
        splits.append(split)
        child = subprocess.run(
            [*me, "--no-graph-cache"],
            env=_user_env(base_env),
            capture_output=True,
            text=True,
        )
        uncached.append(json.loads(child.stdout.strip().splitlines()[-1])["session_uncached_s"])
        ctx.log(
            f"  rep {rep}: "
            + ", ".join(f"{name} {times[name][-1]:.2f}s" for name in commands)
            + f"; warm session.run {split['warm_session_run_s']:.2f}s"
        )
    stage = {key: median([s[key] for s in splits]) for key in splits[0]}
    stage["session_uncached_s"] = median(uncached)
    floor, floor_cpu = stage["warm_session_run_s"], stage["warm_session_run_cpu_s"]
    # Ratios per repetition (the command and the floor measured minutes apart at most), then
    # their median: the load on this shared machine moves both.
    rows = [
        [
            name,
            median(times[name]),
            median([t / s["warm_session_run_s"] for t, s in zip(times[name], splits, strict=True)]),
            median(cpu_times[name]),
            median(
                [
                    c / s["warm_session_run_cpu_s"]
                    for c, s in zip(cpu_times[name], splits, strict=True)
                ]
            ),
        ]
        for name in commands
    ]
    ctx.log(
        f"\ncold start, {COLD_PHOTO}, median of {reps} (floor: warm session.run {floor:.2f}s "
        f"wall, {floor_cpu:.2f}s CPU):"
    )
    ctx.log(fmt_table(["command", "wall s", "wall / inference", "CPU s", "CPU / inference"], rows))
    split_rows = [
        ["interpreter start", stage["interpreter_s"]],
        ["imports", stage["imports_s"]],
        ["session (saved optimised graph)", stage["session_s"]],
        ["session (optimising, no saved graph)", stage["session_uncached_s"]],
        ["first result: whole pipeline + PNG", stage["first_result_s"]],
        ["  of which first inference", stage["first_inference_s"]],
        ["warm session.run alone", floor],
        ["warm session.run alone, CPU s", floor_cpu],
    ]
    ctx.log(fmt_table(["stage (one fresh process)", "s"], split_rows))
    return {
        "times": times,
        "cpu_times": cpu_times,
        "splits": splits,
        "session_uncached": uncached,
        "stages": stage,
    }


if __name__ == "__main__":
    photo_arg = Path(sys.argv[1])
    print(json.dumps(_split(photo_arg, graph_cache="--no-graph-cache" not in sys.argv)))
