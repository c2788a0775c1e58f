"""Which models the live workers of a cluster have: workers announce them on the broker, API
nodes check a request's model against them.

Each ``alphacut worker`` writes ``{prefix}alphacut:worker:<name>`` (JSON: its queue and the
models installed in its model folder) with a ``ANNOUNCE_TTL`` expiry, refreshed every
``ANNOUNCE_INTERVAL`` seconds by a heartbeat thread, and adds its name to the set
``{prefix}alphacut:workers``. A worker that dies stops refreshing and its key expires: Redis
itself decides who is alive, so the machines' clocks do not matter. Readers drop the names
whose key is gone from the set.

An API node of a cluster loads no model: it accepts a model that is installed on it or that a
live worker of its queue announces (with ``ALPHACUT_DEFAULT_QUEUE=auto``, of either queue).
When no live worker takes its queue, it accepts any model its registry knows, and the job
waits in the queue for a worker (which fails it, saying so, if it lacks the model).

The same announcements route each job (``ClusterModels.queue_for``): a pinned queue (``cpu``
or ``gpu``) takes every job; ``auto`` sends a job to the queue whose live workers have its
model, to the one with fewer waiting messages per live worker when both have it (gpu on a
tie), and when no live worker has it, to the only queue the cluster's workers take (live ones,
or with none live, any ever announced), else to ``cpu`` (the job waits there for one).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from alphacut.config import AUTO_QUEUE, IMAGE_QUEUES
from alphacut.errors import InvalidRequest
from alphacut.health import remove_heartbeat, write_heartbeat
from alphacut.models.registry import known_models, resolve_model

log = logging.getLogger(__name__)

# Seconds between a worker's announcements, and how long one lives without being refreshed.
ANNOUNCE_INTERVAL = 10.0
ANNOUNCE_TTL = 30
# How long an API node reuses what it read of the announcements.
CHECK_CACHE_SECONDS = 5.0
# The queue a job goes to when no live worker has its model; and the queue of a tie between
# the two (a GPU runs a job many times faster).
FALLBACK_QUEUE, PREFERRED_QUEUE = IMAGE_QUEUES
# Redis list keys of a kombu queue: the queue itself and its priority sub-queues.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def workers_key(prefix: str) -> str:
    return f"{prefix}alphacut:workers"


def served_queues_key(prefix: str) -> str:
    """The queues any worker of the cluster ever announced (no expiry): where a job goes
    while no worker is live, during a restart of every worker."""
    return f"{prefix}alphacut:served-queues"


def worker_key(prefix: str, name: str) -> str:
    return f"{prefix}alphacut:worker:{name}"


def installed_models(model_dir: Path) -> list[str]:
    """The models this machine can run: known to the registry, with their file present."""
    return sorted(
        name for name, spec in known_models(model_dir).items() if spec.is_installed(model_dir)
    )


@dataclass(frozen=True)
class WorkerAnnouncement:
    name: str  # the Celery node name, alphacut-<queue>-<pid>@<host>
    queue: str  # the queue it takes images from: cpu or gpu
    models: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "queue": self.queue, "models": list(self.models)})

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerAnnouncement:
        data = json.loads(raw)
        return cls(str(data["name"]), str(data["queue"]), tuple(map(str, data["models"])))


def announce(
    broker: Redis, prefix: str, worker: WorkerAnnouncement, ttl: int = ANNOUNCE_TTL
) -> None:
    with broker.pipeline() as pipe:
        pipe.set(worker_key(prefix, worker.name), worker.to_json(), ex=ttl)
        pipe.sadd(workers_key(prefix), worker.name)
        pipe.expire(workers_key(prefix), ttl)  # the set goes too when every worker is gone
        pipe.sadd(served_queues_key(prefix), worker.queue)
        pipe.execute()


def withdraw(broker: Redis, prefix: str, name: str) -> None:
    with broker.pipeline() as pipe:
        pipe.delete(worker_key(prefix, name))
        pipe.srem(workers_key(prefix), name)
        pipe.execute()


def live_workers(broker: Redis, prefix: str) -> list[WorkerAnnouncement]:
    """The workers whose announcement has not expired (blocking: two round trips)."""
    members = broker.smembers(workers_key(prefix))
    names = sorted(name.decode() if isinstance(name, bytes) else str(name) for name in members)
    if not names:
        return []
    values = broker.mget([worker_key(prefix, name) for name in names])
    alive = []
    for name, raw in zip(names, values, strict=True):
        if raw is None:
            broker.srem(workers_key(prefix), name)  # expired: that worker is gone
            continue
        try:
            alive.append(WorkerAnnouncement.from_json(raw))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed worker announcement %r", name)
    return alive


def queue_backlog(broker: Redis, prefix: str, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue: Redis list lengths, in one round trip (blocking)."""
    names = list(queues)
    with broker.pipeline(transaction=False) as pipe:
        for queue in names:
            for suffix in _PRIORITY_SUFFIXES:
                pipe.llen(prefix + queue + suffix)
        lengths = [int(length) for length in pipe.execute()]
    per_queue = len(_PRIORITY_SUFFIXES)
    return {
        queue: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, queue in enumerate(names)
    }


