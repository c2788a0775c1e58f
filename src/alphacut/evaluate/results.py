"""What an evaluation produces: per-image rows, the worst images' thumbnails and the summary.

Their own module, so the evaluation (which fills them) and the reports (which write them) each
import these types and not each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageResult:
    id: str
    group: str
    width: int
    height: int
    seconds: float
    metrics: dict[str, float]


@dataclass
class WorstItem:
    """Thumbnails (uint8, equally tall) of one badly predicted image, for the sheet."""

    id: str
    mae: float
    image: np.ndarray  # HxWx3
    gt: np.ndarray  # HxW
    pred: np.ndarray  # HxW


@dataclass
class EvalSummary:
    dataset: str
    model: str
    input_size: int
    options: dict[str, object]
    seconds: float
    images: list[ImageResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # id -> reason
    overall: dict[str, float] = field(default_factory=dict)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    worst: list[WorstItem] = field(default_factory=list)  # highest MAE first

    def to_dict(self) -> dict[str, object]:
        """The JSON-friendly summary (no per-image rows, no thumbnails); NaN becomes None."""
        return _no_nan_dict(
            {
                "dataset": self.dataset,
                "model": self.model,
                "input_size": self.input_size,
                "options": self.options,
                "pairs": len(self.images),
                "skipped": self.skipped,
                "seconds": round(self.seconds, 3),
                "seconds_per_image": round(self.seconds / max(1, len(self.images)), 4),
                "overall": self.overall,
                "groups": self.groups,
                "worst": [{"id": w.id, "mae": w.mae} for w in self.worst],
            }
        )


def _no_nan(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def _no_nan_dict(value: dict[str, object]) -> dict[str, object]:
    return {key: _no_nan(item) for key, item in value.items()}
