"""The reliability report (issue 12): reruns everything it reports and writes the "Figures"
section of docs/reliability.md.

    .venv/bin/python bench/reliability.py                      # 500 requests at c=8, the tests
    .venv/bin/python bench/reliability.py --requests 200 --deadline 11:30
    .venv/bin/python bench/run.py --only reliability           # the same, with its defaults
    eval "$(scripts/services.sh start)"                        # then the load on a cluster:
    .venv/bin/python bench/reliability.py --only load --distributed

Three parts, in this order (the tests first: their time is bounded, the load gets what is left
before ``--deadline``):

* **faults:** pytest on tests/jobs/test_faults.py, test_shutdown.py and test_restart.py; each
  test passed or failed, with the fault it injects and what it checks was not lost;
* **bad inputs:** pytest on the schemathesis run (tests/service/test_fuzz.py), the Hypothesis
  properties (tests/service/test_request_properties.py, tests/pipeline/test_decode_properties.py)
  and the regression suite (tests/service/test_limits.py), with bench/reliability_plugin.py
  counting the HTTP requests each test sent, their status codes and the Hypothesis examples;
* **load:** ``--requests`` requests (500) with ``--concurrency`` clients (8) on a real
  ``alphacut serve`` on loopback with the real ISNet weights: a fixed mix of default, only_mask,
  alpha matting and 12 MP photos. Nothing is sent once ``--deadline`` has passed; the report says
  how many were sent. A "processing" answer (the job outlived the server's sync wait) is followed
  up on the fetch endpoint until it ends, as the API's contract says; a 429 is documented
  back-pressure: counted apart and retried after its ``Retry-After``. Every other non-success is
  an error. Server RSS (VmRSS of the server's processes) is read after every answer.

By default the server and the tests run from a snapshot of the committed tree (``git archive
HEAD``), so the figures belong to the commit the report names, whatever else is being edited in
the working tree; ``--worktree`` runs the working tree instead (the report then says so).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.*` from any cwd

from bench.common import (  # noqa: E402
    BENCH,
    FP32,
    MODEL_DIR,
    PHOTOS,
    ROOT,
    make_big_image,
    median,
    percentile,
)
from bench.http_load import Server, _free_port  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
FIGURES_HEADING = "## Figures"
DISTRIBUTED_HEADING = "## Figures, distributed mode"

FAULT_TESTS = (
    "tests/jobs/test_faults.py",
    "tests/jobs/test_shutdown.py",
    "tests/jobs/test_restart.py",
)
BAD_INPUT_TESTS = {
    "schemathesis": ("tests/service/test_fuzz.py",),
    "Hypothesis, request schema": ("tests/service/test_request_properties.py",),
    "Hypothesis, image decoding": ("tests/pipeline/test_decode_properties.py",),
    "regression suite": ("tests/service/test_limits.py",),
    "hostile requests, round 2 (server peak RSS measured)": ("tests/service/test_hostile.py",),
    "Hypothesis, container formats and structure bounds": ("tests/pipeline/test_decode_bounds.py",),
    "output bounds": ("tests/service/test_output_bounds.py", "tests/pipeline/test_compose.py"),
}

# The fault each fault test injects, and what it checks was kept (what "lost: nothing" means).
FAULT_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "test_a_job_whose_pipeline_raises_fails_alone": (
        "the pipeline raises for one job among several",
        "nothing: that job fails with a clear message, the jobs around it succeed",
    ),
    "test_a_full_output_disk_fails_jobs_clearly_and_leaves_no_partial_files": (
        "full output disk (a real 1 MB tmpfs, filled up)",
        "nothing accepted is half-written: failed jobs say the disk is full, no partial "
        "file is left, jobs succeed again once space is freed",
    ),
    "test_a_full_write_leaves_no_partial_file": (
        "full disk injected at the storage layer (ENOSPC after half the bytes)",
        "no partial file is left",
    ),
    "test_other_write_errors_are_not_reported_as_a_full_disk": (
        "another write error (read-only file system) at the storage layer",
        "nothing: reported as what it is, not as a full disk",
    ),
    "test_a_draining_server_refuses_jobs_with_503_and_still_serves_fetch": (
        "requests arriving while the server drains",
        "nothing: new jobs get 503 with Retry-After, fetch of accepted jobs still works",
    ),
    "test_sigterm_finishes_the_running_job_and_leaves_the_queue_for_the_next_start": (
        "SIGTERM with a job running and jobs queued",
        "nothing: the running job finishes, the queued ones run after the restart, each once",
    ),
    "test_a_job_outliving_the_grace_stays_running_and_runs_again_at_the_next_start": (
        "SIGTERM with a job that outlives the shutdown grace",
        "nothing: the job stays in the store and runs again at the next start",
    ),
    "test_kill_9_then_restart_finishes_every_job": (
        "SIGKILL (kill -9) of the server mid-work",
        "nothing: a restarted server finishes every accepted job",
    ),
}


@dataclass(frozen=True)
class LoadKind:
    name: str
    photo: str  # a photo of bench's PHOTOS folder, or "big" for the 12 MP photo
    fields: dict[str, str]


# Ten requests per round, in this order, so a run cut short by the deadline keeps the mix.
ROUND: tuple[LoadKind, ...] = (
    LoadKind("default", "car-1.jpg", {}),
    LoadKind("only_mask", "girl-2.jpg", {"only_mask": "true"}),
    LoadKind("default", "animal-1.jpg", {}),
    LoadKind("alpha_matting", "girl-1.jpg", {"alpha_matting": "true"}),
    LoadKind("default", "plants-1.jpg", {}),
    LoadKind("12 MP", "big", {}),
    LoadKind("only_mask", "anime-girl-1.jpg", {"only_mask": "true"}),
    LoadKind("default", "car-3.jpg", {}),
    LoadKind("alpha_matting", "animal-1.jpg", {"alpha_matting": "true"}),
    LoadKind("12 MP", "big", {"only_mask": "true"}),
)


@dataclass
class Outcome:
    kind: str
    ok: bool
    latency_s: float
    rss_mb: float
    rate_limited: int = 0  # 429 answers before it was accepted
    followed_up: bool = False  # answered "processing", then fetched until done
    error: str = ""


@dataclass
class LoadRun:
    sent: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    rss_samples_mb: list[float] = field(default_factory=list)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def machine() -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    import onnxruntime

    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }


def snapshot_of_head(tmp: Path) -> Path:
    """The committed tree in a temp folder: what the report's commit names."""
    tree = tmp / "snapshot"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def tree_environment(tree: Path) -> dict[str, str]:
    """Run alphacut and the tests from ``tree`` (its src before the venv's editable path)."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree / "src"), str(tree)]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def run_pytest(
    tree: Path,
    paths: tuple[str, ...],
    report: Path,
    timeout_s: float,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """pytest on ``paths`` with the counting plugin; its JSON report, exit code and seconds."""
    env = tree_environment(tree) | {"ALPHACUT_RELIABILITY_REPORT": str(report), **(extra_env or {})}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "-p",
        "bench.reliability_plugin",
        *paths,
    ]
    started = time.perf_counter()
    try:
        finished = subprocess.run(
            command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout_s
        )
        exit_code, output = finished.returncode, finished.stdout + finished.stderr
    except subprocess.TimeoutExpired as exc:
        exit_code = -1
        output = f"timed out after {timeout_s:.0f} s\n{exc.stdout or ''}"
    seconds = time.perf_counter() - started
    tests = json.loads(report.read_text())["tests"] if report.is_file() else {}
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    log(f"pytest {' '.join(paths)}: exit {exit_code}, {seconds:.0f} s: {summary}")
    return {"exit_code": exit_code, "seconds": seconds, "summary": summary, "tests": tests}


def test_name(nodeid: str) -> str:
    return nodeid.split("::")[-1]


def run_faults(tree: Path, tmp: Path, timeout_s: float) -> dict[str, Any]:
    result = run_pytest(tree, FAULT_TESTS, tmp / "faults.json", timeout_s)
    rows = []
    for nodeid, test in result["tests"].items():
        fault, kept = FAULT_DESCRIPTIONS.get(
            test_name(nodeid),
            (test["description"] or test_name(nodeid).removeprefix("test_").replace("_", " "), ""),
        )
        lost = kept if test["outcome"] == "passed" else f"unknown: the test {test['outcome']}"
        rows.append({"test": nodeid, "fault": fault, "outcome": test["outcome"], "lost": lost})
    result["rows"] = rows
    return result


def run_bad_inputs(tree: Path, tmp: Path, timeout_s: float) -> dict[str, Any]:
    groups = {}
    peaks = tmp / "peaks.jsonl"  # tests/service/test_hostile.py's measured peak RSS growths
    for index, (group, paths) in enumerate(BAD_INPUT_TESTS.items()):
        result = run_pytest(
            tree,
            paths,
            tmp / f"bad-inputs-{index}.json",
            timeout_s,
            {"ALPHACUT_PEAK_REPORT": str(peaks)},
        )
        tests = result["tests"].values()
        result["http_requests"] = sum(t["http_requests"] for t in tests)
        result["http_5xx"] = sum(t["http_5xx"] for t in tests)
        result["hypothesis_examples"] = sum(t["hypothesis_examples"] for t in tests)
        result["passed"] = sum(t["outcome"] == "passed" for t in tests)
        result["failed"] = sum(t["outcome"] == "failed" for t in tests)
        result["skipped"] = sum(t["outcome"] == "skipped" for t in tests)
        groups[group] = result
    if peaks.is_file():
        samples = [json.loads(line) for line in peaks.read_text().splitlines()]
        worst = max(samples, key=lambda sample: sample["bytes"])
        groups["peak RSS"] = {"requests": len(samples), "worst": worst}
    return groups


def load_bodies(tmp: Path) -> dict[str, bytes]:
    photos = {kind.photo for kind in ROUND if kind.photo != "big"}
    bodies = {name: (PHOTOS / name).read_bytes() for name in photos}
    bodies["big"] = make_big_image(tmp, "girl-1.jpg").read_bytes()
    return bodies


def start_server(tree: Path, tmp: Path, cluster: dict[str, str] | None = None) -> Server:
    """``alphacut serve`` on loopback with the real model, the default limits, no mask cache;
    with ``cluster`` (its settings), an API node of that cluster."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = (
        tree_environment(tree)
        | {
            "ALPHACUT_HOME": str(tmp / "load-home"),
            "ALPHACUT_MODEL_DIR": str(MODEL_DIR),
            "ALPHACUT_MODEL": "medium",
            # Every request runs the model: the photos repeat, and the mask cache (keyed by
            # the decoded pixels) would answer all but the first round without it.
            "ALPHACUT_CACHE_BYTES": "0",
        }
        | (cluster or {})
    )
    command = [
        str(Path(sys.executable).with_name("alphacut")),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    server = Server("alphacut", command, env, url, lambda *_: b"", tmp / "load-serve.log")
    server.ready(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200)
    return server


class Cluster:
    """One API node and one worker process on PostgreSQL, Redis and S3 (scripts/services.sh):
    what run_load needs of a server, its memory the sum of both (worker: Celery's parent and
    its pool process)."""

    def __init__(self, tree: Path, tmp: Path, settings: dict[str, str]) -> None:
        env = tree_environment(tree) | {
            "ALPHACUT_HOME": str(tmp / "worker-home"),
            "ALPHACUT_MODEL_DIR": str(MODEL_DIR),
            "ALPHACUT_MODEL": "medium",
            "ALPHACUT_CACHE_BYTES": "0",
            **settings,
        }
        log_path = tmp / "load-worker.log"
        command = [str(Path(sys.executable).with_name("alphacut")), "worker", "--queue", "cpu"]
        self.worker = Server("worker", command, env, "", lambda *_: b"", log_path)
        try:
            self.worker.ready(lambda: " ready." in log_path.read_text(errors="replace"))
            self.api = start_server(tree, tmp, settings)
        except BaseException:
            self.worker.stop()
            raise
        self.url = self.api.url

    def memory_mb(self) -> dict[str, float]:
        api, worker = self.api.memory_mb(), self.worker.memory_mb()
        return {key: api[key] + worker[key] for key in api}

    def stop(self) -> None:
        self.api.stop()
        self.worker.stop()


def retry_after_s(answer: httpx.Response) -> float:
    try:
        return min(30.0, max(0.5, float(answer.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def send_one(client: httpx.Client, url: str, kind: LoadKind, body: bytes) -> tuple[int, bool]:
    """One request to its end (the output PNG downloaded); (429s met, followed up).

    Raises on anything but success, a 429 (retried after Retry-After) or "processing"
    (followed up on the fetch endpoint until the job ends)."""
    rate_limited = 0
    while True:
        answer = client.post(
            f"{url}/api/v5/removebg_mask",
            files={"image": ("photo.jpg", body, "image/jpeg")},
            data={"key": "", **kind.fields},
        )
        if answer.status_code != 429:
            break
        rate_limited += 1
        time.sleep(retry_after_s(answer))
    reply = answer.json()
    followed_up = False
    while answer.status_code == 200 and reply.get("status") == "processing":
        followed_up = True
        time.sleep(1.0)
        fetch_url = reply.get("fetch_result") or f"{url}/api/v5/fetch/{reply['id']}"
        answer = client.post(fetch_url, json={"key": ""})
        reply = answer.json()
    if answer.status_code != 200 or reply.get("status") != "success":
        raise RuntimeError(f"HTTP {answer.status_code}: {json.dumps(reply)[:300]}")
    png = client.get(reply["output"][0])
    if png.status_code != 200 or not png.content.startswith(b"\x89PNG"):
        raise RuntimeError(f"output: HTTP {png.status_code}")
    return rate_limited, followed_up


def run_load(
    tree: Path,
    tmp: Path,
    requests: int,
    concurrency: int,
    deadline: float,
    cluster: dict[str, str] | None = None,
) -> dict[str, Any]:
    bodies = load_bodies(tmp)
    server: Server | Cluster = (
        start_server(tree, tmp) if cluster is None else Cluster(tree, tmp, cluster)
    )
    run = LoadRun()
    lock = threading.Lock()
    stop_sampling = threading.Event()

    def sampler() -> None:
        while not stop_sampling.wait(1.0):
            rss = server.memory_mb()["VmRSS"]
            with lock:
                run.rss_samples_mb.append(rss)

    def client_loop() -> None:
        with httpx.Client(timeout=httpx.Timeout(900, connect=30)) as client:
            while True:
                with lock:
                    if run.sent >= requests or time.time() >= deadline:
                        return
                    index = run.sent
                    run.sent += 1
                kind = ROUND[index % len(ROUND)]
                started = time.perf_counter()
                try:
                    rate_limited, followed_up = send_one(
                        client, server.url, kind, bodies[kind.photo]
                    )
                    outcome = Outcome(kind.name, True, 0.0, 0.0, rate_limited, followed_up)
                except Exception as exc:  # counted and reported; the run goes on
                    outcome = Outcome(
                        kind.name, False, 0.0, 0.0, error=f"{type(exc).__name__}: {exc}"[:300]
                    )
                outcome.latency_s = time.perf_counter() - started
                outcome.rss_mb = server.memory_mb()["VmRSS"]
                with lock:
                    run.outcomes.append(outcome)
                    done = len(run.outcomes)
                if done % 10 == 0:
                    log(f"load: {done} done, RSS {outcome.rss_mb:.0f} MB")

    start_rss = server.memory_mb()["VmRSS"]
    sampling = threading.Thread(target=sampler, daemon=True)
    sampling.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        wall_s = time.perf_counter() - started
        stop_sampling.set()
        sampling.join()
        server.stop()
    return summarise_load(run, requests, concurrency, wall_s, start_rss, deadline)


def summarise_load(
    run: LoadRun, requested: int, concurrency: int, wall_s: float, start_rss: float, deadline: float
) -> dict[str, Any]:
    outcomes = run.outcomes
    latencies = [o.latency_s for o in outcomes if o.ok]
    rss_after = [o.rss_mb for o in outcomes]
    window = min(100, len(rss_after))
    first, last = rss_after[:window], rss_after[-window:]
    # The slope after the first 100 answers (the warm-up, when arenas and caches fill), or
    # over every answer when fewer than 150 were received.
    tail = rss_after[100:] if len(rss_after) >= 150 else rss_after
    slope = float(np.polyfit(np.arange(len(tail)), tail, 1)[0]) * 100 if len(tail) > 2 else 0.0
    per_kind: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(kind.name for kind in ROUND):
        mine = [o for o in outcomes if o.kind == name]
        ok = [o.latency_s for o in mine if o.ok]
        per_kind[name] = {
            "requests": len(mine),
            "errors": sum(not o.ok for o in mine),
            "p50_s": median(ok),
            "p95_s": percentile(ok, 95),
        }
    return {
        "requested": requested,
        "sent": run.sent,
        "answered": len(outcomes),
        "stopped_by_deadline": run.sent < requested,
        "deadline": dt.datetime.fromtimestamp(deadline).isoformat(timespec="minutes"),
        "concurrency": concurrency,
        "ok": len(latencies),
        "errors": sum(not o.ok for o in outcomes),
        "error_samples": [o.error for o in outcomes if not o.ok][:10],
        "rate_limited_429": sum(o.rate_limited for o in outcomes),
        "followed_up_processing": sum(o.followed_up for o in outcomes),
        "wall_s": wall_s,
        "images_per_s": len(latencies) / wall_s if wall_s else 0.0,
        "p50_s": median(latencies),
        "p95_s": percentile(latencies, 95),
        "per_kind": per_kind,
        "rss_start_mb": start_rss,
        "rss_first_100_mean_mb": float(np.mean(first)) if first else 0.0,
        "rss_first_100_max_mb": max(first, default=0.0),
        "rss_last_100_mean_mb": float(np.mean(last)) if last else 0.0,
        "rss_last_100_max_mb": max(last, default=0.0),
        "rss_window": window,
        "rss_peak_sampled_mb": max(run.rss_samples_mb + rss_after, default=0.0),
        "rss_slope_mb_per_100": slope,
        "rss_slope_over": "answers after the first 100" if tail is not rss_after else "all answers",
        "rss_after_each_mb": rss_after,
    }


def parse_deadline(text: str | None, default_s: float) -> float:
    """``HH:MM`` (today, local time), a number of minutes (``+25``), or none: ``default_s``."""
    now = time.time()
    if not text:
        return now + default_s
    if text.startswith("+"):
        return now + float(text[1:]) * 60
    hour, minute = (int(part) for part in text.split(":"))
    target = dt.datetime.now().replace(hour=hour, minute=minute, second=0, microsecond=0)
    return target.timestamp()


def fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 100 else f"{seconds:.0f} s"


def render(report: dict[str, Any]) -> str:
    m, load, faults, bad = (
        report["machine"],
        report.get("load"),
        report.get("faults"),
        report.get("bad_inputs"),
    )
    distributed = report.get("mode") == "distributed"
    lines = [
        heading(report),
        "",
        f"Written by `bench/reliability.py` ({report['command']}), which reran everything below "
        f"on {report['date']}, {report['started']}-{report['finished']} UTC, at commit "
        f"`{report['commit']}`{report['tree_note']}, on {m['cores']} cores ({m['cpu_model']}) "
        f"with {m['memory_gib']} GiB of memory, Python {m['python']}, ONNX Runtime "
        f"{m['onnxruntime']}. The machine was shared with other work: load average "
        f"{report['loadavg_start']:.1f} at the start, {report['loadavg_end']:.1f} at the end, so "
        "absolute seconds are inflated; errors, 5xx counts and the RSS trend are what to read.",
        "",
    ]
    if load:
        cut = (
            f"{load['sent']} of the {load['requested']} asked for were sent: the deadline "
            f"({load['deadline']}) passed first"
            if load["stopped_by_deadline"]
            else f"all {load['requested']} were sent before the deadline ({load['deadline']})"
        )
        lines += [
            "### Load",
            "",
            f"{load['sent']} requests with {load['concurrency']} concurrent clients to "
            + (
                "a cluster on loopback: one API node (`alphacut serve`) and one worker "
                "(`alphacut worker`, one job at a time) on PostgreSQL, Redis and S3 (SeaweedFS) "
                "from `scripts/services.sh` (`--distributed`), both"
                if distributed
                else "a real `alphacut serve` on loopback"
            )
            + " with the real ISNet weights (`medium`, fp32) and the "
            "default settings but the mask cache off (`ALPHACUT_CACHE_BYTES=0`: the photos "
            "repeat, and every request must run the model); "
            f"{cut}. Each round of ten: four photos with the default options (0.2-1.5 MP), two "
            "with `only_mask`, two with `alpha_matting`, and two 12 MP photos (girl-1.jpg "
            "upscaled to 4000x3000; one default, one `only_mask`), sent as multipart uploads. A "
            'request ends when the client has the output PNG; a "processing" answer (the job '
            "outlived `ALPHACUT_SYNC_WAIT`) is followed up on the fetch endpoint until done, as "
            "the API says. Latency includes the wait behind the other clients' requests: the "
            "server runs the model on all cores for one image at a time, so with 8 clients most "
            "of a request's time is queueing (throughput is the figure for capacity). RSS is "
            + (
                "the sum of the API node's and the worker's processes' VmRSS"
                if distributed
                else "the server's VmRSS"
            )
            + " (`/proc/<pid>/status`) read after every answer.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| requests sent / answered | {load['sent']} / {load['answered']} |",
            f"| **errors** (anything but success, documented 429s apart) | **{load['errors']}** |",
            f"| 429 answers (documented back-pressure, retried after `Retry-After`) | "
            f"{load['rate_limited_429']} |",
            f'| answered "processing", then fetched to the end | '
            f"{load['followed_up_processing']} |",
            f"| wall time | {fmt_s(load['wall_s'])} |",
            f"| throughput | {load['images_per_s']:.3f} images/s |",
            f"| latency p50 / p95 | {fmt_s(load['p50_s'])} / {fmt_s(load['p95_s'])} |",
            f"| RSS after start-up | {load['rss_start_mb']:.0f} MB |",
            f"| RSS over the first {load['rss_window']} answers (mean / max) | "
            f"{load['rss_first_100_mean_mb']:.0f} / {load['rss_first_100_max_mb']:.0f} MB |",
            f"| RSS over the last {load['rss_window']} answers (mean / max) | "
            f"{load['rss_last_100_mean_mb']:.0f} / {load['rss_last_100_max_mb']:.0f} MB |",
            f"| RSS slope ({load['rss_slope_over']}, least squares) | "
            f"{load['rss_slope_mb_per_100']:+.1f} MB per 100 requests |",
            f"| RSS peak (sampled every second and after every answer) | "
            f"{load['rss_peak_sampled_mb']:.0f} MB |",
            "",
            "| kind | requests | errors | p50 | p95 |",
            "|---|---|---|---|---|",
        ]
        for name, kind in load["per_kind"].items():
            lines.append(
                f"| {name} | {kind['requests']} | {kind['errors']} | {fmt_s(kind['p50_s'])} | "
                f"{fmt_s(kind['p95_s'])} |"
            )
        if load["error_samples"]:
            lines += ["", "Errors (first ten):", ""]
            lines += [f"- `{error}`" for error in load["error_samples"]]
        lines.append("")
    if faults:
        lines += [
            "### Faults survived",
            "",
            f"pytest on {', '.join(f'`{p}`' for p in FAULT_TESTS)}: {faults['summary']}.",
            "",
            "| fault | test | result | lost |",
            "|---|---|---|---|",
        ]
        for row in faults["rows"]:
            lines.append(f"| {row['fault']} | `{row['test']}` | {row['outcome']} | {row['lost']} |")
        lines.append("")
    if bad:
        bad = dict(bad)
        peak = bad.pop("peak RSS", None)
        total_requests = sum(g["http_requests"] for g in bad.values())
        total_examples = sum(g["hypothesis_examples"] for g in bad.values())
        total_5xx = sum(g["http_5xx"] for g in bad.values())
        lines += [
            "### Bad inputs tried",
            "",
            "pytest on each suite with `bench/reliability_plugin.py`, which counts the HTTP "
            "requests each test sent to alphacut (through httpx, Starlette's test client or "
            "requests, which schemathesis uses; not the raw-socket slow-client tests, nor the "
            "server's own outbound fetches and webhooks) and alphacut's status codes, and "
            "the examples each Hypothesis test ran (the request-schema properties run the "
            "parsing and validation in process, no HTTP). The schemathesis run is the `make "
            "test` size (`ALPHACUT_FUZZ_EXAMPLES`, 12 per operation and mode unless set; `make "
            "fuzz` runs 300).",
            "",
            "| suite | tests passed / failed / skipped | HTTP requests | Hypothesis examples | "
            "5xx answers |",
            "|---|---|---|---|---|",
        ]
        for group, result in bad.items():
            paths = ", ".join(f"`{p}`" for p in BAD_INPUT_TESTS[group])
            lines.append(
                f"| {group} ({paths}) | {result['passed']} / {result['failed']} / "
                f"{result['skipped']} | {result['http_requests']} | "
                f"{result['hypothesis_examples']} | {result['http_5xx']} |"
            )
        lines += [
            f"| **total** | | **{total_requests}** | **{total_examples}** | **{total_5xx}** |",
            "",
            f"{total_requests + total_examples} inputs in all ({total_requests} HTTP requests, "
            "mostly generated, malformed or hostile, with the valid ones the tests send around "
            f"them, and {total_examples} Hypothesis examples): **{total_5xx} answered 5xx**.",
            "",
        ]
        if peak:
            worst = peak["worst"]
            lines += [
                f"Memory: {peak['requests']} hostile requests without a valid key were sent to "
                "`alphacut serve` in a process of its own, its peak RSS reset before each "
                f"(`/proc/PID/clear_refs`); the worst raised it by **{worst['bytes'] / 2**20:.1f} "
                f"MB** (`{worst['test']}`; the tests fail over 100 MB).",
                "",
            ]
    lines += [
        (
            'Rerun: `eval "$(scripts/services.sh start)"`, then `.venv/bin/python '
            "bench/reliability.py --only load --distributed`; "
            if distributed
            else "Rerun: `.venv/bin/python bench/reliability.py` (or `bench/run.py --only "
            "reliability`); "
        )
        + "`--requests`, `--concurrency` and `--deadline HH:MM` size the load. Every sample is in "
        "`bench/results/reliability-<time>.json`. A short version of the load runs in "
        "`make test` (`tests/service/test_load.py`: 16 requests at concurrency 4 on the tiny "
        "test model, 0 errors, bounded RSS growth; embedded mode).",
        "",
    ]
    return "\n".join(lines)


def heading(report: dict[str, Any]) -> str:
    return DISTRIBUTED_HEADING if report.get("mode") == "distributed" else FIGURES_HEADING


def write_figures(doc: Path, figures: str) -> None:
    """Replace the section of ``doc`` that ``figures`` heads (up to the next ``## `` heading),
    or put it before "## Not yet" (or at the end) when there is none."""
    text = doc.read_text()
    title = figures.split("\n", 1)[0]
    section = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.M | re.S)
    if section.search(text):
        text = section.sub(lambda _: figures + "\n", text, count=1)
    elif "\n## Not yet" in text:
        text = text.replace("\n## Not yet", "\n" + figures + "\n## Not yet", 1)
    else:
        text = text.rstrip("\n") + "\n\n" + figures
    doc.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500, help="load: requests to send")
    parser.add_argument("--concurrency", type=int, default=8, help="load: concurrent clients")
    parser.add_argument(
        "--deadline",
        help="load: send nothing after this time (HH:MM local, or +MINUTES from the start of "
        "the load); default: 2 hours after the load starts",
    )
    parser.add_argument(
        "--only",
        default="faults,bad_inputs,load",
        help="comma-separated parts: faults, bad_inputs, load (default: all three)",
    )
    parser.add_argument("--test-timeout", type=float, default=900, help="seconds per pytest run")
    parser.add_argument(
        "--worktree",
        action="store_true",
        help="run the working tree instead of a snapshot of HEAD",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="load: on a cluster (an API node and a worker on PostgreSQL, Redis and S3: run "
        '`eval "$(scripts/services.sh start)"` first), written under its own heading',
    )
    parser.add_argument("--doc", type=Path, default=DOC, help="the page to write the figures in")
    parser.add_argument("--no-doc", action="store_true", help="print the figures only")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="rerun nothing: write the figures of a saved bench/results/reliability-*.json",
    )
    args = parser.parse_args(argv)
    if args.render:
        saved: dict[str, Any] = json.loads(args.render.read_text())
        write_figures(args.doc, render(saved))
        log(f"wrote the figures of {args.render} to {args.doc}")
        return saved
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - {"faults", "bad_inputs", "load"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if args.distributed and parts != ["load"]:
        parser.error("--distributed measures the load only: add --only load")
    if "load" in parts and not FP32.is_file():
        parser.error(f"{FP32} is missing: run `alphacut models pull medium`")
    started = dt.datetime.now(dt.UTC)
    commit = git("rev-parse", "--short=12", "HEAD")
    report: dict[str, Any] = {
        "command": "`" + " ".join(["bench/reliability.py", *(argv or sys.argv[1:])]) + "`",
        "date": started.date().isoformat(),
        "started": started.strftime("%H:%M"),
        "commit": commit,
        "machine": machine(),
        "loadavg_start": os.getloadavg()[0],
        "mode": "distributed" if args.distributed else "embedded",
    }
    log(f"commit {commit}, machine {report['machine']}")
    with tempfile.TemporaryDirectory(prefix="alphacut-reliability-") as tmp_name:
        tmp = Path(tmp_name)
        if args.worktree:
            tree = ROOT
            changed = git("status", "--porcelain", "--untracked-files=no", "--", "src", "tests")
            report["tree_note"] = " plus uncommitted changes in the working tree" if changed else ""
        else:
            tree = snapshot_of_head(tmp)
            report["tree_note"] = " (a snapshot of the committed tree)"
        if "faults" in parts:
            report["faults"] = run_faults(tree, tmp, args.test_timeout)
        if "bad_inputs" in parts:
            report["bad_inputs"] = run_bad_inputs(tree, tmp, args.test_timeout)
        if "load" in parts:
            deadline = parse_deadline(args.deadline, 7200)
            log(
                f"load: {args.requests} requests at c={args.concurrency}, nothing sent after "
                f"{dt.datetime.fromtimestamp(deadline):%H:%M:%S}"
            )
            if args.distributed:
                from bench.distributed import cluster_database, cluster_env

                with cluster_database() as database_url:
                    report["load"] = run_load(
                        tree,
                        tmp,
                        args.requests,
                        args.concurrency,
                        deadline,
                        cluster_env(database_url),
                    )
            else:
                report["load"] = run_load(tree, tmp, args.requests, args.concurrency, deadline)
            load = report["load"]
            log(
                f"load: sent {load['sent']}, errors {load['errors']}, "
                f"{load['images_per_s']:.3f} img/s, p50 {load['p50_s']:.1f}s p95 "
                f"{load['p95_s']:.1f}s, RSS first/last {load['rss_first_100_mean_mb']:.0f}/"
                f"{load['rss_last_100_mean_mb']:.0f} MB, slope "
                f"{load['rss_slope_mb_per_100']:+.1f} MB/100"
            )
    report["finished"] = dt.datetime.now(dt.UTC).strftime("%H:%M")
    report["loadavg_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"reliability-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    figures = render(report)
    print(figures)
    if not args.no_doc:
        write_figures(args.doc, figures)
        log(f"wrote the figures to {args.doc}")
    log(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
