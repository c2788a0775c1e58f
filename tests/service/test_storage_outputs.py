"""Outputs over HTTP with each storage: local folders (the default) and an S3 bucket (the real
SeaweedFS gateway of scripts/services.sh), served through /outputs/ or as presigned URLs.

The HTTP contract tests of test_routes.py and test_worker.py that touch outputs run here again
with S3 storage on an embedded server (their own embedded runs use local folders, their
distributed runs the cluster's bucket): this module's ``tiny_settings`` points them at a fresh
prefix of the bucket.
"""

from __future__ import annotations

import base64
import io
import shutil
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

import tests.jobs.test_worker as worker_tests
import tests.service.test_routes as routes_tests
from alphacut.config import Settings
from alphacut.engine import Engine
from alphacut.jobs import worker as worker_module
from alphacut.pipeline.options import make_options
from tests.conftest import PHOTOS, free_port, real_settings, requires_real_model, subject_image
from tests.jobhelpers import NOT_FOUND, fetch, post, submit_and_wait, wait_done, wait_until
from tests.s3helpers import STORAGES, FaultyS3Proxy, S3Service, s3_settings, with_storage

# --- the existing contract tests, with S3 storage ---------------------------------------------

_REUSED = {
    routes_tests: [
        "test_seed_body_gives_seed_shape",
        "test_only_mask_and_inverse",
        "test_data_uri_form_and_multipart",
        "test_unknown_route_is_json",
        "test_health",
    ],
    worker_tests: ["test_instant_response_and_every_fetch_path"],
}
for _module, _tests in _REUSED.items():
    # The tests named, and the fixtures and helpers they use (not the module's other tests).
    globals().update(
        {
            name: value
            for name, value in vars(_module).items()
            if not name.startswith(("_", "test_")) and name not in globals()
        }
    )
    globals().update({name: getattr(_module, name) for name in _tests})


@pytest.fixture
def tiny_settings(tiny_settings: Settings, s3_service: S3Service, s3_prefix: str) -> Settings:
    """The reused tests' settings, with outputs and inputs in the bucket."""
    return s3_settings(tiny_settings, s3_service, s3_prefix)


@pytest.fixture
def mode_settings(tiny_settings: Settings) -> Settings:
    """Only the embedded mode here: the reused tests' other modes run in their own modules."""
    return tiny_settings


# --- each storage -----------------------------------------------------------------------------


@pytest.fixture
def subject(file_server) -> str:
    base, root = file_server
    subject_image()[0].save(root / "storage-subject.png")
    return f"{base}/storage-subject.png"


@pytest.fixture
def local_tiny_settings(tmp_path, tiny_model_dir) -> Settings:
    """The conftest's tiny settings (this module's ``tiny_settings`` is S3's)."""
    return Settings(
        home=tmp_path / "home",
        model_dir=tiny_model_dir,
        model="tiny",
        url_allowlist=("127.0.0.1",),
        sync_wait=120.0,
        workers=2,
    )


@pytest.fixture(params=STORAGES)
def any_storage(request: pytest.FixtureRequest, local_tiny_settings: Settings) -> Settings:
    """Tiny-model settings with each storage."""
    return with_storage(request, local_tiny_settings)


def relative_of(url: str) -> str:
    return url.split("/outputs/", 1)[1]


def outputs_and_inputs(service: S3Service, prefix: str) -> list[str]:
    """The objects under ``prefix`` but the mask cache's (``_cache/``)."""
    return [key for key in service.keys(prefix) if not key.startswith(f"{prefix}/_cache/")]


def test_outputs_are_served_with_type_and_security_headers(live_server, any_storage, subject):
    server = live_server(any_storage)
    body = submit_and_wait(server.url, {"image": subject})
    served = httpx.get(body["output"][0])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert int(served.headers["content-length"]) == len(served.content)
    assert served.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in served.headers["content-security-policy"]
    assert Image.open(io.BytesIO(served.content)).size == (200, 150)
    assert server.state.storage.exists(relative_of(body["output"][0]))
    for missing in ("nope.png", "temp/nope.png", "../jobs.sqlite3", "_inputs/x.input", "a%00b"):
        answer = httpx.get(f"{server.url}/outputs/{missing}")
        assert answer.status_code == 404 and answer.json()["status"] == "error", missing


def test_base64_output(live_server, any_storage, subject):
    server = live_server(any_storage)
    body = submit_and_wait(server.url, {"image": subject, "base64": True})
    assert body["output"][0].endswith(".base64")
    text = httpx.get(body["output"][0])
    assert text.headers["content-type"].startswith("text/plain")
    image = Image.open(io.BytesIO(base64.b64decode(text.content, validate=True)))
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (200, 150)


