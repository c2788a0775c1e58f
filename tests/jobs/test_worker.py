"""Jobs over real HTTP: "processing" answers, fetch, per-key limits, webhooks, base64/temp.

The fetch-path matrix runs on the tiny model (it is about routing, not pixels); everything
else runs on the real ISNet model, whose ~2 s (or more, on a busy CPU) per image is what
makes jobs outlive a short sync wait. One loaded model is shared by every server here.
"""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from alphacut.engine import Engine
from alphacut.jobs.store import RUNNING
from tests.conftest import LiveServer, real_settings, requires_real_model, subject_image
from tests.jobhelpers import (
    NOT_FOUND,
    PROCESSING_KEYS,
    SECRET,
    SUCCESS_KEYS,
    WebhookReceiver,
    fetch,
    post,
    submit_and_wait,
    wait_done,
    wait_until,
)

FETCH_BY_PATH = [
    "/api/v5/fetch/{id}",
    "/api/v3/fetch/{id}",
    "/api/v6/image_editing/fetch/{id}",
    "/api/v1/image_editing/fetch/{id}",
    "/api/v1/enterprise/image_editing/fetch/{id}",
]
FETCH_BY_BODY = ["/api/v4/dreambooth/fetch", "/api/v1/enterprise/fetch"]


@pytest.fixture
def subject_url(file_server) -> str:
    base, root = file_server
    subject_image()[0].save(root / "jobs-subject.png")
    return f"{base}/jobs-subject.png"


def assert_processing(body: dict, server_url: str) -> None:
    assert set(body) == PROCESSING_KEYS, body
    assert body["status"] == "processing" and isinstance(body["id"], int)
    assert isinstance(body["eta"], int | float) and body["eta"] > 0
    assert body["message"] == body["messege"] and body["message"] and body["tip"]
    assert body["fetch_result"] == f"{server_url}/api/v5/fetch/{body['id']}"
    assert body["output"] == [] and len(body["future_links"]) == 1
    assert body["future_links"][0].startswith(server_url + "/outputs/")
    assert body["future_links"][0].endswith(
        body["meta"]["file_prefix"].rsplit(".", 1)[0]
        + (".base64" if body["meta"]["base64"] == "yes" else ".png")
    )


def test_instant_response_and_every_fetch_path(live_server, mode_settings, subject_url):
    server = live_server(mode_settings, api_keys=("k1", "k2"))
    answer = post(server.url, {"key": "k1", "image": subject_url, "instant_response": True})
    assert answer.status_code == 200
    processing = answer.json()
    assert_processing(processing, server.url)  # even though the tiny model is done at once
    assert processing["meta"]["instant_response"] == "yes"
    job_id = processing["id"]
    done = wait_done(server.url, job_id, "k1")
    sync = submit_and_wait(server.url, {"key": "k1", "image": subject_url})
    assert set(done) == set(sync) == SUCCESS_KEYS  # fetch answers like a synchronous success
    assert done["output"] == processing["future_links"]
    # meta is the request's, plus what only the finished job knows (e.g. foreground)
    assert processing["meta"].items() <= done["meta"].items()
    assert httpx.get(done["output"][0]).headers["content-type"] == "image/png"

    for path in FETCH_BY_PATH:
        assert fetch(server.url, job_id, "k1", path) == done, path
        assert fetch(server.url, f" {job_id} ", "k1", path) == done, path
        assert fetch(server.url, job_id, "k2", path) == NOT_FOUND  # another key's job
        for unknown in [999999, "abc", 10**30, -1, 0]:
            assert fetch(server.url, unknown, "k1", path) == NOT_FOUND, (path, unknown)
    for path in FETCH_BY_BODY:
        for request_id in (job_id, str(job_id)):
            response = httpx.post(server.url + path, json={"key": "k1", "request_id": request_id})
            assert response.json() == done, (path, request_id)
        for key, request_id in [("k2", job_id), ("k1", 999999), ("k1", "nope")]:
            response = httpx.post(server.url + path, json={"key": key, "request_id": request_id})
            assert response.status_code == 200 and response.json() == NOT_FOUND
        missing = httpx.post(server.url + path, json={"key": "k1"})
        assert missing.status_code == 400 and missing.json()["status"] == "error"
    # Form bodies work for fetch too; a wrong key is a 401 like everywhere else.
    form = httpx.post(server.url + f"/api/v5/fetch/{job_id}", data={"key": "k1"})
    assert form.json() == done
    bad_key = httpx.post(server.url + f"/api/v5/fetch/{job_id}", json={"key": "nope"})
    assert bad_key.status_code == 401 and bad_key.json()["status"] == "error"


