"""Run the production pipeline over a dataset with ground truth and aggregate the metrics.

A dataset is a folder with ``images/<id>.<ext>`` and ``masks/<id>.png`` (8-bit, same size as
the image). Each image goes through the same decoder and ``compute_mask`` as the service, so
the numbers measure what users get. Results are aggregated per image, per id prefix (the text
before the first ``_``) and overall (mean over images).
"""

from __future__ import annotations

import heapq
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from alphacut.engine import Engine
from alphacut.errors import AlphacutError
from alphacut.evaluate.metrics import METRIC_NAMES, compute_metrics
from alphacut.evaluate.report import write_reports
from alphacut.evaluate.results import EvalSummary, ImageResult, WorstItem
from alphacut.pipeline.decode import decode_image
from alphacut.pipeline.options import RemoveOptions
from alphacut.pipeline.remove import compute_mask

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
WORST_COUNT = 12
THUMB_HEIGHT = 192


def group_of(image_id: str) -> str:
    """The id prefix before the first ``_`` (the whole id if there is none)."""
    return image_id.split("_", 1)[0]


def find_pairs(dataset_dir: Path) -> list[tuple[str, Path, Path]]:
    """(id, image path, mask path) for every image that has a mask, sorted by id."""
    images_dir, masks_dir = dataset_dir / "images", dataset_dir / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise FileNotFoundError(f"{dataset_dir} needs images/ and masks/ folders")
    pairs = []
    for path in sorted(images_dir.iterdir()):
        mask = masks_dir / f"{path.stem}.png"
        if path.suffix.lower() in IMAGE_SUFFIXES and mask.is_file():
            pairs.append((path.stem, path, mask))
    return pairs


def load_gt(path: Path) -> np.ndarray:
    """A mask file as a float 0..1 HxW array."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float64) / 255.0


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over images, ignoring NaN (a metric undefined for an image)."""
    out: dict[str, float] = {"pairs": float(len(rows))}
    for name in METRIC_NAMES:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[name] = float(finite.mean()) if finite.size else math.nan
    return out


def _thumb(array: np.ndarray, height: int = THUMB_HEIGHT) -> np.ndarray:
    h, w = array.shape[:2]
    width = max(1, min(2 * height, round(w * height / h)))
    img = Image.fromarray(array)
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR))


def _to_u8(alpha: np.ndarray) -> np.ndarray:
    return np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)


def run_eval(
    dataset_dir: Path,
    engine: Engine,
    options: RemoveOptions | None = None,
    model: str | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> EvalSummary:
    """Evaluate ``model`` (default: the engine's) on ``dataset_dir``; write reports to ``out_dir``.

    ``limit`` keeps the first N pairs (by id). Images that fail to decode, or whose mask has
    another size, are skipped and listed in ``EvalSummary.skipped``.
    """
    from tqdm import tqdm

    options = options or RemoveOptions()
    dataset_dir = Path(dataset_dir)
    pairs = find_pairs(dataset_dir)
    if limit is not None:
        pairs = pairs[:limit]
    runner = engine.runner(model)
    summary = EvalSummary(
        dataset=str(dataset_dir),
        model=runner.spec.name,
        input_size=runner.spec.input_size,
        options=options.model_dump(mode="json"),
        seconds=0.0,
    )
    worst: list[tuple[float, int, WorstItem]] = []  # min-heap of the WORST_COUNT worst by MAE
    started = time.perf_counter()
    bar = tqdm(pairs, unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for index, (image_id, image_path, mask_path) in enumerate(bar):
        t0 = time.perf_counter()
        try:
            image = decode_image(image_path.read_bytes(), engine.settings.max_pixels)
        except AlphacutError as exc:
            summary.skipped[image_id] = exc.message
            continue
        gt = load_gt(mask_path)
        if gt.shape != (image.height, image.width):
            summary.skipped[image_id] = (
                f"mask is {gt.shape[1]}x{gt.shape[0]}, image is {image.width}x{image.height}"
            )
            continue
        mask = compute_mask(image, runner.predict, options)
        pred = mask.astype(np.float64) / 255.0
        metrics = compute_metrics(pred, gt)
        seconds = time.perf_counter() - t0
        summary.images.append(
            ImageResult(image_id, group_of(image_id), image.width, image.height, seconds, metrics)
        )
        if out_dir is not None and (len(worst) < WORST_COUNT or metrics["mae"] > worst[0][0]):
            item = WorstItem(
                image_id,
                metrics["mae"],
                _thumb(np.asarray(image.convert("RGB"))),
                _thumb(_to_u8(gt)),
                _thumb(mask),
            )
            entry = (metrics["mae"], index, item)
            if len(worst) < WORST_COUNT:
                heapq.heappush(worst, entry)
            else:
                heapq.heapreplace(worst, entry)
        if progress:
            bar.set_postfix(
                mae=f"{np.mean([r.metrics['mae'] for r in summary.images]):.4f}", refresh=False
            )
    summary.seconds = time.perf_counter() - started
    for image_id, reason in summary.skipped.items():
        log.warning("skipped %s: %s", image_id, reason)
    summary.worst = [entry[2] for entry in sorted(worst, key=lambda e: (-e[0], e[1]))]
    summary.overall = mean_metrics([r.metrics for r in summary.images])
    for group in sorted({r.group for r in summary.images}):
        summary.groups[group] = mean_metrics(
            [r.metrics for r in summary.images if r.group == group]
        )
    if out_dir is not None:
        write_reports(summary, Path(out_dir))
    return summary
