"""API nodes of a cluster need no model file: they accept a model that a live worker of their
queue announces on the broker (on the real services: PostgreSQL, Redis, worker processes)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import httpx
import pytest
from redis import Redis

import tests.distributed.test_cluster_processes as cluster_processes
from alphacut.errors import InvalidRequest
from alphacut.jobs.worker_models import (
    ClusterModels,
    WorkerAnnouncement,
    announce,
    live_workers,
    withdraw,
    workers_key,
)
from tests.cluster import find_redis
from tests.conftest import subject_image, write_tiny_model
from tests.jobhelpers import post, wait_done, wait_until

own_cluster = cluster_processes.own_cluster  # a fixture: a database and broker prefix of its own


@pytest.fixture
def redis_prefix() -> Iterator[tuple[Redis, str]]:
    server, why = find_redis()
    if server is None:
        pytest.skip(f"DISTRIBUTED MODE NOT TESTED: {why}")
    broker = Redis.from_url(f"{server}/0")
    prefix = f"test-{secrets.token_hex(4)}:"
    yield broker, prefix
    for key in broker.scan_iter(match=f"{prefix}*"):
        broker.delete(key)
    broker.close()


def test_announcements_expire_with_their_worker(redis_prefix):
    broker, prefix = redis_prefix
    announce(broker, prefix, WorkerAnnouncement("w1@a", "cpu", ("tiny",)), ttl=1)
    announce(broker, prefix, WorkerAnnouncement("w2@b", "gpu", ("medium", "tiny")), ttl=30)
    assert {w.name for w in live_workers(broker, prefix)} == {"w1@a", "w2@b"}
    time.sleep(1.5)  # w1 stopped beating: Redis expired its key
    assert live_workers(broker, prefix) == [WorkerAnnouncement("w2@b", "gpu", ("medium", "tiny"))]
    assert broker.smembers(workers_key(prefix)) == {b"w2@b"}  # the dead name was dropped
    withdraw(broker, prefix, "w2@b")
    assert live_workers(broker, prefix) == []


def test_the_api_nodes_check_by_queue(redis_prefix, tmp_path):
    broker, prefix = redis_prefix
    empty = tmp_path / "models"  # the API node has no model file
    models = ClusterModels(broker, prefix, "cpu", empty)
    # No live worker on the queue: a model the registry knows waits for one; others do not.
    models.check("medium")
    with pytest.raises(InvalidRequest, match="unknown model 'tiny'"):
        models.check("tiny")
    announce(broker, prefix, WorkerAnnouncement("gpu@a", "gpu", ("tiny",)))
    models._read_at = -float("inf")  # skip the cache's few seconds
    with pytest.raises(InvalidRequest, match="unknown model 'tiny'"):
        models.check("tiny")  # a gpu worker does not run this node's (cpu) jobs
    announce(broker, prefix, WorkerAnnouncement("cpu@a", "cpu", ("tiny",)))
    models._read_at = -float("inf")
    models.check("tiny")
    with pytest.raises(InvalidRequest) as refused:
        models.check("medium")
    assert refused.value.status_code == 422
    assert refused.value.message == (
        "model 'medium' is not installed on any live worker of the 'cpu' queue "
        "(installed there: tiny)"
    )
    with pytest.raises(InvalidRequest, match="unknown model 'nope'; known models: .*tiny"):
        models.check("nope")
    write_tiny_model(empty, "local")  # installed on the API node itself: accepted
    models.check("local")


def test_an_api_node_without_the_model_file_runs_jobs_on_workers(
    own_cluster, live_server, file_server, tmp_path
):
    base, root = file_server
    subject_image()[0].save(root / "no-model-here.png")
    api_models = tmp_path / "api-models"
    api_models.mkdir()
    server = live_server(own_cluster.settings, model_dir=api_models)
    image = f"{base}/no-model-here.png"

    # No worker yet: a model the registry knows is queued for one; the tiny test model is
    # known only where its side-car is, so it is refused for now.
    waiting = post(server.url, {"image": image, "model": "medium", "instant_response": True})
    assert waiting.status_code == 200 and waiting.json()["status"] == "processing", waiting.text
    refused = post(server.url, {"image": image})
    assert refused.status_code == 422 and "unknown model 'tiny'" in refused.json()["message"]

    own_cluster.start_workers(1)  # it has the tiny model only
    # The worker takes the queued job and fails it, saying why (no crash, nothing lost).
    failed = wait_done(server.url, waiting.json()["id"], timeout=60)
    assert failed["status"] == "failed", failed
    assert failed["message"].startswith(
        "model 'medium' is not installed on the worker that took this job (queue 'cpu')"
    )

    def accepted() -> bool:  # once the node's cached view of the workers is renewed
        return post(server.url, {"image": image, "instant_response": True}).status_code == 200

    wait_until(accepted, timeout=15, what="the worker's announcement")
    answer = post(server.url, {"image": image})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "success" and body["meta"]["model"] == "tiny", body
    assert httpx.get(body["output"][0]).status_code == 200

    medium = post(server.url, {"image": image, "model": "medium"})
    assert medium.status_code == 422
    assert medium.json()["message"] == (  # ALPHACUT_DEFAULT_QUEUE=auto: either queue
        "model 'medium' is not installed on any live worker of any queue (installed there: tiny)"
    )
    assert server.state.pool.live_workers() == 1