class WorkerHeartbeat:
    """A worker's announcement, refreshed by a daemon thread until ``stop``. The models are
    listed again at each beat, so one pulled while the worker runs is announced."""

    def __init__(
        self,
        broker: Redis,
        prefix: str,
        name: str,
        queue: str,
        model_dir: Path,
        interval: float = ANNOUNCE_INTERVAL,
        health_file: Path | None = None,
    ) -> None:
        self.broker = broker
        self.prefix = prefix
        self.name = name
        self.queue = queue
        self.model_dir = model_dir
        self.interval = interval
        # The container's health check reads it (alphacut.health): rewritten at every beat.
        self.health_file = health_file
        self._health_failed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alphacut-heartbeat", daemon=True)

    def beat(self) -> None:
        models = tuple(installed_models(self.model_dir))
        announce(self.broker, self.prefix, WorkerAnnouncement(self.name, self.queue, models))

    def start(self) -> None:
        """Announce now (so the worker is known once it reports ready), then keep it alive."""
        self._beat_logged()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.health_file is not None:
            remove_heartbeat(self.health_file)
        try:
            withdraw(self.broker, self.prefix, self.name)
        except Exception:  # the key expires by itself
            log.warning("could not withdraw the announcement of %s", self.name, exc_info=True)

    def _beat_logged(self) -> None:
        announced = True
        try:
            self.beat()
        except Exception:  # the broker is down: the next beat tries again
            announced = False
            log.warning("could not announce this worker's models", exc_info=True)
        self._write_health(announced)

    def _write_health(self, announced: bool) -> None:
        """The heartbeat file, whether or not the broker answered: the process is alive."""
        if self.health_file is None:
            return
        try:
            write_heartbeat(self.health_file, self.name, self.queue, announced)
            self._health_failed = False
        except OSError as exc:
            if not self._health_failed:  # once, not every beat
                log.warning("could not write the heartbeat file %s: %s", self.health_file, exc)
            self._health_failed = True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat_logged()


