"""Quality evaluation against datasets with ground-truth masks (``alphacut eval``)."""

from alphacut.evaluate.evaluation import run_eval
from alphacut.evaluate.metrics import METRIC_NAMES, compute_metrics
from alphacut.evaluate.results import EvalSummary, ImageResult

__all__ = ["METRIC_NAMES", "EvalSummary", "ImageResult", "compute_metrics", "run_eval"]
