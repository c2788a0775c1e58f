"""Prometheus metrics (``GET /metrics``) and the per-request access log.

Every app gets its own ``CollectorRegistry``: tests build many apps in one process, and the
global registry would refuse the second app's metrics as duplicates. Job counts are read from
the store when Prometheus scrapes (a custom collector), so they are right even for jobs that
another process sharing the store runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from alphacut.jobs.store import FAILED, QUEUED, RUNNING, SUCCESS
from alphacut.logs import request_id_var

if TYPE_CHECKING:
    from alphacut.jobs.store import Job
    from alphacut.service.state import ServiceState

access_log = logging.getLogger("alphacut.access")

# Seconds; stages range from milliseconds (decode of a small image) to a minute (big matting).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Probes and scrapes would drown the access log at info level.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Label values come from clients: anything outside these sets is counted as "other", so a
# client inventing methods cannot grow the metrics without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "alphacut_http_requests",
            "HTTP requests by method, route template and HTTP status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "alphacut_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.api_responses = Counter(
            "alphacut_api_responses",
            "API answers by endpoint and body status (success, processing, failed, error)",
            ["endpoint", "status"],
            registry=r,
        )
        self.stage_latency = Histogram(
            "alphacut_stage_duration_seconds",
            "Time spent per pipeline stage (fetch, decode, input: a worker reading and "
            "decoding a stored image, inference, postprocess, matting, compose, encode)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.jobs_finished = Counter(
            "alphacut_jobs_finished",
            "Jobs this process finished, by outcome",
            ["status"],
            registry=r,
        )
        self.generation_time = Histogram(
            "alphacut_job_generation_seconds",
            "generationTime of successful jobs",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "alphacut_webhook_deliveries",
            "Webhook delivery attempts by outcome "
            "(delivered, retry: failed and will be tried again, failed: gave up)",
            ["outcome"],
            registry=r,
        )
        self.state: ServiceState | None = None
        r.register(_StateCollector(self))

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_latency.labels(stage).observe(seconds)

    def bind(self, state: ServiceState) -> None:
        """Hook into the worker pool and the webhook sender of a freshly created state."""
        self.state = state
        state.pool.add_finished_listener(self.observe_job)
        state.webhooks.add_attempt_listener(self.observe_webhook_attempt)

    def observe_webhook_attempt(self, job: Job, delivered: bool, final: bool) -> None:
        self.webhook_deliveries.labels(
            "delivered" if delivered else "failed" if final else "retry"
        ).inc()

    def observe_job(self, job: Job) -> None:
        self.jobs_finished.labels(job.status).inc()
        if job.status == SUCCESS:
            self.generation_time.observe(float(job.generation_time or 0.0))
            for stage, seconds in (job.result or {}).get("timings", {}).items():
                self.observe_stage(stage, float(seconds))

    def observe_request(self, request: Request, status: int, seconds: float) -> None:
        """Count one answered request and write its access-log line.

        The path is logged without its query string, and bodies never are: keys and image
        data stay out of the logs.
        """
        # Route templates are a fixed set; an unmatched path is one label, whatever it was.
        route = getattr(request.scope.get("route"), "path", None) or "unmatched"
        method = request.method if request.method in KNOWN_METHODS else "other"
        status_label = str(status) if 100 <= status <= 599 else "other"
        self.http_requests.labels(method, route, status_label).inc()
        self.http_latency.labels(route).observe(seconds)
        endpoint = getattr(request.state, "api_endpoint", None)
        if endpoint is not None:
            # Handlers record the body's status; an exception answered "error" never got there.
            api_status = getattr(request.state, "api_status", None) or "error"
            self.api_responses.labels(endpoint, api_status).inc()
        path = request.url.path
        level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
        access_log.log(
            level,
            "%s %s %d",
            request.method,
            path,
            status,
            extra={
                "request_id": request_id_var.get(),
                "job_id": getattr(request.state, "job_id", None),
                "fields": {
                    "method": request.method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 1),
                },
            },
        )


def observe_stage(request: Request, stage: str, seconds: float) -> None:
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.observe_stage(stage, seconds)


class _StateCollector:
    """Gauges read at scrape time: jobs by state, queue depth, busy workers, loaded models."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to read at registration time; the state comes with the lifespan

    def collect(self) -> Iterable[Metric]:
        state = self.metrics.state
        if state is None:
            return
        counts = state.store.count_by_status()
        jobs = GaugeMetricFamily("alphacut_jobs", "Jobs in the store by state", labels=["state"])
        for name in (QUEUED, RUNNING, SUCCESS, FAILED):
            jobs.add_metric([name], counts.get(name, 0))
        yield jobs
        yield GaugeMetricFamily(
            "alphacut_queue_depth", "Jobs waiting for a worker", value=counts.get(QUEUED, 0)
        )
        yield GaugeMetricFamily(
            "alphacut_workers_busy", "Jobs this process is running now", value=state.pool.running
        )
        yield GaugeMetricFamily(
            "alphacut_models_loaded",
            "Models loaded in memory",
            value=len(state.engine.loaded_models),
        )
        yield from _mask_cache_metrics(state)
        if state.settings.broker_url:
            from alphacut.service.cluster_metrics import cluster_metrics  # distributed extra

            yield from cluster_metrics(state.pool)


def _mask_cache_metrics(state: ServiceState) -> Iterable[Metric]:
    cache = state.engine.mask_cache
    if cache is None:
        return
    stats = cache.stats()
    yield CounterMetricFamily(
        "alphacut_mask_cache_hits",
        "Model outputs this process found in the mask cache",
        value=stats.hits,
    )
    yield CounterMetricFamily(
        "alphacut_mask_cache_misses",
        "Model runs this process did because the mask cache had no entry",
        value=stats.misses,
    )
    yield GaugeMetricFamily(
        "alphacut_mask_cache_bytes", "Size of all mask cache entries", value=stats.bytes
    )
    yield GaugeMetricFamily(
        "alphacut_mask_cache_entries", "Entries in the mask cache", value=stats.entries
    )


router = APIRouter()


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "content": {
                CONTENT_TYPE_LATEST: {
                    "example": (
                        "# HELP alphacut_queue_depth Jobs waiting for a worker\n"
                        "# TYPE alphacut_queue_depth gauge\nalphacut_queue_depth 0.0\n"
                    )
                }
            }
        }
    },
)
async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    # The collector queries the job store: keep that off the event loop.
    body = await asyncio.to_thread(generate_latest, metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