def test_temp_outputs_expire(live_server, any_storage, subject):
    server = live_server(any_storage, temp_ttl=1.5, cleanup_interval=0.3)
    kept = submit_and_wait(server.url, {"image": subject, "only_mask": True})
    temp = submit_and_wait(server.url, {"image": subject, "temp": "yes"})
    relative = relative_of(temp["output"][0])
    assert relative == f"temp/{temp['meta']['file_prefix']}"
    assert server.state.storage.exists(relative)
    assert httpx.get(temp["output"][0]).status_code == 200
    wait_until(
        lambda: not server.state.storage.exists(relative), timeout=30, what="temp output expiry"
    )
    assert fetch(server.url, temp["id"]) == NOT_FOUND  # the row went with the output
    assert httpx.get(temp["output"][0]).status_code == 404
    assert fetch(server.url, kept["id"]) == kept  # output_ttl 0: kept for ever
    mask = Image.open(io.BytesIO(httpx.get(kept["output"][0]).content))
    assert mask.mode == "L"


# --- S3 only ----------------------------------------------------------------------------------


@pytest.fixture
def s3_tiny(local_tiny_settings, s3_service, s3_prefix) -> Settings:
    return s3_settings(local_tiny_settings, s3_service, s3_prefix)


def expires_in(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])


def test_presigned_urls_download_with_plain_httpx(live_server, s3_tiny, s3_service, subject):
    server = live_server(s3_tiny, output_urls="presigned", temp_ttl=600)
    kept = submit_and_wait(server.url, {"image": subject})
    url = kept["output"][0]
    assert url.startswith(s3_service.endpoint + "/") and "X-Amz-Signature=" in url
    assert expires_in(url) == 7 * 24 * 3600  # kept for ever: S3's longest
    image = httpx.get(url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).mode == "RGBA"

    temp = submit_and_wait(server.url, {"image": subject, "temp": True, "base64": True})
    assert 590 <= expires_in(temp["output"][0]) <= 600  # the output's lifetime
    text = httpx.get(temp["output"][0])
    assert text.headers["content-type"] == "text/plain"
    assert Image.open(io.BytesIO(base64.b64decode(text.content))).size == (200, 150)

    # future_links are presigned too, and work once the job is done.
    answer = post(server.url, {"image": subject, "instant_response": True}).json()
    done = wait_done(server.url, answer["id"])
    assert httpx.get(answer["future_links"][0]).content == httpx.get(done["output"][0]).content
    assert fetch(server.url, kept["id"])["output"][0].startswith(s3_service.endpoint)


def test_input_reaches_the_worker_through_the_bucket(
    live_server, s3_tiny, s3_service, s3_prefix, monkeypatch
):
    """A multipart upload (and a bg_image) is read back from the bucket by the worker: no
    decoded handoff, no inputs folder on this node."""
    monkeypatch.setattr(worker_module, "HANDOFF_MAX_PIXELS", 0)  # skip the in-process copy
    server = live_server(s3_tiny)
    shutil.rmtree(s3_tiny.home / "inputs", ignore_errors=True)
    image, mask = subject_image()
    png = io.BytesIO()
    image.save(png, format="PNG")
    red = io.BytesIO()
    Image.new("RGB", (200, 150), (255, 0, 0)).save(red, format="PNG")
    background = "data:image/png;base64," + base64.b64encode(red.getvalue()).decode()
    answer = httpx.post(
        server.url + "/api/v5/removebg_mask",
        data={"bg_image": background},
        files={"image": ("s.png", png.getvalue(), "image/png")},
        timeout=150,
    )
    body = answer.json()
    assert body["status"] == "success", body
    out = np.asarray(Image.open(io.BytesIO(httpx.get(body["output"][0]).content)).convert("RGB"))
    assert np.abs(out[~mask].astype(int) - (255, 0, 0)).max() < 40  # the background from S3
    assert np.abs(out[mask].mean(0) - (235, 220, 210)).max() < 5  # the subject from S3
    assert not (s3_tiny.home / "inputs").exists()
    assert s3_service.keys(f"{s3_prefix}/_inputs/") == []  # deleted once the job ended


