"""Routing: which queue, cpu or gpu, an API node sends a job to (``ALPHACUT_DEFAULT_QUEUE``,
``auto`` by default), from the workers' announcements on a real Redis; and a job that a gpu
worker alone can run, sent through HTTP, run by it."""

from __future__ import annotations

import pytest
from redis import Redis

import tests.distributed.test_cluster_processes as cluster_processes
import tests.distributed.test_worker_models as worker_models_tests
from alphacut.config import Settings
from alphacut.errors import InvalidRequest, SettingsError
from alphacut.jobs.worker_models import ClusterModels, WorkerAnnouncement, announce, withdraw
from tests.cluster import Cluster
from tests.conftest import subject_image
from tests.jobhelpers import post, wait_done

own_cluster = cluster_processes.own_cluster  # fixtures: a cluster of its own, a Redis prefix
redis_prefix = worker_models_tests.redis_prefix


def routed(broker: Redis, prefix: str, queue: str, model: str, tmp_path) -> str:
    """The queue a fresh node (no cached announcements) with ``queue`` picks for ``model``."""
    return ClusterModels(broker, prefix, queue, tmp_path / "models").queue_for(model)


def wait_in(broker: Redis, prefix: str, queue: str, messages: int) -> None:
    """``messages`` fake messages waiting in ``queue``'s Redis list (the key is cleaned up
    with the prefix)."""
    broker.rpush(prefix + queue, *[f"waiting-{i}" for i in range(messages)])


def test_auto_is_the_default_and_a_worker_without_queue_takes_cpu():
    assert Settings().default_queue == "auto"
    assert Settings().worker_queue == "cpu"
    assert Settings(default_queue="gpu").worker_queue == "gpu"
    from alphacut.jobs.celery_app import create_celery

    app = create_celery(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert app.conf.task_default_queue == "cpu"  # never a queue named "auto"


def test_an_unknown_queue_setting_names_the_choices(monkeypatch):
    from alphacut.config import load_settings

    monkeypatch.setenv("ALPHACUT_DEFAULT_QUEUE", "tpu")
    with pytest.raises(SettingsError, match="ALPHACUT_DEFAULT_QUEUE='tpu'.*'auto', 'cpu' or 'gpu'"):
        load_settings()


def test_no_live_worker_sends_the_job_to_cpu_to_wait(redis_prefix, tmp_path):
    broker, prefix = redis_prefix
    assert routed(broker, prefix, "auto", "medium", tmp_path) == "cpu"


def test_a_model_only_gpu_workers_have_goes_to_gpu(redis_prefix, tmp_path):
    broker, prefix = redis_prefix
    announce(broker, prefix, WorkerAnnouncement("cpu-1@a", "cpu", ("small",)))
    announce(broker, prefix, WorkerAnnouncement("gpu-1@b", "gpu", ("medium", "small")))
    wait_in(broker, prefix, "gpu", 50)  # however busy: the cpu workers cannot run it
    assert routed(broker, prefix, "auto", "medium", tmp_path) == "gpu"
    # And one only cpu workers have goes to cpu; one nobody has waits on cpu.
    announce(broker, prefix, WorkerAnnouncement("cpu-1@a", "cpu", ("small", "tiny")))
    assert routed(broker, prefix, "auto", "tiny", tmp_path) == "cpu"
    assert routed(broker, prefix, "auto", "large", tmp_path) == "cpu"


def test_a_gpu_only_cluster_keeps_its_jobs_on_gpu_while_every_worker_restarts(
    redis_prefix, tmp_path
):
    broker, prefix = redis_prefix
    announce(broker, prefix, WorkerAnnouncement("gpu-1@b", "gpu", ("medium",)))
    withdraw(broker, prefix, "gpu-1@b")  # stopped: no live worker at all now
    assert routed(broker, prefix, "auto", "medium", tmp_path) == "gpu"
    # Once a cpu worker was ever seen too, a job no live worker has waits on cpu.
    announce(broker, prefix, WorkerAnnouncement("cpu-1@a", "cpu", ("small",)))
    withdraw(broker, prefix, "cpu-1@a")
    assert routed(broker, prefix, "auto", "medium", tmp_path) == "cpu"


def test_a_model_both_queues_have_goes_to_the_emptier(redis_prefix, tmp_path):
    broker, prefix = redis_prefix
    announce(broker, prefix, WorkerAnnouncement("cpu-1@a", "cpu", ("small",)))
    announce(broker, prefix, WorkerAnnouncement("cpu-2@a", "cpu", ("small",)))
    announce(broker, prefix, WorkerAnnouncement("gpu-1@b", "gpu", ("small",)))
    assert routed(broker, prefix, "auto", "small", tmp_path) == "gpu"  # both empty: a tie
    wait_in(broker, prefix, "gpu", 2)
    assert routed(broker, prefix, "auto", "small", tmp_path) == "cpu"  # 0 per worker < 2
    wait_in(broker, prefix, "cpu", 4)
    assert routed(broker, prefix, "auto", "small", tmp_path) == "gpu"  # 2 per worker: a tie
    wait_in(broker, prefix, "cpu", 1)
    assert routed(broker, prefix, "auto", "small", tmp_path) == "gpu"  # 2.5 per worker > 2
    wait_in(broker, prefix, "gpu", 1)
    assert routed(broker, prefix, "auto", "small", tmp_path) == "cpu"  # 2.5 < 3


@pytest.mark.parametrize("pinned", ["cpu", "gpu"])
def test_a_pinned_queue_takes_every_job(redis_prefix, tmp_path, pinned):
    broker, prefix = redis_prefix
    assert routed(broker, prefix, pinned, "medium", tmp_path) == pinned  # no worker at all
    announce(broker, prefix, WorkerAnnouncement("cpu-1@a", "cpu", ("small",)))
    announce(broker, prefix, WorkerAnnouncement("gpu-1@b", "gpu", ("medium",)))
    wait_in(broker, prefix, pinned, 10)
    for model in ("small", "medium"):
        assert routed(broker, prefix, pinned, model, tmp_path) == pinned


def test_auto_accepts_a_model_a_live_worker_of_either_queue_has(redis_prefix, tmp_path):
    broker, prefix = redis_prefix
    announce(broker, prefix, WorkerAnnouncement("cpu-1@a", "cpu", ("small",)))
    announce(broker, prefix, WorkerAnnouncement("gpu-1@b", "gpu", ("medium",)))
    models = ClusterModels(broker, prefix, "auto", tmp_path / "models")
    models.check("small")
    models.check("medium")
    with pytest.raises(InvalidRequest, match="'u2net' is not installed on any live worker of any"):
        models.check("u2net")  # known to the registry, on no live worker


def test_a_job_for_a_model_only_a_gpu_worker_has_is_run_by_it(
    own_cluster: Cluster, live_server, file_server
):
    base, root = file_server
    subject_image()[0].save(root / "routing.png")
    own_cluster.start_workers(1, queue="gpu")  # the cluster's only worker
    assert own_cluster.settings.default_queue == "auto"
    server = live_server(own_cluster.settings)
    answer = post(server.url, {"image": f"{base}/routing.png", "instant_response": True})
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["id"]
    assert wait_done(server.url, job_id, timeout=120)["status"] == "success"
    job = server.state.store.get(job_id)
    assert job.request["queue"] == "gpu"
    log = own_cluster.workers[0].log.read_text()
    assert "alphacut worker: queues gpu,ops" in log
