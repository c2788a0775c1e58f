"""One job through an API node and a Celery worker, on the real services: PostgreSQL, Redis and
the S3 bucket."""

from __future__ import annotations

import httpx

from alphacut.io.s3 import S3Storage
from alphacut.jobs.store import worker_identity
from tests.conftest import subject_image
from tests.jobhelpers import fetch, post


def test_a_job_runs_on_a_worker_and_the_api_node_answers_success(
    live_server, shared_cluster, file_server, s3_service
):
    base, root = file_server
    subject_image()[0].save(root / "cluster-subject.png")
    server = live_server(shared_cluster.settings)
    response = post(server.url, {"image": f"{base}/cluster-subject.png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    assert httpx.get(body["output"][0]).status_code == 200
    assert fetch(server.url, body["id"]) == body
    job = server.state.store.get(body["id"])
    assert job.attempts == 1 and job.worker != worker_identity()  # another process ran it
    # The input reached the worker through the bucket, and the output is there, as in production.
    assert isinstance(server.state.storage, S3Storage)
    assert job.request["input_path"].startswith(f"s3://{s3_service.bucket}/")
    assert server.state.storage.exists(body["output"][0].split("/outputs/", 1)[1])