class ClusterModels:
    """An API node's check of a request's model against its own folder and the live workers
    of the queue its jobs go to (the announcements read at most every few seconds), and the
    choice of that queue (``queue``: cpu, gpu, or auto for either)."""

    def __init__(self, broker: Redis, prefix: str, queue: str, model_dir: Path) -> None:
        self.broker = broker
        self.prefix = prefix
        self.queue = queue
        self.model_dir = model_dir
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._workers: list[WorkerAnnouncement] = []

    def workers(self) -> list[WorkerAnnouncement]:
        """Every live worker, all queues (cached; blocking: call it off the event loop)."""
        with self._lock:
            if time.monotonic() - self._read_at >= CHECK_CACHE_SECONDS:
                try:
                    self._workers = live_workers(self.broker, self.prefix)
                except Exception as exc:  # the broker is down: sending the job will say so
                    log.warning("could not read the workers' announcements: %s", exc)
                    self._workers = []
                self._read_at = time.monotonic()
            return self._workers

    def serving(self) -> list[WorkerAnnouncement]:
        """The live workers that could take this node's jobs: those of its queue (auto: all)."""
        return [
            worker
            for worker in self.workers()
            if worker.queue == self.queue or self.queue == AUTO_QUEUE
        ]

    def check(self, model: str) -> None:
        """Raise ``InvalidRequest`` (422) unless a job for ``model`` can run in this cluster:
        installed here or on a live worker of the queue; with no live worker on the queue,
        any model the registry knows (the job waits for a worker)."""
        serving = self.serving()
        if any(model in worker.models for worker in serving):
            return
        local = known_models(self.model_dir)
        spec = local.get(model)
        if spec is not None and spec.is_installed(self.model_dir):
            return
        if not serving:
            resolve_model(model, self.model_dir)  # "unknown model ..." if not even known
            return
        announced = sorted({name for worker in serving for name in worker.models})
        if spec is None:
            known = ", ".join(sorted(set(local) | set(announced)))
            raise InvalidRequest(f"unknown model {model!r}; known models: {known}")
        where = "any queue" if self.queue == AUTO_QUEUE else f"the {self.queue!r} queue"
        raise InvalidRequest(
            f"model {model!r} is not installed on any live worker of {where} "
            f"(installed there: {', '.join(announced) or 'none'})"
        )

    def queue_for(self, model: str) -> str:
        """The queue a job for ``model`` goes to (blocking: reads the broker when both queues
        could take it). Pinned: that queue. Auto: the queue whose live workers have the
        model; of two, the one with fewer waiting messages per live worker (gpu on a tie);
        when no live worker has it, the only queue workers take (live, or announced before),
        else cpu."""
        if self.queue != AUTO_QUEUE:
            return self.queue
        having: dict[str, int] = {}  # queue -> live workers of it that have the model
        workers = self.workers()
        for worker in workers:
            if model in worker.models:
                having[worker.queue] = having.get(worker.queue, 0) + 1
        if not having:
            # No live worker has it (every worker restarting, say): the only queue workers
            # take (a GPU-only cluster), live or announced before, else cpu; the job waits.
            serving = {worker.queue for worker in workers} or self._served_queues()
            return serving.pop() if len(serving) == 1 else FALLBACK_QUEUE
        if len(having) == 1:
            return next(iter(having))
        try:
            backlog = queue_backlog(self.broker, self.prefix, having)
        except Exception as exc:  # the broker is down: sending the job will say so
            log.warning("could not read the queues' lengths: %s", exc)
            backlog = dict.fromkeys(having, 0)
        return min(
            having,
            key=lambda queue: (backlog[queue] / having[queue], queue != PREFERRED_QUEUE),
        )

    def _served_queues(self) -> set[str]:
        try:
            members = self.broker.smembers(served_queues_key(self.prefix))
        except Exception as exc:  # the broker is down: sending the job will say so
            log.warning("could not read the served queues: %s", exc)
            return set()
        return {queue.decode() if isinstance(queue, bytes) else str(queue) for queue in members}


def missing_on_worker(model: str, model_dir: Path, queue: str) -> str | None:
    """Why a worker cannot run a job for ``model`` (its file is not here), or None."""
    spec = known_models(model_dir).get(model)
    if spec is not None and spec.is_installed(model_dir):
        return None
    return (
        f"model {model!r} is not installed on the worker that took this job (queue {queue!r}); "
        "every worker of a queue needs the models its API nodes accept"
    )
