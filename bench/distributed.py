"""The distributed mode's cost on one machine (issue 11): overhead per synchronous request
against the embedded mode, throughput with 1-3 workers, and the cost of each shared part.

```sh
eval "$(scripts/services.sh start)"   # PostgreSQL, Redis, S3 (or the machine's own)
.venv/bin/python bench/distributed.py                     # ~6 min on 2 busy cores
.venv/bin/python bench/distributed.py --requests 20 --real-requests 0 --jobs 30
```

* **Overhead.** One embedded ``alphacut serve`` and one distributed API node + one
  ``alphacut worker`` (same model, mask cache off, one job at a time), on the same photo as a
  data URI; requests alternate between the two, so background load hits both alike. A request
  ends when the client has downloaded the output. The tiny test model isolates the overhead;
  ``--real-requests`` adds the real model's figure.
* **Throughput.** The same API node with 1, 2 and 3 worker processes (``--concurrency 1``
  each), ``--jobs`` requests from 6 client threads, after a warm-up of 2 per worker.
* **Parts.** Redis PING and PUBLISH round trips; on PostgreSQL a job's store cycle (create,
  claim_id, finish, get); an S3 PUT and GET of the output (when ``ALPHACUT_STORAGE_URL`` is an
  ``s3://`` URL).

Prints tables and writes ``bench/results/distributed-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Read before tests.services (imported below, for the tiny model) takes them out of os.environ.
SERVICE_ENV = {
    name: os.environ[name]
    for name in (
        "ALPHACUT_DATABASE_URL",
        "ALPHACUT_BROKER_URL",
        "ALPHACUT_STORAGE_URL",
        "ALPHACUT_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    )
    if name in os.environ
}

import httpx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.*`, `tests.*` from any cwd

from bench.common import PHOTOS, ROOT, fmt_table, machine_info, median, percentile  # noqa: E402

ALPHACUT = str(Path(sys.executable).with_name("alphacut"))
REAL_MODEL_DIR = Path.home() / ".alphacut" / "models"


class Node:
    """An ``alphacut serve`` or ``alphacut worker`` process; its log in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [ALPHACUT, *args],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited:\n{self.log.read_text()[-3000:]}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def cluster_database() -> Iterator[str]:
    """A fresh PostgreSQL database on the services' server, migrated; dropped afterwards."""
    import sqlalchemy as sa

    from alphacut.jobs.database import create_database_engine, parse_database_url
    from alphacut.jobs.migrate import upgrade_database

    server = SERVICE_ENV.get(
        "ALPHACUT_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    admin = sa.create_engine(parse_database_url(server), isolation_level="AUTOCOMMIT")
    database = f"alphacut_bench_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
    try:
        url = parse_database_url(server).set(database=database)
        url_text = url.render_as_string(hide_password=False)
        engine = create_database_engine(url_text)
        upgrade_database(engine)
        engine.dispose()
        yield url_text
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def cluster_env(database_url: str) -> dict[str, str]:
    """The settings of a cluster on the services: the database, Redis with a prefix of its own,
    and S3 storage when the services provide it."""
    return {
        **SERVICE_ENV,
        "ALPHACUT_DATABASE_URL": database_url,
        "ALPHACUT_BROKER_URL": SERVICE_ENV.get("ALPHACUT_BROKER_URL", "redis://127.0.0.1:6379/0"),
        "ALPHACUT_BROKER_PREFIX": f"bench-{secrets.token_hex(4)}:",
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_api(env: dict[str, str], log: Path, *serve_args: str) -> tuple[Node, str]:
    """An ``alphacut serve`` node (``serve_args`` added to its command), once /readyz is 200."""
    port = free_port()
    node = Node(["serve", "--port", str(port), "--log-level", "warning", *serve_args], env, log)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    node.wait_for(healthy, "API node")
    return node, url


def start_worker(env: dict[str, str], log: Path) -> Node:
    node = Node(["worker", "--queue", "cpu", "--concurrency", "1"], env, log)
    node.wait_for(lambda: " ready." in log.read_text(errors="replace"), "worker")
    return node


def remove(client: httpx.Client, url: str, body: dict[str, Any]) -> bytes:
    """One synchronous request, until the output is downloaded."""
    return traced_remove(client, url, body)[0]


def traced_remove(
    client: httpx.Client, url: str, body: dict[str, Any]
) -> tuple[bytes, dict[str, float]]:
    """``remove``, and its job id and client-side times (epoch seconds): sent, answered, done."""
    sent = time.time()
    answer = client.post(url + "/api/v5/removebg_mask", json=body).json()
    while answer.get("status") == "processing":
        time.sleep(0.05)
        answer = client.post(f"{url}/api/v5/fetch/{answer['id']}", json={"key": ""}).json()
    if answer.get("status") != "success":
        raise RuntimeError(f"request failed: {answer}")
    answered = time.time()
    output = client.get(answer["output"][0])
    output.raise_for_status()
    trace = {"id": float(answer["id"]), "sent": sent, "answered": answered, "done": time.time()}
    return output.content, trace


def timed(call: Callable[..., object], *args: object) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "median_ms": median(samples) * 1000,
        "p95_ms": percentile(samples, 95) * 1000,
    }


def overhead(
    urls: dict[str, str], body: dict[str, Any], count: int, stores: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Alternating sequential requests to each mode; the order swaps every round. With each
    mode's job store (``stores``), the split of the medians into stages."""
    samples: dict[str, list[float]] = {mode: [] for mode in urls}
    traces: dict[str, list[dict[str, float]]] = {mode: [] for mode in urls}
    with httpx.Client(timeout=600) as client:
        for url in urls.values():  # warm-up: model load, connections
            remove(client, url, body)
        for index in range(count):
            modes = list(urls) if index % 2 == 0 else list(reversed(urls))
            for mode in modes:
                _, trace = traced_remove(client, urls[mode], body)
                samples[mode].append(trace["done"] - trace["sent"])
                traces[mode].append(trace)
    result = {mode: summary(values) for mode, values in samples.items()}
    result["difference"] = {
        "median_ms": result["distributed"]["median_ms"] - result["embedded"]["median_ms"],
        "p95_ms": result["distributed"]["p95_ms"] - result["embedded"]["p95_ms"],
    }
    for mode, store in stores.items():
        result[f"stages_{mode}"] = stage_split(store, traces[mode])
    return result


# Where a request's time goes, from the client's clocks and the job's own timestamps (one
# machine, one clock): accept = sent -> created (parse, decode, store the input, INSERT,
# dispatch), queue = created -> claimed, run = claimed -> finished (read the input, the
# pipeline, write the output), answer = finished -> the client has the JSON, download = the
# output GET. "input" (read and decode the stored image) is part of run, from the job.
STAGES = ("accept", "queue", "run", "input", "answer", "download")


def stage_split(database_url: str, traces: list[dict[str, float]]) -> dict[str, float]:
    """Median milliseconds of each of ``STAGES`` over the traced requests."""
    import sqlalchemy as sa

    from alphacut.jobs.database import create_database_engine

    engine = create_database_engine(database_url)
    parts: dict[str, list[float]] = {stage: [] for stage in STAGES}
    query = sa.text("SELECT created_at, started_at, finished_at, result FROM jobs WHERE id = :id")
    with engine.connect() as connection:
        for trace in traces:
            row = connection.execute(query, {"id": int(trace["id"])}).one()
            created, started, finished = (float(value) for value in row[:3])
            parts["accept"].append(created - trace["sent"])
            parts["queue"].append(started - created)
            parts["run"].append(finished - started)
            parts["input"].append(float(json.loads(row[3])["timings"].get("input", 0.0)))
            parts["answer"].append(trace["answered"] - finished)
            parts["download"].append(trace["done"] - trace["answered"])
    engine.dispose()
    return {stage: median(values) * 1000 for stage, values in parts.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(
    url: str, body: dict[str, Any], jobs: int, api_pid: int, clients: int = 6
) -> dict[str, float]:
    """Images per second from ``clients`` threads, and the API node's CPU time per request
    (what sizes the API tier)."""
    api_cpu = cpu_seconds(api_pid)
    with httpx.Client(timeout=600) as client:
        latencies: list[float] = []

        def one(_: int) -> None:
            latencies.append(timed(remove, client, url, body))

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as threads:
            list(threads.map(one, range(jobs)))
        wall = time.perf_counter() - started
    api_cpu_ms = (cpu_seconds(api_pid) - api_cpu) / jobs * 1000
    return {
        "jobs": jobs,
        "images_per_s": jobs / wall,
        "api_cpu_ms": api_cpu_ms,
        **summary(latencies),
    }


def part_costs(settings_env: dict[str, str], output: bytes, reps: int) -> dict[str, Any]:
    """Round trips of each shared part, sequentially from this process."""
    from redis import Redis

    from alphacut.jobs.store import SQLJobStore

    costs: dict[str, Any] = {}
    redis = Redis.from_url(settings_env["ALPHACUT_BROKER_URL"])
    costs["redis_ping"] = summary([timed(redis.ping) for _ in range(reps * 5)])
    channel = settings_env["ALPHACUT_BROKER_PREFIX"] + "bench"
    costs["redis_publish"] = summary(
        [timed(lambda: redis.publish(channel, "1")) for _ in range(reps * 5)]
    )
    redis.close()

    store = SQLJobStore(settings_env["ALPHACUT_DATABASE_URL"])
    cycle: dict[str, list[float]] = {"create": [], "claim_id": [], "finish": [], "get": []}
    for _ in range(reps):
        started = time.perf_counter()
        job = store.create("bench", {"input_path": "x", "file_name": "x.png"})
        cycle["create"].append(time.perf_counter() - started)
        cycle["claim_id"].append(timed(store.claim_id, job.id, "bench:1", 60))
        result = {"outputs": ["x.png"], "timings": {}, "width": 1, "height": 1}
        cycle["finish"].append(timed(store.finish, job.id, result, 0.1, None))
        cycle["get"].append(timed(store.get, job.id))
    store.close()
    costs["postgres"] = {step: summary(values) for step, values in cycle.items()}
    costs["postgres"]["store_cycle_median_ms"] = sum(
        costs["postgres"][step]["median_ms"] for step in cycle
    )

    storage_url = SERVICE_ENV.get("ALPHACUT_STORAGE_URL", "")
    if storage_url.startswith("s3://"):
        import boto3

        bucket = storage_url[5:].split("/", 1)[0]
        s3 = boto3.client(
            "s3",
            endpoint_url=SERVICE_ENV.get("ALPHACUT_S3_ENDPOINT_URL"),
            aws_access_key_id=SERVICE_ENV.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=SERVICE_ENV.get("AWS_SECRET_ACCESS_KEY"),
        )
        key = f"bench-{secrets.token_hex(4)}.png"
        puts = [
            timed(lambda: s3.put_object(Bucket=bucket, Key=key, Body=output)) for _ in range(reps)
        ]
        gets = [
            timed(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read()) for _ in range(reps)
        ]
        s3.delete_object(Bucket=bucket, Key=key)
        costs["s3"] = {"bytes": len(output), "put": summary(puts), "get": summary(gets)}
    else:
        costs["s3"] = "not measured: ALPHACUT_STORAGE_URL is not an s3:// URL"
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--photo", default="girl-1.jpg")
    parser.add_argument("--requests", type=int, default=40, help="per mode, tiny model")
    parser.add_argument("--real-requests", type=int, default=5, help="per mode, real model")
    parser.add_argument("--jobs", type=int, default=48, help="per worker count, tiny model")
    parser.add_argument("--part-reps", type=int, default=200)
    args = parser.parse_args()

    from tests.conftest import write_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="alphacut-bench-dist-"))
    write_tiny_model(folder / "tiny-models")
    photo = (PHOTOS / args.photo).read_bytes()
    body = {"image": "data:image/jpeg;base64," + base64.b64encode(photo).decode()}

    common = {
        "ALPHACUT_CACHE_BYTES": "0",  # the same photo again must run the model again
        "ALPHACUT_SYNC_WAIT": "600",
        "ALPHACUT_MAX_QUEUED_PER_KEY": "10000",
        "ALPHACUT_WORKERS": "1",
        "ALPHACUT_URL_ALLOWLIST": "127.0.0.1",
    }
    results: dict[str, Any] = {"machine": machine_info(), "photo": args.photo, "args": vars(args)}
    nodes: list[Node] = []
    last_output = b""
    with cluster_database() as database_url_text:
        distributed = cluster_env(database_url_text)
        try:
            for label, model, model_dir, count in (
                ("tiny", "tiny", folder / "tiny-models", args.requests),
                ("real", "medium", REAL_MODEL_DIR, args.real_requests),
            ):
                if count <= 0:
                    continue
                env = {**common, "ALPHACUT_MODEL": model, "ALPHACUT_MODEL_DIR": str(model_dir)}
                embedded, embedded_url = start_api(
                    {**env, "ALPHACUT_HOME": str(folder / f"{label}-embedded")},
                    folder / f"{label}-embedded.log",
                )
                nodes.append(embedded)
                node_env = {**env, **distributed, "ALPHACUT_HOME": str(folder / f"{label}-cluster")}
                api, api_url = start_api(node_env, folder / f"{label}-api.log")
                nodes.append(api)
                worker = start_worker(node_env, folder / f"{label}-worker0.log")
                nodes.append(worker)
                print(f"overhead, {label} model: {count} requests per mode ...", flush=True)
                stores = {
                    "embedded": f"sqlite:///{folder / f'{label}-embedded' / 'jobs.sqlite3'}",
                    "distributed": database_url_text,
                }
                results[f"overhead_{label}"] = overhead(
                    {"embedded": embedded_url, "distributed": api_url}, body, count, stores
                )
                embedded.stop()
                if label == "tiny":
                    levels: dict[str, Any] = {}
                    workers = [worker]
                    for count_workers in (1, 2, 3):
                        while len(workers) < count_workers:
                            log = folder / f"tiny-worker{len(workers)}.log"
                            workers.append(start_worker(node_env, log))
                            nodes.append(workers[-1])
                        print(f"throughput, {count_workers} worker(s) ...", flush=True)
                        throughput(api_url, body, 2 * count_workers, api.proc.pid)  # warm-up
                        levels[str(count_workers)] = throughput(
                            api_url, body, args.jobs, api.proc.pid
                        )
                    results["throughput_tiny"] = levels
                else:
                    with httpx.Client(timeout=600) as client:
                        last_output = remove(client, api_url, body)
                for node in nodes:
                    node.stop()
            print("parts ...", flush=True)
            # The S3 PUT carries a real output (the real model's PNG) when there is one.
            try:
                results["parts"] = part_costs(distributed, last_output or photo, args.part_reps)
            except Exception as exc:  # keep the figures measured so far
                results["parts"] = f"failed: {exc!r}"
        finally:
            for node in nodes:
                node.stop()

    report(results)
    out = ROOT / "bench" / "results" / f"distributed-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"written {out}")


def report(results: dict[str, Any]) -> None:
    for label in ("tiny", "real"):
        data = results.get(f"overhead_{label}")
        if not data:
            continue
        rows = [
            [mode, f"{data[mode]['median_ms']:.1f}", f"{data[mode]['p95_ms']:.1f}"]
            for mode in ("embedded", "distributed", "difference")
        ]
        print(f"\nOverhead per synchronous request, {label} model (ms)")
        print(fmt_table(["mode", "median", "p95"], rows))
        embedded, distributed = data["stages_embedded"], data["stages_distributed"]
        rows = [
            [
                stage,
                f"{embedded[stage]:.1f}",
                f"{distributed[stage]:.1f}",
                f"{distributed[stage] - embedded[stage]:+.1f}",
            ]
            for stage in STAGES
        ]
        print(f"\nStages, {label} model (medians, ms)")
        print(fmt_table(["stage", "embedded", "distributed", "difference"], rows))
    levels = results.get("throughput_tiny", {})
    if levels:
        rows = [
            [
                n,
                f"{v['images_per_s']:.2f}",
                f"{v['median_ms']:.0f}",
                f"{v['p95_ms']:.0f}",
                f"{v['api_cpu_ms']:.0f}",
            ]
            for n, v in levels.items()
        ]
        print("\nThroughput, tiny model, 6 clients")
        headers = ["workers", "images/s", "p50 ms", "p95 ms", "API CPU ms/request"]
        print(fmt_table(headers, rows))
    print("\nParts:", json.dumps(results.get("parts"), indent=1))


if __name__ == "__main__":
    main()