# --- real model -------------------------------------------------------------------------------


class _SharedEngine(Engine):
    """One loaded model for every server in this module: a server's stop must not close it."""

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def real_engine(tmp_path_factory):
    # No mask cache: these tests need jobs that take the model's time (queues, leases, drains);
    # with it, every repeat of the subject image would finish at once.
    settings = real_settings(tmp_path_factory.mktemp("engine-home"))
    engine = _SharedEngine(settings.model_copy(update={"cache_bytes": 0}))
    engine.runner()
    yield engine
    Engine.close(engine)


@pytest.fixture
def real_server(real_engine, tmp_path):
    """Factory: a server on the real model with ``overrides`` of the real settings."""
    servers: list[LiveServer] = []

    def start(**overrides: object) -> LiveServer:
        settings = real_settings(tmp_path / f"home{len(servers)}").model_copy(
            update={"webhook_secret": SECRET, **overrides}
        )
        servers.append(LiveServer(settings, real_engine).__enter__())
        return servers[-1]

    yield start
    for server in servers:
        server.__exit__(None, None, None)


real = pytest.mark.real_model


@real
@requires_real_model
def test_slow_job_answers_processing_then_fetch(real_server, subject_url):
    server = real_server(sync_wait=0.05)
    started = time.time()
    answer = post(server.url, {"image": subject_url, "seed": 7})
    assert answer.status_code == 200
    processing = answer.json()
    assert_processing(processing, server.url)
    assert processing["meta"]["instant_response"] == "no" and processing["meta"]["seed"] == 7
    # The event loop stays free while the model works: health checks answer promptly.
    latencies = []
    while server.state.store.get(processing["id"]).status != "success":
        t = time.time()
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        latencies.append(time.time() - t)
        time.sleep(0.05)
        assert time.time() - started < 180
    assert len(latencies) >= 3 and max(latencies) < 1.0, latencies
    seen: list[dict] = []
    done = wait_done(server.url, processing["id"], seen=seen)
    assert set(done) == SUCCESS_KEYS and done["output"] == processing["future_links"]
    png = httpx.get(done["output"][0])
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).mode == "RGBA"
    assert done["generationTime"] > 0.1


@real
@requires_real_model
def test_fetch_while_queued_and_running(real_server, subject_url):
    server = real_server(workers=1)
    first = post(server.url, {"image": subject_url, "instant_response": True}).json()
    second = post(server.url, {"image": subject_url, "instant_response": 1}).json()
    assert_processing(first, server.url)
    assert_processing(second, server.url)
    assert second["eta"] > first["eta"]  # one job ahead of it
    body = fetch(server.url, second["id"])
    assert set(body) == {"status", "id", "message", "eta", "output"}
    assert body["status"] == "processing" and body["output"] == [] and body["eta"] > 0
    for job in (first, second):
        done = wait_done(server.url, job["id"])
        assert done["status"] == "success" and done["output"] == job["future_links"]


@real
@requires_real_model
def test_per_key_queue_limit(real_server, subject_url):
    server = real_server(workers=1, max_queued_per_key=2, api_keys=("a", "b"))
    for _ in range(2):
        accepted = post(server.url, {"key": "a", "image": subject_url, "instant_response": True})
        assert accepted.json()["status"] == "processing"
    refused = post(server.url, {"key": "a", "image": subject_url, "instant_response": True})
    assert refused.status_code == 429
    body = refused.json()
    assert set(body) == {"status", "message", "retry_after"} and body["status"] == "error"
    assert isinstance(body["retry_after"], int) and body["retry_after"] >= 1
    assert refused.headers["Retry-After"] == str(body["retry_after"])
    other = post(server.url, {"key": "b", "image": subject_url, "instant_response": True})
    assert other.json()["status"] == "processing"  # the limit is per key
    assert server.state.store.pending_for_owner(server.state.owner_of("a")) == 2


