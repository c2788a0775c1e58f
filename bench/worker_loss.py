"""Recovery after a whole worker dies (issue 19): how long a job it was running takes to be
claimed again and to finish, after a SIGKILL of a worker that does not hold the beat lock and
after one of the beat's holder; and how long a message it held unstarted takes.

```sh
eval "$(scripts/services.sh start)"   # PostgreSQL, Redis (the machine's own)
.venv/bin/python bench/worker_loss.py              # ~15 min on 2 busy cores
.venv/bin/python bench/worker_loss.py --trials 1 --scenarios worker
```

A cluster of 3 ``alphacut worker --concurrency 1`` processes (tiny model, every worker with
the beat) and one API node, on PostgreSQL, Redis and a local output folder. Each trial sends
3 slow jobs (matting on a 1200x1600 picture), waits until the victim runs one, SIGKILLs the
victim and all its processes (as when its machine dies), then measures from the kill:

* **worker**: a worker that is not the beat holder; **beat**: the beat holder (also: until
  another worker holds the lock). "reclaimed" is the job's next claim (the store's
  ``started_at``), "done" its end.
* **held**: a gpu worker (the only one) that took a job's message and died before claiming
  it (its claim is held by a row lock); the survivors re-send the job once its announcement
  expires, to the gpu queue, where a new gpu worker takes it.

A replacement worker is started after each kill. Prints a table (median, min, max of
``--trials``) and writes ``bench/results/worker-loss-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.*`, `tests.*` from any cwd

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from PIL import Image  # noqa: E402

from alphacut.jobs.celery_app import (  # noqa: E402
    BEAT_LOCK_SECONDS,
    BEAT_LOOP_SECONDS,
    REQUEUE_INTERVAL,
)
from alphacut.jobs.schema import jobs  # noqa: E402
from alphacut.jobs.store import RUNNING, SQLJobStore  # noqa: E402
from alphacut.jobs.worker import LEASE_SECONDS  # noqa: E402
from alphacut.jobs.worker_models import ANNOUNCE_TTL  # noqa: E402
from bench.common import ROOT, fmt_table, machine_info, median  # noqa: E402
from bench.distributed import SERVICE_ENV, cluster_database, start_api  # noqa: E402
from tests.cluster import Cluster, WorkerProcess, cluster_settings, settings_environment  # noqa: E402

SCENARIOS = ("worker", "beat", "held")


def serve_folder(root: Path) -> str:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}"


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def running_on(store: SQLJobStore, worker: WorkerProcess) -> int | None:
    for job in store.list_by_status(RUNNING):
        if parent_pid(int((job.worker or "x:0").rsplit(":", 1)[1])) == worker.proc.pid:
            return job.id
    return None


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Bench:
    def __init__(self, cluster: Cluster, api: str, gpu_api: str, image: str) -> None:
        self.cluster = cluster
        self.api = api
        self.gpu_api = gpu_api  # an API node that sends every job to the gpu queue
        self.image = image
        self.store = SQLJobStore(cluster.settings.database_url)

    def submit(self, count: int, api: str | None = None) -> list[int]:
        body = {"image": self.image, "alpha_matting": True, "instant_response": True}
        ids = []
        for index in range(count):
            response = httpx.post(
                (api or self.api) + "/api/v5/removebg_mask",
                json={**body, "track_id": index},
                timeout=60,
            )
            response.raise_for_status()
            ids.append(int(response.json()["id"]))
        return ids

    def done(self, *ids: int) -> bool:
        return all(getattr(self.store.get(job_id), "done", False) for job_id in ids)

    def holder(self) -> WorkerProcess:
        wait(lambda: self.cluster.beat_holder() is not None, 60, "a beat holder")
        holder = self.cluster.beat_holder()
        assert holder is not None
        return holder

    def replace(self, dead: WorkerProcess, **options: Any) -> None:
        self.cluster.workers.remove(dead)
        self.cluster.start_workers(1, **options)

    def running_job(self, victim_is_holder: bool) -> dict[str, float]:
        holder = self.holder()
        victim = (
            holder if victim_is_holder else next(w for w in self.cluster.workers if w is not holder)
        )
        ids = self.submit(3)
        deadline = time.time() + 60
        while (job_id := running_on(self.store, victim)) is None:
            if time.time() > deadline:
                raise RuntimeError("the victim ran no job")
            time.sleep(0.05)
        victim.kill()
        killed = time.time()
        figures: dict[str, float] = {}
        if victim_is_holder:
            wait(lambda: self.cluster.beat_holder() not in (None, victim), 60, "a new holder")
            figures["takeover_s"] = time.time() - killed
        wait(lambda: self.done(*ids), LEASE_SECONDS + 120, "the jobs")
        job = self.store.get(job_id)
        assert job is not None and job.status == "success" and job.attempts == 2, job
        assert job.started_at is not None and job.finished_at is not None
        figures |= {"reclaimed_s": job.started_at - killed, "done_s": job.finished_at - killed}
        self.replace(victim)
        return figures

    def held_message(self) -> dict[str, float]:
        """A job sent to the gpu queue, which only the victim takes (no beat: the survivors'
        is what is measured): it takes the message and blocks in its claim on a row lock."""
        (job_id,) = self.submit(1, self.gpu_api)  # waits: no gpu worker yet
        locker = self.store.engine.connect()
        transaction = locker.begin()
        locker.execute(sa.select(jobs.c.id).where(jobs.c.id == job_id).with_for_update())
        (victim,) = self.cluster.start_workers(1, beat=False, queue="gpu")
        query = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        )

        def blocked() -> bool:
            with self.store.engine.connect() as connection:
                return int(connection.execute(query).scalar_one()) > 0

        wait(blocked, 60, "the victim's claim")
        (standby,) = self.cluster.start_workers(1, queue="gpu")  # to run the re-sent job
        victim.kill()
        killed = time.time()
        transaction.rollback()
        locker.close()
        wait(lambda: self.done(job_id), ANNOUNCE_TTL + 120, "the job")
        job = self.store.get(job_id)
        assert job is not None and job.status == "success" and job.attempts == 1, job
        assert job.started_at is not None and job.finished_at is not None
        self.cluster.workers.remove(victim)
        self.cluster.workers.remove(standby)
        standby.stop()
        return {"reclaimed_s": job.started_at - killed, "done_s": job.finished_at - killed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    scenarios = [name for name in args.scenarios.split(",") if name]
    results: dict[str, Any] = {
        "machine": machine_info(),
        "bounds_s": {
            "running_job": LEASE_SECONDS + REQUEUE_INTERVAL + BEAT_LOOP_SECONDS,
            "held_message": ANNOUNCE_TTL + REQUEUE_INTERVAL + BEAT_LOOP_SECONDS,
            "beat_takeover": BEAT_LOCK_SECONDS + BEAT_LOOP_SECONDS,
        },
        "trials": {name: [] for name in scenarios},
    }
    scratch = tempfile.TemporaryDirectory(prefix="alphacut-worker-loss-")
    with scratch as tmp, cluster_database() as url:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        picture = rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8)
        Image.fromarray(picture).save(folder / "slow.png")
        base = serve_folder(folder)
        broker = SERVICE_ENV.get("ALPHACUT_BROKER_URL", "redis://127.0.0.1:6379/0")
        # The jobs of the running-job trials go to cpu, whatever the gpu workers announce.
        settings = cluster_settings(
            folder, url, broker, max_queued_per_key=100, default_queue="cpu"
        )
        cluster = Cluster(settings, folder)
        env = settings_environment(cluster.settings)
        api, api_url = start_api(env, folder / "api.log")
        gpu_env = {**env, "ALPHACUT_DEFAULT_QUEUE": "gpu"}
        gpu_api, gpu_api_url = start_api(gpu_env, folder / "gpu-api.log")
        try:
            cluster.start_workers(3)
            bench = Bench(cluster, api_url, gpu_api_url, f"{base}/slow.png")
            for trial in range(args.trials):
                for name in scenarios:
                    if name == "held":
                        figures = bench.held_message()
                    else:
                        figures = bench.running_job(victim_is_holder=name == "beat")
                    print(f"trial {trial + 1} {name}: {figures}", flush=True)
                    results["trials"][name].append(figures)
        finally:
            cluster.stop_workers()
            api.stop()
            gpu_api.stop()
    rows = []
    for name, trials in results["trials"].items():
        for measure in sorted({key for trial in trials for key in trial}):
            values = [trial[measure] for trial in trials if measure in trial]
            spread = [f"{figure:.1f}" for figure in (median(values), min(values), max(values))]
            rows.append([name, measure, *spread, len(values)])
    print(fmt_table(["scenario", "seconds from the kill", "median", "min", "max", "n"], rows))
    print("bounds:", results["bounds_s"])
    out = ROOT / "bench" / "results" / f"worker-loss-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
