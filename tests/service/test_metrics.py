"""Operations surface: /metrics (Prometheus), the access log, and the OpenAPI examples. The
HTTP tests run in both modes (``mode_settings``): embedded, and an API node of the session's
cluster (tests/cluster.py), whose jobs run in worker processes that serve no /metrics."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time

import httpx
import pytest

from alphacut.logs import JsonFormatter
from alphacut.service.examples import PROCESSING_EXAMPLE, SUCCESS_EXAMPLE
from tests.conftest import subject_image
from tests.jobhelpers import fetch, scrape, value, wait_until


@pytest.fixture
def served_subject(file_server):
    base, root = file_server
    subject_image()[0].save(root / "metrics-subject.png")
    return f"{base}/metrics-subject.png"


@pytest.fixture
def webhook_receiver():
    """A loopback server that accepts webhook POSTs with 200."""
    received: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received
    httpd.shutdown()


def test_metrics_count_requests_stages_jobs_and_webhooks(
    request, live_server, mode_settings, tmp_path, served_subject, webhook_receiver
):
    hook, received = webhook_receiver
    server = live_server(mode_settings, webhook_backoff=0.2)
    distributed = bool(mode_settings.broker_url)
    # A second app in the same process (its own store): the registries must not clash.
    live_server(mode_settings, home=tmp_path / "other-home")
    api = server.url + "/api/v5/removebg_mask"
    first = httpx.post(
        api, json={"image": served_subject, "webhook": hook, "alpha_matting": True}, timeout=150
    )
    assert first.status_code == 200
    assert httpx.post(api, json={"image": served_subject, "bg_color": "nope"}).status_code == 422
    queued = httpx.post(api, json={"image": served_subject, "instant_response": True}).json()
    deadline = time.time() + 30
    while time.time() < deadline:
        if httpx.post(queued["fetch_result"], json={}).json()["status"] == "success":
            break
        time.sleep(0.05)
    deadline = time.time() + 20
    while not received and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the delivery is counted right after the receiver answers

    samples = scrape(server)
    route = "/api/v5/removebg_mask"
    assert (
        value(samples, "alphacut_http_requests_total", method="POST", route=route, status="200")
        == 2
    )
    assert (
        value(samples, "alphacut_http_requests_total", method="POST", route=route, status="422")
        == 1
    )
    assert (
        value(samples, "alphacut_api_responses_total", endpoint="removebg_mask", status="success")
        == 1
    )
    assert (
        value(
            samples, "alphacut_api_responses_total", endpoint="removebg_mask", status="processing"
        )
        == 1
    )
    assert (
        value(samples, "alphacut_api_responses_total", endpoint="removebg_mask", status="error")
        == 1
    )
    assert value(samples, "alphacut_api_responses_total", endpoint="fetch", status="success") == 1
    for stage in ("fetch", "decode", "inference", "matting", "compose", "encode"):
        assert value(samples, "alphacut_stage_duration_seconds_count", stage=stage) >= 1, stage
    assert value(samples, "alphacut_stage_duration_seconds_count", stage="matting") == 1
    # Job counts come from the store: cluster-wide in the distributed mode.
    assert value(samples, "alphacut_jobs", state="success") == 2
    assert value(samples, "alphacut_queue_depth") == 0
    assert value(samples, "alphacut_http_request_duration_seconds_count", route=route) == 3
    assert ("alphacut_models_loaded", ()) in samples
    if not distributed:
        assert value(samples, "alphacut_jobs_finished_total", status="success") == 2
        assert value(samples, "alphacut_webhook_deliveries_total", outcome="delivered") == 1
        return
    # Only the process that runs a job counts it and its webhook: an API node counts the jobs
    # its requests waited for (the worker stages above come from that job's timings), and the
    # workers deliver webhooks, which the store records. The instant job was only fetched.
    assert value(samples, "alphacut_jobs_finished_total", status="success") == 1
    assert value(samples, "alphacut_webhook_deliveries_total", outcome="delivered") == 0
    assert value(samples, "alphacut_models_loaded") == 0  # an API node loads no model
    wait_until(
        lambda: fetch(server.url, first.json()["id"]).get("webhook_status") == "delivered",
        what="the worker's delivery in the store",
    )
    # What the distributed mode adds: the broker's queues (idle now) and the live workers.
    for queue in ("cpu", "gpu", "ops"):
        assert ("alphacut_broker_queue_depth", (("queue", queue),)) in samples, queue
    assert value(samples, "alphacut_broker_queue_depth", queue="cpu") == 0
    assert value(samples, "alphacut_broker_queue_depth", queue="gpu") == 0
    workers = request.getfixturevalue("shared_cluster").workers
    assert value(samples, "alphacut_live_workers") == len(workers) == 2


@pytest.mark.parametrize("mode_settings", ["distributed"], indirect=True)
def test_broker_queue_depth_counts_a_job_no_worker_takes(
    live_server, mode_settings, served_subject
):
    """The distributed mode's gauges with a job waiting: the shared cluster has no gpu worker."""
    server = live_server(mode_settings, default_queue="gpu")
    api = server.url + "/api/v5/removebg_mask"
    queued = httpx.post(api, json={"image": served_subject, "instant_response": True})
    assert queued.status_code == 200 and queued.json()["status"] == "processing"
    dispatcher = server.state.pool
    try:
        samples = scrape(server)
        assert value(samples, "alphacut_broker_queue_depth", queue="gpu") == 1
        assert value(samples, "alphacut_broker_queue_depth", queue="cpu") == 0
        assert value(samples, "alphacut_queue_depth") == 1  # the store agrees
        assert value(samples, "alphacut_jobs", state="queued") == 1
        assert value(samples, "alphacut_live_workers") == 2  # the cpu ones, still counted
    finally:  # no gpu worker will ever take it: leave the cluster as it was
        dispatcher.broker.delete(mode_settings.broker_prefix + "gpu")
        server.state.store.fail(queued.json()["id"], "removed by the test", 500)
    samples = scrape(server)
    assert value(samples, "alphacut_broker_queue_depth", queue="gpu") == 0
    assert value(samples, "alphacut_queue_depth") == 0


