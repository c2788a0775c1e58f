"""Quality of every pipeline variant on a dataset, in one pass (the model runs once per image).

Each row is what ``alphacut eval DATASET <flags>`` reports for the same flags: the same
decoder, the same ``compute_mask`` and the same metrics. This script only shares the model's
output between the variants (a memo keyed by the pixels, so the mirrored pass of
``--mask-quality high`` is cached too), which makes a five-variant table cost two inferences
per image instead of six.

    .venv/bin/python bench/quality.py ../shared/evaldata/general --out bench/results/q-general.json
    .venv/bin/python bench/quality.py ../shared/evaldata/matting --matting
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from alphacut.config import load_settings
from alphacut.engine import Engine
from alphacut.evaluate.evaluation import find_pairs, group_of, load_gt, mean_metrics
from alphacut.evaluate.metrics import METRIC_NAMES, compute_metrics
from alphacut.pipeline.decode import decode_image
from alphacut.pipeline.options import RemoveOptions
from alphacut.pipeline.remove import compute_mask


@dataclass(frozen=True)
class Variant:
    name: str
    flags: str  # the `alphacut eval` flags that give the same numbers
    options: RemoveOptions


BASE_VARIANTS = (
    Variant("bilinear upsampling", "--bilinear-upsampling", RemoveOptions(guided_upsampling=False)),
    Variant("default", "", RemoveOptions()),
    Variant("post_process_mask", "--post-process-mask", RemoveOptions(post_process_mask=True)),
    Variant("mask_quality high", "--mask-quality high", RemoveOptions(mask_quality="high")),
)
MATTING_VARIANTS = (
    Variant(
        "alpha_matting",
        "--alpha-matting",
        RemoveOptions(alpha_matting=True),
    ),
    Variant(
        "alpha_matting + high",
        "--alpha-matting --mask-quality high",
        RemoveOptions(alpha_matting=True, mask_quality="high"),
    ),
)


def memo_predictor(predict):
    """``predict`` once per distinct image (keyed by a hash of its pixels)."""
    cache: dict[bytes, np.ndarray] = {}

    def predict_once(image: Image.Image) -> np.ndarray:
        key = hashlib.blake2b(image.tobytes(), digest_size=16).digest() + bytes(
            str(image.size), "ascii"
        )
        if key not in cache:
            cache[key] = predict(image)
        return cache[key]

    return predict_once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--matting", action="store_true", help="add the alpha matting rows")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--variants", help="comma-separated variant names (default: all)")
    parser.add_argument("--input-size", type=int, help="model input size (default: the model's)")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    args = parser.parse_args()

    variants = BASE_VARIANTS + (MATTING_VARIANTS if args.matting else ())
    if args.variants:
        wanted = {name.strip() for name in args.variants.split(",")}
        variants = tuple(v for v in variants if v.name.split(" ")[0] in wanted)
    settings = load_settings(**({"input_size": args.input_size} if args.input_size else {}))
    engine = Engine(settings)
    runner = engine.runner()
    pairs = find_pairs(args.dataset)[: args.limit]
    rows: dict[str, list[tuple[str, dict[str, float]]]] = {v.name: [] for v in variants}
    started = time.perf_counter()
    for count, (image_id, image_path, mask_path) in enumerate(pairs, 1):
        image = decode_image(image_path.read_bytes(), engine.settings.max_pixels)
        gt = load_gt(mask_path)
        if gt.shape != (image.height, image.width):
            continue
        predict = memo_predictor(runner.predict)
        for variant in variants:
            mask = compute_mask(image, predict, variant.options)
            rows[variant.name].append((image_id, compute_metrics(mask / 255.0, gt)))
        print(
            f"\r{count}/{len(pairs)} {time.perf_counter() - started:.0f} s",
            end="",
            file=sys.stderr,
            flush=True,
        )
    print(file=sys.stderr)

    result = {
        "dataset": str(args.dataset),
        "model": runner.spec.name,
        "input_size": settings.input_size,
        "variants": [],
    }
    header = ("variant", "subset", "pairs", *METRIC_NAMES)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for variant in variants:
        per_image = rows[variant.name]
        groups = {"all": [m for _, m in per_image]}
        for image_id, metrics in per_image:
            groups.setdefault(group_of(image_id), []).append(metrics)
        summary = {name: mean_metrics(items) for name, items in groups.items()}
        result["variants"].append({"name": variant.name, "flags": variant.flags, "groups": summary})
        for group, values in summary.items():
            cells = [f"{values[name]:.4f}" for name in METRIC_NAMES]
            print(
                f"| {variant.name} | {group} | {int(values['pairs'])} | " + " | ".join(cells) + " |"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
