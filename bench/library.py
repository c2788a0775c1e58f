"""Library benchmark parts: alphacut ``Engine.remove`` + PNG vs rembg ``remove()``, the bare
session.run floor, and alpha matting (time, peak RSS, SAD/MSE on the matting set)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import (
    MATTING,
    PHOTOS,
    BenchImage,
    Worker,
    fmt_table,
    make_big_image,
    median,
    ratio,
    rembg_worker,
)

MODES = ("default", "only_mask", "post_process_mask")


def start_workers(ctx: Any) -> tuple[Worker, Worker]:
    alphacut = Worker(sys.executable, "alphacut", ctx.weights_alphacut)
    rembg = rembg_worker(ctx)
    ctx.log(
        f"workers ready: alphacut load {alphacut.ready['load_seconds']:.1f}s, "
        f"rembg load {rembg.ready['load_seconds']:.1f}s"
    )
    return alphacut, rembg


def _pair_call(first: Worker, second: Worker, **command: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for worker in (first, second):
        try:
            out[worker.impl] = worker.call(**command)
        except RuntimeError as exc:
            out[worker.impl] = {"error": str(exc)}
    return out


def run_library(ctx: Any, images: list[BenchImage]) -> dict[str, Any]:
    alphacut, rembg = start_workers(ctx)
    rows: list[dict[str, Any]] = []
    bare: list[float] = []
    try:
        for image in images:
            for mode in MODES:
                times: dict[str, list[float]] = {"alphacut": [], "rembg": []}
                stages: list[dict[str, float]] = []
                errors = 0
                for rep in range(ctx.reps):
                    # Alternate who goes first, so drift in background load hits both alike.
                    order = (alphacut, rembg) if rep % 2 == 0 else (rembg, alphacut)
                    got = _pair_call(*order, op="remove", path=str(image.path), mode=mode)
                    for impl, reply in got.items():
                        if "error" in reply:
                            errors += 1
                            ctx.log(f"  error {impl} {image.name} {mode}: {reply['error']}")
                        else:
                            times[impl].append(reply["seconds"])
                    if "stages" in got["alphacut"]:
                        stages.append(got["alphacut"]["stages"])
                row = {
                    "image": image.name,
                    "group": image.group,
                    "mp": image.megapixels,
                    "mode": mode,
                    "alphacut": median(times["alphacut"]),
                    "rembg": median(times["rembg"]),
                    "errors": errors,
                    "alphacut_all": times["alphacut"],
                    "rembg_all": times["rembg"],
                    "stages": {
                        k: median([s.get(k, 0.0) for s in stages])
                        for k in (stages[0] if stages else {})
                    },
                }
                row["ratio"] = ratio(row["alphacut"], row["rembg"])
                rows.append(row)
                ctx.log(
                    f"  {image.name:32s} {mode:18s} alphacut {row['alphacut']:.2f}s "
                    f"rembg {row['rembg']:.2f}s ratio {row['ratio']:.2f}"
                )
            # One floor sample per image keeps the floor in the same time window as the rest.
            bare += alphacut.call(op="bare", reps=1)["seconds"]
        memory = {
            "alphacut_worker": alphacut.call(op="memory"),
            "rembg_worker": rembg.call(op="memory"),
        }
    finally:
        alphacut.close()
        rembg.close()
    return summarise_library(ctx, rows, bare, memory)


def summarise_library(
    ctx: Any, rows: list[dict[str, Any]], bare: list[float], memory: dict[str, Any]
) -> dict[str, Any]:
    floor = median(bare)
    table = []
    summary: dict[str, Any] = {"bare_fp32_median": floor, "bare_all": bare}
    for mode in MODES:
        for group, label in (
            ("photo", "photos 0.17-1.55 MP"),
            ("eval", "evaldata sample"),
            ("big", "12 MP"),
        ):
            sel = [r for r in rows if r["mode"] == mode and r["group"] == group]
            if not sel:
                continue
            entry = {
                "alphacut": median([r["alphacut"] for r in sel]),
                "rembg": median([r["rembg"] for r in sel]),
                "ratio_median": median([r["ratio"] for r in sel]),
                "ratio_max": max(r["ratio"] for r in sel),
                "alphacut_vs_bare": median([r["alphacut"] / floor for r in sel]),
                "errors": sum(r["errors"] for r in sel),
            }
            summary[f"{mode}/{group}"] = entry
            table.append(
                [
                    mode,
                    label,
                    len(sel),
                    entry["alphacut"],
                    entry["rembg"],
                    entry["ratio_median"],
                    entry["ratio_max"],
                    entry["alphacut_vs_bare"],
                ]
            )
    ctx.log(
        f"\nbare fp32 session.run (default ORT options): median {floor:.3f}s over {len(bare)} runs"
    )
    ctx.log(
        fmt_table(
            [
                "mode",
                "images",
                "n",
                "alphacut s",
                "rembg s",
                "ratio (median)",
                "ratio (worst)",
                "alphacut/bare",
            ],
            table,
        )
    )
    stage_rows = [
        [
            r["image"],
            r["mp"],
            *(
                r["stages"].get(k, 0.0)
                for k in ("inference", "session_run", "postprocess", "compose", "encode")
            ),
            r["alphacut"],
        ]
        for r in rows
        if r["mode"] == "default"
    ]
    ctx.log("\nalphacut stages, default mode (median s; 'inference' = preprocess + queue + run):")
    ctx.log(
        fmt_table(
            [
                "image",
                "MP",
                "inference",
                "session.run",
                "postprocess",
                "compose",
                "encode",
                "total",
            ],
            stage_rows,
        )
    )
    return {"rows": rows, "summary": summary, "memory": memory}


def matting_images(ctx: Any) -> list[Path]:
    names = ["plants-1.jpg"] if ctx.quick else ["girl-1.jpg", "plants-1.jpg"]
    return [PHOTOS / n for n in names] + [make_big_image(ctx.tmp, ctx.big_source)]


def run_matting(ctx: Any) -> dict[str, Any]:
    """Alpha matting time and per-call peak RSS on photos, then SAD/MSE on the matting set."""
    from alphacut.evaluate.metrics import compute_metrics

    alphacut, rembg = start_workers(ctx)
    timing, quality = [], []
    reps = 1 if ctx.quick else max(1, ctx.reps - 1)
    try:
        for path in matting_images(ctx):
            times: dict[str, list[float]] = {"alphacut": [], "rembg": []}
            peaks: dict[str, list[int]] = {"alphacut": [], "rembg": []}
            for rep in range(reps):
                order = (alphacut, rembg) if rep % 2 == 0 else (rembg, alphacut)
                got = _pair_call(
                    *order, op="remove", path=str(path), mode="alpha_matting", reset_peak=True
                )
                for impl, reply in got.items():
                    if "error" not in reply:
                        times[impl].append(reply["seconds"])
                        peaks[impl].append(reply["VmHWM"])
            row = {
                "image": path.name,
                **{f"{k}_s": median(v) for k, v in times.items()},
                **{f"{k}_peak_mb": max(v, default=0) / 1024 for k, v in peaks.items()},
            }
            row["ratio"] = ratio(row["alphacut_s"], row["rembg_s"])
            timing.append(row)
            ctx.log(
                f"  matting {path.name}: alphacut {row['alphacut_s']:.1f}s "
                f"({row['alphacut_peak_mb']:.0f} MB peak), rembg {row['rembg_s']:.1f}s "
                f"({row['rembg_peak_mb']:.0f} MB peak)"
            )
        pairs = sorted((MATTING / "images").iterdir())
        for image in pairs[:3] if ctx.quick else pairs:
            gt = np.asarray(Image.open(MATTING / "masks" / f"{image.stem}.png").convert("L"))
            row = {"image": image.name}
            for mode in ("default", "alpha_matting"):
                for worker in (alphacut, rembg):
                    out = ctx.tmp / f"{worker.impl}-{mode}-{image.stem}.png"
                    worker.call(op="alpha", path=str(image), mode=mode, out=str(out))
                    pred = np.asarray(Image.open(out), dtype=np.float64) / 255.0
                    metrics = compute_metrics(pred, gt / 255.0)
                    row[f"{worker.impl}/{mode}/sad"] = metrics["sad"]
                    row[f"{worker.impl}/{mode}/mse"] = metrics["mse"]
            # The solvers alone, on the same trimap (alphacut's, from its own mask): rembg's
            # closed form (pymatting) against alphacut's alpha matting above.
            trimap = ctx.tmp / f"trimap-{image.stem}.png"
            out = ctx.tmp / f"rembg-cf-{image.stem}.png"
            alphacut.call(op="trimap", path=str(image), out=str(trimap))
            rembg.call(op="closed_form", path=str(image), trimap=str(trimap), out=str(out))
            pred = np.asarray(Image.open(out), dtype=np.float64) / 255.0
            metrics = compute_metrics(pred, gt / 255.0)
            row["rembg/cf_on_alphacut_trimap/sad"] = metrics["sad"]
            row["rembg/cf_on_alphacut_trimap/mse"] = metrics["mse"]
            quality.append(row)
    finally:
        alphacut.close()
        rembg.close()
    table = [
        [
            r["image"],
            r["alphacut_s"],
            r["rembg_s"],
            r["ratio"],
            r["alphacut_peak_mb"],
            r["rembg_peak_mb"],
        ]
        for r in timing
    ]
    ctx.log(
        fmt_table(
            ["image", "alphacut s", "rembg s", "ratio", "alphacut peak MB", "rembg peak MB"], table
        )
    )
    means = (
        {key: float(np.mean([r[key] for r in quality])) for key in quality[0] if key != "image"}
        if quality
        else {}
    )
    ctx.log(f"matting set ({len(quality)} pairs), mean SAD / MSE:")
    ctx.log(
        fmt_table(
            ["side", "mode", "SAD", "MSE"],
            [
                [
                    impl,
                    mode,
                    means.get(f"{impl}/{mode}/sad", float("nan")),
                    means.get(f"{impl}/{mode}/mse", float("nan")),
                ]
                for impl, mode in (
                    ("alphacut", "default"),
                    ("alphacut", "alpha_matting"),
                    ("rembg", "default"),
                    ("rembg", "alpha_matting"),
                    ("rembg", "cf_on_alphacut_trimap"),
                )
            ],
        )
    )
    return {"timing": timing, "quality": quality, "quality_means": means, "reps": reps}