def test_unreachable_s3_fails_the_job_clearly_and_serves_nothing(
    live_server, s3_tiny, s3_service, s3_prefix, subject, short_storage_retries
):
    """Connections carrying an output PUT are cut: the write is retried, the job is tried
    again (shortened here) for as long as the storage may come back, then it fails with a
    clear message, and no output exists or is served."""
    output_put = rb"^PUT /[^ ]*/outputs/[0-9a-f-]+\.png "
    with FaultyS3Proxy(s3_service.endpoint, output_put) as proxy:
        server = live_server(s3_tiny, s3_endpoint_url=proxy.endpoint)
        server.state.storage.backoff = 0.1
        answer = post(server.url, {"image": subject, "instant_response": True}).json()
        failed = wait_done(server.url, answer["id"])
        # Each try of the job: the first PUT and three retries; the job tried again.
        assert proxy.cuts >= 8 and proxy.cuts % 4 == 0, proxy.cuts
    assert failed["status"] == "failed"
    message = failed["message"]
    assert "output storage" in message and "unreachable" in message
    assert "after 4 attempts" in message and "write the output" in message
    assert "gave up after retrying" in message
    assert httpx.get(answer["future_links"][0]).status_code == 404
    assert outputs_and_inputs(s3_service, s3_prefix) == []  # no output, and the input is gone
    job = server.state.store.get(answer["id"])
    assert job.error_status == 503 and job.result is None


def test_unreachable_s3_at_the_api_node(live_server, s3_tiny, subject):
    """Nothing answers at the endpoint: readiness says why, and a request gets a JSON 503
    (its upload cannot be stored), not a job that can never run."""
    server = live_server(s3_tiny, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    server.state.storage.backoff = 0.05
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 503 and "output storage unreachable" in ready.json()["message"]
    assert httpx.get(server.url + "/healthz").status_code == 200  # alive, though not ready
    answer = post(server.url, {"image": subject})
    assert answer.status_code == 503 and "unreachable" in answer.json()["message"]
    assert answer.json()["retry_after"] == 5 and answer.headers["Retry-After"] == "5"
    assert "Traceback" not in answer.text
    assert not any(server.state.store.count_by_status().values())  # no job was created


def test_readyz_checks_the_bucket(live_server, s3_tiny):
    server = live_server(s3_tiny)
    assert httpx.get(server.url + "/readyz").json() == {"status": "ok"}


@pytest.mark.real_model
@requires_real_model
def test_real_model_photo_with_s3_storage(live_server, tmp_path, s3_service, s3_prefix):
    settings = s3_settings(real_settings(tmp_path / "home"), s3_service, s3_prefix)
    server = live_server(settings)
    photo = (PHOTOS / "animal-1.jpg").read_bytes()
    started = time.time()
    body = httpx.post(
        server.url + "/api/v5/removebg_mask",
        files={"image": ("animal-1.jpg", photo, "image/jpeg")},
        timeout=300,
    ).json()
    assert body["status"] == "success", body
    key = f"{s3_prefix}/{relative_of(body['output'][0])}"
    assert outputs_and_inputs(s3_service, s3_prefix) == [key]  # the output, no leftover input
    cutout = Image.open(io.BytesIO(httpx.get(body["output"][0], timeout=60).content))
    original = Image.open(io.BytesIO(photo))
    assert cutout.mode == "RGBA" and cutout.size == original.size
    alpha = np.asarray(cutout)[..., 3]
    # A real subject: some of the picture kept, some removed, edges in between.
    assert 0.05 < (alpha > 127).mean() < 0.95
    assert time.time() - started < 300


@pytest.mark.real_model
@requires_real_model
def test_real_model_repeat_request_hits_the_cache_in_the_bucket(
    live_server, tmp_path, s3_service, s3_prefix
):
    """With S3 storage the maps are kept in the bucket: a repeat request for the photo with
    another option skips the model and gives the mask an uncached run gives."""
    settings = s3_settings(real_settings(tmp_path / "home"), s3_service, s3_prefix)
    server = live_server(settings)
    photo = (PHOTOS / "animal-1.jpg").read_bytes()

    def ask(**fields: object) -> bytes:
        body = httpx.post(
            server.url + "/api/v5/removebg_mask",
            data={name: str(value).lower() for name, value in fields.items()},
            files={"image": ("animal-1.jpg", photo, "image/jpeg")},
            timeout=300,
        ).json()
        assert body["status"] == "success", body
        return httpx.get(body["output"][0], timeout=60).content

    ask()
    assert len(s3_service.keys(f"{s3_prefix}/_cache/masks/")) == 1
    mask = np.asarray(Image.open(io.BytesIO(ask(only_mask=True))))
    engine = server.state.engine
    assert engine.mask_cache is not None and engine.mask_cache.stats().hits == 1
    assert engine.runner().items_run == 1  # the model ran for the first request only
    assert not (settings.home / "cache" / "masks").exists()

    uncached = Engine(settings.model_copy(update={"cache_bytes": 0}), warm_up=False)
    try:
        assert uncached.mask_cache is None
        plain = uncached.remove(photo, make_options(only_mask=True)).output
    finally:
        uncached.close()
    assert mask.tobytes() == np.asarray(plain).tobytes()
