"""alphacut vs rembg on the same ISNet weights: library, HTTP, memory soak, matting, input size.

    .venv/bin/python bench/run.py                      # everything (long on 2 cores: ~1.5 h)
    .venv/bin/python bench/run.py --only library --quick
    .venv/bin/python bench/run.py --only http,memory
    .venv/bin/python bench/run.py --only cache,coldstart   # mask cache; process start to result
    .venv/bin/python bench/run.py --only cache,int8,coldstart   # + int8/fp32 inference: one table
    .venv/bin/python bench/run.py --only reliability       # bench/reliability.py, its defaults

See bench/README.md for what each part measures and the figures it gave.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.*` from any cwd

from bench.common import (  # noqa: E402
    BENCH,
    FP16,
    FP32,
    GENERAL,
    ensure_rembg_venv,
    fmt_table,
    image_set,
    machine_info,
    median,
    static_copy,
)

PARTS = (
    "library",
    "http",
    "memory",
    "matting",
    "inputsize",
    "cache",
    "int8",
    "coldstart",
    "reliability",
)


@dataclass
class Context:
    tmp: Path
    quick: bool
    reps: int
    weights_alphacut: Path
    weights_rembg: Path
    rembg_python: Path
    big_source: str
    http_requests: int
    soak_requests: int
    soak_concurrency: int
    eval_sample: int
    int8_reps: int = 10
    server_env: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def log(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)


def run_inputsize(ctx: Context, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Latency (session.run alone) and mask quality per input size, on a spread subset of
    evaldata/general (every k-th pair, so sod_, davis_ and horse_ are all present)."""
    import numpy as np

    from alphacut.models.session import create_session

    pairs = sorted(p for p in (GENERAL / "images").iterdir() if p.is_file())
    count = 12 if ctx.quick else ctx.eval_sample * 6
    subset = ctx.tmp / "eval-subset"
    for sub in ("images", "masks"):
        (subset / sub).mkdir(parents=True, exist_ok=True)
    for path in pairs[:: max(1, len(pairs) // count)][:count]:
        for src, dest in (
            (path, subset / "images" / path.name),
            (GENERAL / "masks" / f"{path.stem}.png", subset / "masks" / f"{path.stem}.png"),
        ):
            if not dest.exists():
                dest.symlink_to(src)
    rows, out = [], {}
    for size in sizes:
        session = create_session(ctx.weights_alphacut, ("cpu",), input_size=size)
        feed = {"input": np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)}
        session.run(None, feed)
        runs = []
        for _ in range(2 if ctx.quick else 4):
            started = time.perf_counter()
            session.run(None, feed)
            runs.append(time.perf_counter() - started)
        del session
        report = ctx.tmp / f"eval-{size}"
        subprocess.run(
            [
                str(Path(sys.executable).with_name("alphacut")),
                "eval",
                str(subset),
                "--input-size",
                str(size),
                "--out",
                str(report),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        summary = json.loads((report / "summary.json").read_text())
        overall, groups = summary["overall"], summary.get("groups", {})
        out[size] = {
            "session_run_s": median(runs),
            "overall": overall,
            "groups": groups,
            "pairs": summary["pairs"],
            "seconds_per_image": summary["seconds_per_image"],
        }
        rows.append(
            [
                size,
                median(runs),
                summary["seconds_per_image"],
                overall["iou"],
                overall["mae"],
                *(groups.get(g, {}).get("iou", float("nan")) for g in ("davis", "horse", "sod")),
            ]
        )
        ctx.log(
            f"  input {size}: session.run {median(runs):.2f}s, IoU {overall['iou']:.4f}, "
            f"MAE {overall['mae']:.4f}"
        )
    ctx.log(
        f"\ninput size on {len(list((subset / 'images').iterdir()))} pairs of "
        "evaldata/general (every k-th id):"
    )
    ctx.log(
        fmt_table(
            [
                "input",
                "session.run s",
                "eval s/image",
                "IoU",
                "MAE",
                "IoU davis",
                "IoU horse",
                "IoU sod",
            ],
            rows,
        )
    )
    return out


def summary(parts: dict[str, Any]) -> dict[str, Any]:
    """One table from the cache, int8 and coldstart parts of one run: alphacut against rembg,
    medians (the ratio is the ratio of the two medians)."""
    cache, int8, cold = parts["cache"], parts["int8"]["samples"], parts["coldstart"]
    rembg_fp32 = int8["rembg fp32"]
    a_cmd, r_cmd = "alphacut remove (cache off)", "rembg i"
    rows: list[dict[str, Any]] = [
        {
            "measure": "cold request (HTTP, default options), s",
            "alphacut": cache["alphacut"]["cold_median_s"],
            "rembg": cache["rembg"]["cold_median_s"],
            "samples": f"{cache['alphacut']['cold_n']} + {cache['rembg']['cold_n']}",
        },
        {
            "measure": "repeat request (HTTP; alphacut: cache hit, rembg: full run), s",
            "alphacut": cache["alphacut"]["repeat_median_s"],
            "rembg": cache["rembg"]["repeat_median_s"],
            "samples": f"{cache['alphacut']['repeat_n']} + {cache['rembg']['repeat_n']}",
        },
    ]
    for label, a in (("fp32", int8["fp32"]), ("int8 (rembg: its fp32)", int8["int8"])):
        for kind, unit in (("wall", "s"), ("cpu", "CPU s")):
            rows.append(
                {
                    "measure": f"inference {label}, session.run, {unit}",
                    "alphacut": median(a[kind]),
                    "rembg": median(rembg_fp32[kind]),
                    "samples": f"{len(a[kind])} + {len(rembg_fp32[kind])}",
                }
            )
    for key, unit in (("times", "s"), ("cpu_times", "CPU s")):
        rows.append(
            {
                "measure": f"cold start (`alphacut remove` vs `rembg i`, process), {unit}",
                "alphacut": median(cold[key][a_cmd]),
                "rembg": median(cold[key][r_cmd]),
                "samples": f"{len(cold[key][a_cmd])} + {len(cold[key][r_cmd])}",
            }
        )
    for row in rows:
        row["alphacut/rembg"] = row["alphacut"] / row["rembg"]
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS[:4]),
        help=f"comma-separated parts: {', '.join(PARTS)} (default: {','.join(PARTS[:4])})",
    )
    parser.add_argument("--quick", action="store_true", help="fewer images and repetitions")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per image and mode")
    parser.add_argument(
        "--rembg-weights",
        choices=("fp32", "fp16"),
        default="fp32",
        help="weights file for rembg: our fp32 conversion (same file as "
        "alphacut: compares the pipelines) or the original fp16 file",
    )
    parser.add_argument(
        "--big-source", default="girl-1.jpg", help="photo upscaled to 4000x3000 for the 12 MP case"
    )
    parser.add_argument(
        "--big-grain",
        type=float,
        default=0.0,
        help="Gaussian noise sigma added to the 12 MP photo (real-photo texture)",
    )
    parser.add_argument(
        "--only-big", action="store_true", help="library part: the 12 MP photo only"
    )
    parser.add_argument("--http-requests", type=int, default=40)
    parser.add_argument("--soak-requests", type=int, default=200)
    parser.add_argument("--soak-concurrency", type=int, default=4)
    parser.add_argument(
        "--int8-reps",
        type=int,
        default=10,
        help="alternated rounds of the int8 part (each runs every session once)",
    )
    parser.add_argument(
        "--eval-sample",
        type=int,
        default=8,
        help="evaldata/general images in the library part (x6 for inputsize)",
    )
    parser.add_argument("--sizes", default="1024,768,640,512", help="for the inputsize part")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for `alphacut serve` (to try settings)",
    )
    parser.add_argument(
        "--head",
        action="store_true",
        help="run alphacut from a `git archive HEAD` snapshot (PYTHONPATH), not the working "
        "tree: uncommitted edits of others then do not enter the measurement",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if not FP32.is_file():
        parser.error(f"{FP32} is missing: run `alphacut models pull medium`")
    with tempfile.TemporaryDirectory(prefix="alphacut-bench-") as tmp_name:
        ctx = Context(
            tmp=Path(tmp_name),
            quick=args.quick,
            reps=1 if args.quick else args.reps,
            weights_alphacut=FP32,
            weights_rembg=FP32 if args.rembg_weights == "fp32" else FP16,
            rembg_python=Path(),
            big_source=args.big_source,
            http_requests=args.http_requests,
            soak_requests=args.soak_requests,
            soak_concurrency=args.soak_concurrency,
            eval_sample=args.eval_sample,
            int8_reps=args.int8_reps,
            server_env=dict(kv.split("=", 1) for kv in args.server_env),
        )
        if args.head:
            from bench.reliability import snapshot_of_head

            src = snapshot_of_head(ctx.tmp) / "src"
            os.environ["PYTHONPATH"] = str(src)  # every alphacut process started from here
            sys.path.insert(0, str(src))  # and this one (the int8 part imports alphacut)
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH, capture_output=True, text=True
            ).stdout.strip()
            ctx.log(f"alphacut from a snapshot of HEAD ({commit})")
        if {"library", "http", "matting", "coldstart", "cache", "int8"} & set(parts):
            ctx.rembg_python = ensure_rembg_venv(ctx.log)
            ctx.weights_rembg = static_copy(ctx.weights_rembg, ctx.tmp)
        results: dict[str, Any] = {
            "machine": machine_info(),
            "args": vars(args) | {"out": str(args.out)},
            "parts": {},
        }
        ctx.log(f"machine: {results['machine']}")
        started = time.time()
        for part in parts:
            ctx.log(f"\n== {part} (load {os.getloadavg()[0]:.2f}) ==")
            part_started = time.time()
            if part == "library":
                from bench.library import run_library

                images = image_set(
                    ctx.tmp,
                    ctx.quick,
                    args.eval_sample,
                    args.big_source,
                    args.big_grain,
                    args.only_big,
                )
                results["parts"][part] = run_library(ctx, images)
            elif part == "matting":
                from bench.library import run_matting

                results["parts"][part] = run_matting(ctx)
            elif part == "http":
                from bench.http_load import run_http

                results["parts"][part] = run_http(ctx)
            elif part == "memory":
                from bench.http_load import run_soak

                results["parts"][part] = run_soak(ctx)
            elif part == "cache":
                from bench.cache import run_cache

                results["parts"][part] = run_cache(ctx)
            elif part == "int8":
                from bench.int8_speed import run_int8

                results["parts"][part] = run_int8(ctx)
            elif part == "coldstart":
                from bench.coldstart import run_coldstart

                results["parts"][part] = run_coldstart(ctx)
            elif part == "reliability":
                from bench.reliability import main as run_reliability

                results["parts"][part] = run_reliability([])
            elif part == "inputsize":
                sizes = tuple(int(s) for s in args.sizes.split(","))
                results["parts"][part] = run_inputsize(ctx, sizes)
            results["parts"][part]["seconds"] = time.time() - part_started
            results["parts"][part]["loadavg_end"] = os.getloadavg()
        if {"cache", "int8", "coldstart"} <= set(results["parts"]):
            results["summary"] = summary(results["parts"])
            ctx.log(
                "\none table (medians; samples: alphacut + rembg; load average "
                f"{results['machine']['loadavg_start'][0]:.2f} at the start, "
                f"{os.getloadavg()[0]:.2f} now):"
            )
            ctx.log(
                fmt_table(
                    ["measure", "alphacut", "rembg", "alphacut/rembg", "samples"],
                    [
                        [r["measure"], r["alphacut"], r["rembg"], r["alphacut/rembg"], r["samples"]]
                        for r in results["summary"]["rows"]
                    ],
                )
            )
        results["seconds"] = time.time() - started
        results["machine"]["loadavg_end"] = os.getloadavg()
        results["log"] = ctx.lines
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(results, indent=1, default=str))
        ctx.log(
            f"\nwrote {path} ({results['seconds'] / 60:.1f} min; load at end "
            f"{os.getloadavg()[0]:.2f})"
        )


if __name__ == "__main__":
    main()
