"""A cluster of real processes: 2 API nodes (`alphacut serve`) and 3 workers (`alphacut
worker`), on PostgreSQL, Redis and the S3 bucket; then a worker process killed with SIGKILL
mid-job.

These tests get a database, a broker key prefix and a bucket prefix of their own, so the
session's shared cluster (tests/cluster.py) never sees their jobs.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from alphacut.config import load_settings
from alphacut.io.storage import open_storage
from alphacut.jobs.store import RUNNING, SUCCESS, SQLJobStore
from tests.cluster import Cluster, cluster_bucket, cluster_settings, settings_environment
from tests.conftest import free_port, requires_real_model, subject_image
from tests.jobhelpers import ServerProcess, WebhookReceiver, fetch, post, wait_done, wait_until
from tests.services import scratch_postgres_database


@pytest.fixture
def own_cluster(cluster_services, tmp_path, request) -> Iterator[Cluster]:
    database_server, broker = cluster_services
    from alphacut.jobs.database import create_database_engine
    from alphacut.jobs.migrate import upgrade_database

    with cluster_bucket(request) as storage, scratch_postgres_database(database_server) as url:
        engine = create_database_engine(url)
        upgrade_database(engine)
        engine.dispose()
        cluster = Cluster(cluster_settings(tmp_path, url, broker, **storage), tmp_path)
        try:
            yield cluster
        finally:
            cluster.stop_workers()


def start_api(cluster: Cluster, name: str) -> ServerProcess:
    server = ServerProcess(
        cluster.settings.home,
        cluster.folder / f"{name}.log",
        free_port(),
        env=settings_environment(cluster.settings),
    )
    return server


def test_two_api_nodes_and_three_workers_run_each_job_exactly_once(own_cluster, file_server):
    base, root = file_server
    subject_image()[0].save(root / "many.png")
    apis = [start_api(own_cluster, "api0"), start_api(own_cluster, "api1")]
    try:
        own_cluster.start_workers(3)
        for api in apis:
            api.wait_ready()

        def send(index: int) -> tuple[int, dict]:
            api = apis[index % 2]
            response = post(api.url, {"image": f"{base}/many.png", "track_id": index}, timeout=120)
            assert response.status_code == 200, response.text
            answer = response.json()
            if answer["status"] == "processing":
                answer = wait_done(api.url, answer["id"], timeout=120)
            return index % 2, answer

        with ThreadPoolExecutor(8) as threads:
            answers = list(threads.map(send, range(60)))
        assert all(answer["status"] == "success" for _, answer in answers), answers
        ids = [answer["id"] for _, answer in answers]
        assert len(set(ids)) == 60
        store = SQLJobStore(own_cluster.settings.database_url)
        try:
            jobs = [store.get(job_id) for job_id in ids]
        finally:
            store.close()
        assert all(job.status == SUCCESS and job.attempts == 1 for job in jobs)
        assert len({job.worker.rsplit(":", 1)[1] for job in jobs}) >= 2  # spread over workers
        outputs = [answer["output"][0] for _, answer in answers]
        assert len(set(outputs)) == 60
        for (origin, answer), output in zip(answers, outputs, strict=True):
            for api in apis:  # every output through both API nodes, fetch from either
                url = api.url + "/outputs/" + output.split("/outputs/", 1)[1]
                assert httpx.get(url).status_code == 200
                assert fetch(api.url, answer["id"]) == fetch(apis[origin].url, answer["id"])
    finally:
        for api in apis:
            api.stop()


def test_a_worker_killed_mid_job_loses_nothing(own_cluster, file_server):
    """SIGKILL to the pool process running a job: Celery rejects its message back onto the
    queue (acks_late + reject_on_worker_lost), the next process takes the job over, and it
    completes once; the webhook receiver sees at most ALPHACUT_WEBHOOK_ATTEMPTS deliveries."""
    base, root = file_server
    # Big enough, with matting, that the job is still running when the kill comes.
    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (2400, 3200, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "big.png")
    own_cluster.start_workers(2)
    store = SQLJobStore(own_cluster.settings.database_url)
    with WebhookReceiver() as receiver:
        from tests.conftest import LiveServer

        with LiveServer(own_cluster.settings) as api:
            body = {
                "image": f"{base}/big.png",
                "alpha_matting": True,
                "instant_response": True,
                "webhook": receiver.url,
            }
            job_id = post(api.url, body).json()["id"]
            wait_until(lambda: store.get(job_id).status == RUNNING, timeout=60, what="job running")
            victim = int(store.get(job_id).worker.rsplit(":", 1)[1])
            os.kill(victim, signal.SIGKILL)
            done = wait_done(api.url, job_id, timeout=120)
            assert done["status"] == "success", done
            job = store.get(job_id)
            assert job.attempts == 2 and int(job.worker.rsplit(":", 1)[1]) != victim
            assert open_storage(own_cluster.settings).exists(job.result["outputs"][0])
            wait_until(lambda: len(receiver.calls) >= 1, timeout=60, what="the webhook")
            time.sleep(2)  # a second delivery, if any, would come now
            calls = receiver.calls
            assert 1 <= len(calls) <= own_cluster.settings.webhook_attempts
            assert all(call["payload"]["id"] == job_id and call["verified"] for call in calls)
    store.close()


@pytest.mark.real_model
@requires_real_model
def test_the_real_model_through_a_celery_worker(own_cluster, file_server):
    base, root = file_server
    image, mask = subject_image(320, 240)
    image.save(root / "real.png")
    real = load_settings().model_dir
    own_cluster.settings = own_cluster.settings.model_copy(
        update={"model": "medium", "model_dir": real, "sync_wait": 120.0}
    )
    own_cluster.start_workers(1)
    from tests.conftest import LiveServer

    with LiveServer(own_cluster.settings) as api:
        answer = post(api.url, {"image": f"{base}/real.png"}).json()
        if answer["status"] == "processing":
            answer = wait_done(api.url, answer["id"], timeout=180)
        assert answer["status"] == "success", answer
        out = Image.open(io.BytesIO(httpx.get(answer["output"][0]).content))
        alpha = np.asarray(out)[..., 3] > 127
        assert (alpha & mask).sum() / (alpha | mask).sum() > 0.8
