"""Reports of an evaluation: summary.json, per_image.csv, worst.png and the terminal table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from alphacut.evaluate.metrics import METRIC_NAMES
from alphacut.evaluate.results import EvalSummary, WorstItem

# (metric key, column title, decimals) for the terminal table.
TABLE_COLUMNS = (
    ("iou", "IoU@0.5", 3),
    ("mae", "MAE", 4),
    ("max_f", "maxF", 3),
    ("sad", "SAD", 2),
    ("mse", "MSE", 4),
    ("band_mae", "bandMAE", 4),
    ("boundary_f", "bF", 3),
)
LABEL_HEIGHT = 18
GAP = 4


def _fmt(value: float, decimals: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def format_table(summary: EvalSummary) -> str:
    """One row per id prefix and one for all images: pairs and the mean of every metric."""
    rows = [("subset", "pairs", *(title for _, title, _ in TABLE_COLUMNS))]
    named = [*summary.groups.items(), ("all", summary.overall)]
    for name, means in named:
        rows.append(
            (
                name,
                str(int(means.get("pairs", 0))),
                *(_fmt(means.get(key, math.nan), dec) for key, _, dec in TABLE_COLUMNS),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if n == 0 or n == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_per_image_csv(summary: EvalSummary, path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "group", "width", "height", "seconds", *METRIC_NAMES])
        for r in summary.images:
            writer.writerow(
                [
                    r.id,
                    r.group,
                    r.width,
                    r.height,
                    f"{r.seconds:.4f}",
                    *(_fmt(r.metrics[name], 6) for name in METRIC_NAMES),
                ]
            )


def _error_map(item: WorstItem) -> np.ndarray:
    err = np.abs(item.pred.astype(np.int16) - item.gt.astype(np.int16)).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(err, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def contact_sheet(worst: list[WorstItem]) -> np.ndarray:
    """One column per image (worst first); rows: input, GT, prediction, |error| (inferno)."""
    if not worst:
        return np.zeros((LABEL_HEIGHT, 1, 3), np.uint8)
    height = worst[0].gt.shape[0]
    columns = []
    for item in worst:
        tiles = [item.image, _rgb(item.gt), _rgb(item.pred), _error_map(item)]
        width = item.gt.shape[1]
        label = np.full((LABEL_HEIGHT, width, 3), 255, np.uint8)
        text = f"{item.id} {item.mae:.3f}"[: max(4, width // 7)]
        cv2.putText(
            label,
            text,
            (2, LABEL_HEIGHT - 5),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        parts = [label]
        for tile in tiles:
            parts += [np.full((GAP, width, 3), 255, np.uint8), tile]
        columns.append(np.concatenate(parts, axis=0))
    sheet_height = LABEL_HEIGHT + 4 * (height + GAP)
    spacer = np.full((sheet_height, GAP, 3), 255, np.uint8)
    pieces: list[np.ndarray] = []
    for column in columns:
        pieces += [column, spacer]
    return np.concatenate(pieces[:-1], axis=1)


def write_reports(summary: EvalSummary, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    write_per_image_csv(summary, out_dir / "per_image.csv")
    Image.fromarray(contact_sheet(summary.worst)).save(out_dir / "worst.png")
