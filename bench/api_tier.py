"""Requests per second one API node of a cluster answers with 1 and 2 server processes
(``alphacut serve --workers N``, issue 19): the API tier is the cluster's first bottleneck.

```sh
eval "$(scripts/services.sh start)"   # PostgreSQL and Redis (or the machine's own)
.venv/bin/python bench/api_tier.py                         # ~3 min
.venv/bin/python bench/api_tier.py --runs 5 --seconds 10 --clients 64
```

* **Cluster.** A scratch PostgreSQL database, a broker prefix of its own and no worker: the
  jobs stay queued, so only the API node works. Outputs and inputs in a temporary folder (the
  S3 store would add its own CPU on the same machine). No API key; the per-key queue limit
  raised out of the way.
* **Nodes.** Two API nodes at once on the cluster, one with ``--workers 1``, one with
  ``--workers 2``; runs alternate between them (the order swaps every run), so background load
  hits both alike.
* **Workloads.** ``submit``: ``POST /api/v5/removebg_mask`` with ``instant_response`` and a
  64x64 PNG as a data URI (validate, decode, store the input, INSERT the job, send its task,
  answer "processing"). ``fetch``: ``POST /api/v5/fetch/{id}`` of one queued job (a store
  read and the answer). Each run sends from ``--clients`` concurrent connections (one asyncio
  client process) for ``--seconds``, after one second of warm-up; requests/s is what completed
  in that time. The figure is the median of ``--runs`` runs.
* **CPU per request.** The CPU time (user + system, from ``/proc``) the node's processes
  spent during a run, divided by the requests it answered: on a machine whose cores are
  shared with the client, PostgreSQL and other work, it says what one process can reach on a
  core of its own (1000 / ms per request).

Prints a table and writes ``bench/results/api-tier-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.*` from any cwd

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import ROOT, fmt_table, machine_info, median  # noqa: E402
from bench.distributed import Node, cluster_database, cluster_env, start_api  # noqa: E402

PROCESSES = (1, 2)
WORKLOADS = ("submit", "fetch")


def small_png() -> str:
    """A 64x64 PNG as a data URI: decoding it costs little, the request's own work shows."""
    image = Image.new("RGB", (64, 64), (200, 120, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def start_node(env: dict[str, str], processes: int, log: Path) -> tuple[Node, str]:
    node, url = start_api(env, log, "--workers", str(processes))
    time.sleep(3)  # /readyz answers once the first process is up: give the others time
    return node, url


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and its descendants, now (Linux)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it just ended
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier += children
    return sum(times.get(pid, 0.0) for pid in tree)


async def load(
    url: str, path: str, body: dict[str, Any], clients: int, seconds: float, server: int
) -> dict[str, float]:
    """Requests completed per second from ``clients`` connections over ``seconds``, after a
    second of warm-up, and the CPU ms per request of the processes of ``server`` (a pid);
    any answer but 200, and any connection error, counts as an error."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    counts = {"done": 0, "errors": 0}
    measuring = False

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one_client(stop_at: float) -> None:
            while time.monotonic() < stop_at:
                try:
                    answer = await client.post(path, json=body)
                    ok = answer.status_code == 200
                except httpx.TransportError:  # a dropped connection: counted, not fatal
                    ok = False
                if measuring:
                    counts["done" if ok else "errors"] += 1

        started = time.monotonic()
        stop_at = started + 1.0 + seconds
        tasks = [asyncio.create_task(one_client(stop_at)) for _ in range(clients)]
        await asyncio.sleep(1.0)
        measuring, measured_from = True, time.monotonic()
        cpu_from = tree_cpu_seconds(server)
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - measured_from
        cpu = tree_cpu_seconds(server) - cpu_from
    return {
        "requests_per_s": counts["done"] / elapsed,
        "cpu_ms_per_request": 1000 * cpu / max(1, counts["done"]),
        "errors": counts["errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per workload and node")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of a run")
    parser.add_argument("--clients", type=int, default=32, help="concurrent connections")
    options = parser.parse_args()

    info = machine_info()
    results: dict[str, Any] = {"machine": info, "options": vars(options), "runs": []}
    with tempfile.TemporaryDirectory() as folder, cluster_database() as database:
        env = {
            **cluster_env(database),
            "ALPHACUT_HOME": str(Path(folder) / "home"),
            "ALPHACUT_STORAGE_URL": "",  # local folders: no S3 gateway on the same cores
            "ALPHACUT_DEFAULT_QUEUE": "cpu",
            "ALPHACUT_MAX_QUEUED_PER_KEY": str(10**9),
            "ALPHACUT_URL_ALLOWLIST": "127.0.0.1",
        }
        nodes = {n: start_node(env, n, Path(folder) / f"serve-{n}.log") for n in PROCESSES}
        try:
            submit = {"image": small_png(), "instant_response": True}
            first = httpx.post(nodes[1][1] + "/api/v5/removebg_mask", json=submit, timeout=30)
            job_id = first.json()["id"]
            bodies: dict[str, tuple[str, dict[str, Any]]] = {
                "submit": ("/api/v5/removebg_mask", submit),
                "fetch": (f"/api/v5/fetch/{job_id}", {"key": ""}),
            }
            for run in range(options.runs):
                order = PROCESSES if run % 2 == 0 else tuple(reversed(PROCESSES))
                for workload in WORKLOADS:
                    for processes in order:
                        path, body = bodies[workload]
                        node, url = nodes[processes]
                        figures = asyncio.run(
                            load(url, path, body, options.clients, options.seconds, node.proc.pid)
                        )
                        results["runs"].append(
                            {"run": run, "workload": workload, "processes": processes, **figures}
                        )
                        print(
                            f"run {run} {workload:6} {processes} process(es): "
                            f"{figures['requests_per_s']:.1f} requests/s, "
                            f"{figures['cpu_ms_per_request']:.1f} ms CPU each, "
                            f"{figures['errors']:.0f} errors",
                            flush=True,
                        )
        finally:
            for node, _ in nodes.values():
                node.stop()
            if any(run["errors"] for run in results["runs"]):  # say why, before the logs go
                for node, _ in nodes.values():
                    print(node.log.read_text(errors="replace")[-3000:])
            drop_broker_keys(env["ALPHACUT_BROKER_URL"], env["ALPHACUT_BROKER_PREFIX"])

    rows = []
    summary: dict[str, dict[str, float]] = {}
    for workload in WORKLOADS:
        for processes in PROCESSES:
            runs = [
                run
                for run in results["runs"]
                if run["workload"] == workload and run["processes"] == processes
            ]
            rates = [run["requests_per_s"] for run in runs]
            cpu = median([run["cpu_ms_per_request"] for run in runs])
            summary[f"{workload}/{processes}"] = {
                "median_requests_per_s": median(rates),
                "median_cpu_ms_per_request": cpu,
            }
            rows.append([workload, processes, median(rates), min(rates), max(rates), cpu])
    results["summary"] = summary
    results["load_average_end"] = os.getloadavg()
    headers = ["workload", "processes", "median req/s", "min", "max", "CPU ms/request"]
    print(fmt_table(headers, rows))
    out = ROOT / "bench" / "results" / f"api-tier-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


def drop_broker_keys(broker_url: str, prefix: str) -> None:
    """The queued messages and markers of the bench's cluster (no worker ever takes them)."""
    from redis import Redis

    broker = Redis.from_url(broker_url)
    try:
        for key in broker.scan_iter(match=f"{prefix}*"):
            broker.delete(key)
    finally:
        broker.close()


if __name__ == "__main__":
    main()
