"""HTTP parts: bounded loopback load on `alphacut serve` and `rembg s`, and the memory soak.

Both servers get the same image bytes as a multipart upload. For alphacut a request counts as
done when the client has the PNG (the JSON answer, then GET of the output URL), which is what
rembg's answer body already is. RSS comes from /proc/<pid>/status: VmHWM is the kernel's peak
(reset before each level with clear_refs), VmRSS is sampled for the soak's trend.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import (
    MODEL_DIR,
    PHOTOS,
    REMBG_VENV,
    children,
    fmt_table,
    make_big_image,
    median,
    percentile,
    proc_memory_kb,
    ratio,
    rembg_home,
)

MODE_FIELDS = {
    "default": {},
    "only_mask": {"only_mask": "true"},
    "post_process_mask": {"post_process_mask": "true"},
}
REMBG_FIELDS = {"default": {}, "only_mask": {"om": "true"}, "post_process_mask": {"ppm": "true"}}
# rembg's POST /api/remove reads these from the query string, the others from the form.
REMBG_QUERY_FIELDS = {"bgc", "extras"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        url: str,
        send: Callable[[httpx.Client, bytes, str], bytes],
        log_path: Path,
    ) -> None:
        self.name, self.url, self.send = name, url, send
        self.log_file = log_path.open("wb")
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=self.log_file, stderr=subprocess.STDOUT
        )
        self.start_seconds = 0.0
        self._started = started

    def ready(self, probe: Callable[[], bool], timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                if probe():
                    self.start_seconds = time.perf_counter() - self._started
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready")

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def memory_mb(self) -> dict[str, float]:
        total = {"VmRSS": 0.0, "VmHWM": 0.0}
        for pid in self.pids():
            for key, kb in proc_memory_kb(pid).items():
                total[key] += kb / 1024
        return total

    def reset_peak(self) -> None:
        for pid in self.pids():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log_file.close()


def start_alphacut(ctx: Any) -> Server:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"

    def send(client: httpx.Client, data: bytes, mode: str) -> bytes:
        answer = client.post(
            f"{url}/api/v5/removebg_mask",
            files={"image": ("image.jpg", data, "image/jpeg")},
            data={"key": "", **MODE_FIELDS[mode]},
        )
        body = answer.json()
        while body.get("status") == "processing":  # only if a job outlives ALPHACUT_SYNC_WAIT
            time.sleep(0.5)
            body = client.post(f"{url}/api/v5/fetch/{body['id']}", json={"key": ""}).json()
        if answer.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"alphacut answered {answer.status_code}: {body}")
        png = client.get(body["output"][0])
        png.raise_for_status()
        return png.content

    env = {
        "ALPHACUT_HOME": str(ctx.tmp / "alphacut-home"),
        "ALPHACUT_MODEL_DIR": str(MODEL_DIR),
        "ALPHACUT_SYNC_WAIT": "600",
        "ALPHACUT_MAX_QUEUED_PER_KEY": "1000",
        **ctx.server_env,
    }
    alphacut_bin = str(Path(sys.executable).with_name("alphacut"))
    server = Server(
        "alphacut",
        [alphacut_bin, "serve", "--port", str(port), "--log-level", "warning"],
        env,
        url,
        send,
        ctx.tmp / "alphacut-serve.log",
    )
    server.ready(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 200)
    return server


def start_rembg(ctx: Any) -> Server:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    home = rembg_home(ctx.tmp, ctx.weights_rembg)
    extras = json.dumps(
        {"model_path": str(home / "models" / "dis_custom" / ctx.weights_rembg.name)}
    )

    def send(client: httpx.Client, data: bytes, mode: str) -> bytes:
        fields = REMBG_FIELDS[mode]
        answer = client.post(
            f"{url}/api/remove",
            params={
                "extras": extras,
                **{k: v for k, v in fields.items() if k in REMBG_QUERY_FIELDS},
            },
            files={"file": ("image.jpg", data, "image/jpeg")},
            data={
                "model": "dis_custom",
                **{k: v for k, v in fields.items() if k not in REMBG_QUERY_FIELDS},
            },
        )
        if answer.status_code != 200 or not answer.content.startswith(b"\x89PNG"):
            raise RuntimeError(f"rembg answered {answer.status_code}: {answer.text[:200]}")
        return answer.content

    # --no-ui: without the Gradio page, rembg's server idles quieter (its best case here).
    cmd = [
        str(REMBG_VENV / "bin" / "rembg"),
        "s",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-ui",
        "--log_level",
        "warning",
    ]
    server = Server("rembg", cmd, {"REMBG_HOME": str(home)}, url, send, ctx.tmp / "rembg-serve.log")
    server.ready(lambda: httpx.get(f"{url}/api", timeout=5).status_code == 200)
    # rembg builds the session on the first request: pay that before measuring.
    with httpx.Client(timeout=600) as client:
        send(client, (PHOTOS / "car-1.jpg").read_bytes(), "default")
    server.start_seconds = time.perf_counter() - server._started
    return server


def run_level(server: Server, jobs: list[tuple[bytes, str]], concurrency: int) -> dict[str, Any]:
    """Send ``jobs`` with ``concurrency`` clients; latency per request, throughput overall."""
    latencies: list[float] = []
    completions: list[tuple[float, float]] = []  # (time, RSS MB) after each request
    errors: list[str] = []
    lock = threading.Lock()
    next_job = iter(range(len(jobs)))

    def client_loop() -> None:
        with httpx.Client(timeout=900) as client:
            while True:
                with lock:
                    index = next(next_job, None)
                if index is None:
                    return
                data, mode = jobs[index]
                started = time.perf_counter()
                try:
                    server.send(client, data, mode)
                    ok = True
                except Exception as exc:  # counted, reported; the run goes on
                    ok = False
                    with lock:
                        errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - started)
                    completions.append((time.perf_counter(), server.memory_mb()["VmRSS"]))

    server.reset_peak()
    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    memory = server.memory_mb()
    return {
        "concurrency": concurrency,
        "requests": len(jobs),
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_s": wall,
        "images_per_s": len(latencies) / wall if wall else 0.0,
        "p50_s": median(latencies),
        "p95_s": percentile(latencies, 95),
        "peak_rss_mb": memory["VmHWM"],
        "final_rss_mb": memory["VmRSS"],
        "rss_after_each_mb": [rss for _, rss in completions],
    }


def http_jobs(count: int) -> list[tuple[bytes, str]]:
    photos = sorted(PHOTOS.glob("*.jpg"))
    return [(photos[i % len(photos)].read_bytes(), "default") for i in range(count)]


def run_http(ctx: Any) -> dict[str, Any]:
    levels = (1, 2, 4)
    count = 8 if ctx.quick else ctx.http_requests
    jobs = http_jobs(count)
    servers = {"alphacut": start_alphacut(ctx), "rembg": start_rembg(ctx)}
    results: dict[str, Any] = {
        name: {"start_s": s.start_seconds, "levels": []} for name, s in servers.items()
    }
    try:
        for i, level in enumerate(levels):
            names = ["alphacut", "rembg"] if i % 2 == 0 else ["rembg", "alphacut"]
            for name in names:
                result = run_level(servers[name], jobs, level)
                results[name]["levels"].append(result)
                ctx.log(
                    f"  {name:8s} c={level}: {result['images_per_s']:.3f} img/s, "
                    f"p50 {result['p50_s']:.2f}s p95 {result['p95_s']:.2f}s, "
                    f"errors {result['errors']}, peak RSS {result['peak_rss_mb']:.0f} MB"
                )
        for name, server in servers.items():
            results[name]["final_rss_mb"] = server.memory_mb()["VmRSS"]
    finally:
        for server in servers.values():
            server.stop()
    table = []
    for a, r in zip(results["alphacut"]["levels"], results["rembg"]["levels"], strict=True):
        table.append(
            [
                a["concurrency"],
                a["images_per_s"],
                r["images_per_s"],
                ratio(a["images_per_s"], r["images_per_s"]),
                a["p50_s"],
                r["p50_s"],
                ratio(a["p50_s"], r["p50_s"]),
                a["p95_s"],
                r["p95_s"],
                f"{a['errors']}/{r['errors']}",
                a["peak_rss_mb"],
                r["peak_rss_mb"],
            ]
        )
    ctx.log(f"\nHTTP loopback, {count} requests per level (photos, default options):")
    ctx.log(
        fmt_table(
            [
                "c",
                "alphacut img/s",
                "rembg img/s",
                "thr. ratio",
                "alphacut p50",
                "rembg p50",
                "p50 ratio",
                "alphacut p95",
                "rembg p95",
                "errors a/r",
                "alphacut peak MB",
                "rembg peak MB",
            ],
            table,
        )
    )
    return results


def run_soak(ctx: Any) -> dict[str, Any]:
    """Mixed requests on alphacut's server; RSS after each one; slope over the last half."""
    count = 40 if ctx.quick else ctx.soak_requests
    photos = sorted(PHOTOS.glob("*.jpg"))
    big = make_big_image(ctx.tmp, ctx.big_source).read_bytes()
    modes = ("default", "only_mask", "post_process_mask")
    jobs = [
        (big if i % 10 == 9 else photos[i % len(photos)].read_bytes(), modes[i % 3])
        for i in range(count)
    ]
    server = start_alphacut(ctx)
    samples: list[float] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(0.5):
            samples.append(server.memory_mb()["VmRSS"])

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        start_rss = server.memory_mb()["VmRSS"]
        result = run_level(server, jobs, ctx.soak_concurrency)
        result["final_rss_mb"] = server.memory_mb()["VmRSS"]
    finally:
        stop.set()
        thread.join()
        server.stop()
    after = result["rss_after_each_mb"]
    tail = after[len(after) // 2 :]
    slope = float(np.polyfit(np.arange(len(tail)), tail, 1)[0]) * 100 if len(tail) > 2 else 0.0
    result.update(
        {
            "start_rss_mb": start_rss,
            "rss_samples_mb": samples,
            "slope_mb_per_100_requests": slope,
            "big_every": 10,
            "sampled_peak_mb": max(samples, default=0.0),
        }
    )
    ctx.log(
        f"\nsoak: {count} mixed requests at c={ctx.soak_concurrency} "
        f"(every 10th a 12 MP image; default/only_mask/post_process_mask): "
        f"errors {result['errors']}, RSS start {start_rss:.0f} MB, peak (VmHWM) "
        f"{result['peak_rss_mb']:.0f} MB, final {result['final_rss_mb']:.0f} MB, slope over "
        f"the last {len(tail)} requests {slope:+.1f} MB per 100 requests, "
        f"{result['images_per_s']:.3f} img/s"
    )
    return result
