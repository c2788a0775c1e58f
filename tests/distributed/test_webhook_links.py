"""Webhooks sent by a cluster's workers link to outputs as the API nodes do: with S3 storage
and ALPHACUT_OUTPUT_URLS=presigned, the payload carries presigned URLs (on the real services:
PostgreSQL, Redis, SeaweedFS)."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import httpx
from PIL import Image

import tests.distributed.test_cluster_processes as cluster_processes
from tests import s3helpers
from tests.conftest import subject_image
from tests.jobhelpers import WebhookReceiver, post, wait_until
from tests.s3helpers import s3_settings

# Fixtures: pytest finds them among a test module's attributes.
own_cluster = cluster_processes.own_cluster
s3_service = s3helpers.s3_service
s3_prefix = s3helpers.s3_prefix

JOBS = Path(__file__).resolve().parents[2] / "src" / "alphacut" / "jobs"


def test_the_workers_webhook_carries_presigned_links(
    own_cluster, s3_service, s3_prefix, live_server, file_server
):
    base, root = file_server
    subject_image()[0].save(root / "webhook-presigned.png")
    own_cluster.settings = s3_settings(
        own_cluster.settings, s3_service, s3_prefix, output_urls="presigned"
    )
    own_cluster.start_workers(1)
    server = live_server(own_cluster.settings)
    with WebhookReceiver() as receiver:
        body = {"image": f"{base}/webhook-presigned.png", "webhook": receiver.url}
        response = post(server.url, body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["status"] == "success", answer
        wait_until(lambda: len(receiver.calls) >= 1, timeout=60, what="the webhook")
        call = receiver.calls[0]
    assert call["verified"] and call["payload"]["status"] == "success"
    assert call["payload"]["id"] == answer["id"]
    url = call["payload"]["output"][0]
    # The bucket's own URL, signed: not /outputs/ on the API node.
    assert url.startswith(s3_service.endpoint + "/") and "X-Amz-Signature=" in url, url
    image = httpx.get(url)  # plain httpx, no credentials
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).mode == "RGBA"
    assert image.content == httpx.get(answer["output"][0]).content  # the answer's output


def test_the_job_layer_does_not_import_the_service():
    """Layering: nothing below service/ knows HTTP (the webhook task used to import it)."""
    for path in JOBS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(name.startswith("alphacut.service") for name in names), path