def test_access_log_has_ids_and_no_secrets(live_server, mode_settings, served_subject, caplog):
    server = live_server(mode_settings, api_keys=("s3cret-key",))
    caplog.set_level(logging.INFO, logger="alphacut.access")
    uri = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
    httpx.post(
        server.url + "/api/v5/removebg_mask?key=s3cret-key",
        timeout=150,
        json={"key": "s3cret-key", "image": served_subject},
        headers={"X-Request-Id": "req-123"},
    )
    httpx.post(server.url + "/api/v5/removebg_mask", json={"key": "s3cret-key", "image": uri})
    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.name == "alphacut.access"]
    assert len(lines) == 2
    first = lines[0]
    assert first["request_id"] == "req-123" and isinstance(first["job_id"], int)
    assert (first["method"], first["path"], first["status"]) == (
        "POST",
        "/api/v5/removebg_mask",
        200,
    )
    assert first["duration_ms"] > 0 and lines[1]["status"] == 415
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert "s3cret" not in text and "iVBOR" not in text


def test_openapi_has_examples_for_every_shape(live_server, mode_settings, served_subject):
    server = live_server(mode_settings)
    # The documented shapes are the real ones: same keys as live answers.
    api = server.url + "/api/v5/removebg_mask"
    success = httpx.post(api, json={"image": served_subject}, timeout=150).json()
    processing = httpx.post(api, json={"image": served_subject, "instant_response": 1}).json()
    assert set(success) == set(SUCCESS_EXAMPLE)
    assert set(success["meta"]) == set(SUCCESS_EXAMPLE["meta"])
    assert set(processing) == set(PROCESSING_EXAMPLE)
    assert set(processing["meta"]) == set(PROCESSING_EXAMPLE["meta"])
    assert httpx.get(server.url + "/docs").status_code == 200
    spec = httpx.get(server.url + "/openapi.json").json()
    remove = spec["paths"]["/api/v5/removebg_mask"]["post"]
    request_examples = remove["requestBody"]["content"]["application/json"]["examples"]
    assert {"seed", "output_options", "mask"} <= set(request_examples)
    assert request_examples["seed"]["value"]["webhook"] is None  # nulls survive FastAPI
    ok = remove["responses"]["200"]["content"]["application/json"]["examples"]
    assert ok["success"]["value"]["meta"]["foreground"]["width"] > 0
    assert ok["processing"]["value"]["status"] == "processing"
    for code in ("400", "401", "413", "415", "422", "429"):
        example = remove["responses"][code]["content"]["application/json"]["example"]
        assert example["status"] == "error" and example["message"]
    fetch = spec["paths"]["/api/v5/fetch/{job_id}"]["post"]["responses"]["200"]
    statuses = {
        e["value"]["status"] for e in fetch["content"]["application/json"]["examples"].values()
    }
    assert statuses == {"success", "processing", "failed"}
    assert "/metrics" in spec["paths"] and "/healthz" in spec["paths"]


def test_metrics_show_mask_cache_hits_misses_and_bytes(live_server, mode_settings, served_subject):
    server = live_server(mode_settings)
    api = server.url + "/api/v5/removebg_mask"
    for fields in ({}, {"only_mask": True}):  # the same picture with other options: one run
        response = httpx.post(api, json={"image": served_subject, **fields}, timeout=150)
        assert response.status_code == 200
        assert response.json()["status"] == "success"
    samples = scrape(server)
    if mode_settings.broker_url:
        # Hits and misses are counted by the process that runs the model: a worker, which
        # serves no /metrics. The API node ran none; it shows the cache in the bucket it shares
        # with the test cluster's workers (entries from this session's earlier jobs too).
        assert value(samples, "alphacut_mask_cache_misses_total") == 0
        assert value(samples, "alphacut_mask_cache_hits_total") == 0
        assert value(samples, "alphacut_mask_cache_entries") >= 1
        assert value(samples, "alphacut_mask_cache_bytes") > 0
        return
    assert value(samples, "alphacut_mask_cache_misses_total") == 1
    assert value(samples, "alphacut_mask_cache_hits_total") == 1
    assert value(samples, "alphacut_mask_cache_entries") == 1
    assert value(samples, "alphacut_mask_cache_bytes") > 0
