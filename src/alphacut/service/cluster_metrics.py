"""Gauges of the distributed mode, read from the broker at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from alphacut.jobs.dispatch import CeleryDispatcher
from alphacut.jobs.runner import JobRunner

log = logging.getLogger(__name__)


def cluster_metrics(runner: JobRunner) -> Iterable[Metric]:
    if not isinstance(runner, CeleryDispatcher):
        return
    try:
        depths = runner.queue_depths()
        workers = runner.live_workers()
    except Exception as exc:  # a scrape must not fail because the broker is down
        log.warning("cluster metrics unavailable: %s", exc)
        return
    queues = GaugeMetricFamily(
        "alphacut_broker_queue_depth", "Messages waiting in each Celery queue", labels=["queue"]
    )
    for queue, depth in depths.items():
        queues.add_metric([queue], depth)
    yield queues
    yield GaugeMetricFamily(
        "alphacut_live_workers", "alphacut worker nodes answering a ping", value=workers
    )