@real
@requires_real_model
def test_webhook_retries_until_accepted(real_server, subject_url):
    server = real_server(webhook_backoff=0.2)
    with WebhookReceiver(fail_first=2) as receiver:
        answer = post(
            server.url,
            {
                "image": subject_url,
                "webhook": receiver.url,
                "track_id": "t-9",
                "instant_response": True,
            },
        ).json()
        assert fetch(server.url, answer["id"])["webhook_status"] in ("waiting", "pending")
        done = wait_done(server.url, answer["id"])
        wait_until(
            lambda: fetch(server.url, answer["id"])["webhook_status"] == "delivered",
            timeout=150,
            what="webhook delivery",
        )
    assert [call["answered"] for call in receiver.calls] == [500, 500, 200]
    assert all(call["verified"] for call in receiver.calls)
    attempts = server.state.store.get(answer["id"]).webhook_attempts
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 500), (2, 500), (3, 200)]
    gaps = [b["at"] - a["at"] for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.45  # 0.2 s then 0.6 s, minus 25% jitter
    done.pop("webhook_status")
    payload = receiver.calls[-1]["payload"]
    assert payload == {
        "status": "success",
        "id": answer["id"],
        "output": done["output"],
        "generationTime": done["generationTime"],
        "track_id": "t-9",
        "meta": done["meta"],
    }
    # The same payload every time: a receiver can retry-safely key on id.
    assert all(call["payload"] == payload for call in receiver.calls)


@real
@requires_real_model
def test_base64_and_temp_outputs(real_server, subject_url):
    server = real_server(temp_ttl=2, cleanup_interval=0.5)
    kept = submit_and_wait(server.url, {"image": subject_url, "base64": True})
    assert kept["meta"]["base64"] == "yes" and kept["output"][0].endswith(".base64")
    assert kept["output"][0] == f"{server.url}/outputs/{kept['meta']['file_prefix'][:-4]}.base64"
    text = httpx.get(kept["output"][0])
    assert text.headers["content-type"].startswith("text/plain")
    image = Image.open(io.BytesIO(base64.b64decode(text.content, validate=True)))
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (200, 150)

    temp = submit_and_wait(server.url, {"image": subject_url, "temp": "yes"})
    assert temp["meta"]["temp"] == "yes"
    assert temp["output"][0] == f"{server.url}/outputs/temp/{temp['meta']['file_prefix']}"
    path = server.settings.output_dir / "temp" / temp["meta"]["file_prefix"]
    assert path.is_file()
    wait_until(lambda: not path.exists(), timeout=30, what="temp output to expire")
    assert fetch(server.url, temp["id"]) == NOT_FOUND  # the row went with the file
    assert httpx.get(temp["output"][0]).status_code == 404
    time.sleep(1.0)  # a few more cleanup passes
    assert fetch(server.url, kept["id"]) == kept  # output_ttl 0: kept for ever
    assert httpx.get(kept["output"][0]).status_code == 200


@real
@requires_real_model
def test_inverse_mask(real_server, subject_url):
    server = real_server()

    def output(**fields: object) -> np.ndarray:
        body = submit_and_wait(server.url, {"image": subject_url, **fields})
        return np.asarray(Image.open(io.BytesIO(httpx.get(body["output"][0]).content)))

    mask = output(only_mask=True)
    _, truth = subject_image()
    assert ((mask > 127) == truth).mean() > 0.95  # a real mask, not a blank one
    assert np.array_equal(output(only_mask=True, inverse_mask=True), 255 - mask)
    cutout = output(inverse_mask="true")
    assert cutout.shape[2] == 4 and np.array_equal(cutout[..., 3], 255 - mask)


@real
@requires_real_model
def test_client_that_goes_away_keeps_its_job(real_server, subject_url):
    server = real_server(workers=1)
    blocker = post(server.url, {"image": subject_url, "instant_response": True}).json()
    # The next job waits behind the first, so this client gives up before it is done.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.url + "/api/v5/removebg_mask",
            json={"image": subject_url},
            timeout=httpx.Timeout(30, read=1.0),
        )
    gone_id = blocker["id"] + 1
    wait_until(lambda: server.state.store.get(gone_id) is not None, what="the job")
    assert server.state.store.get(gone_id).status != "success"
    done = wait_done(server.url, gone_id)
    assert done["status"] == "success" and httpx.get(done["output"][0]).status_code == 200


@real
@requires_real_model
def test_stop_lets_running_jobs_finish(real_engine, tmp_path, subject_url):
    """A graceful stop waits for the running job; the queued one stays queued for next time."""
    settings = real_settings(tmp_path / "home").model_copy(update={"workers": 1})
    server = LiveServer(settings, real_engine).__enter__()
    ids = [
        post(server.url, {"image": subject_url, "instant_response": True}).json()["id"]
        for _ in range(2)
    ]
    wait_until(lambda: server.state.store.get(ids[0]).status == RUNNING, what="a running job")
    store = server.state.store
    stopper = threading.Thread(target=server.__exit__, args=(None, None, None))
    stopper.start()
    stopper.join(timeout=150)
    assert [store.get(i).status for i in ids] == ["success", "queued"]
