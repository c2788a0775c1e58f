"""A short version of bench/reliability.py's load: concurrent mixed requests on a live server
(the tiny test model) end in success, with no error and a bounded growth of the server's
memory. The full run (500 requests at concurrency 8 on the real model) is a bench target."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.conftest import PHOTOS

KEY = "load-key"
REQUESTS = 16
CONCURRENCY = 4
WARM_UP = 16
# What 16 requests may add to the RSS of the process (the test's, which runs the server) once
# 16 others have warmed it up: measured here, the first 16 add ~450 MB (model session, arenas,
# malloc arenas of the worker threads), the next ~100 MB at most, later ones nothing (+-40 MB);
# a leak of one decoded photo per request (>= 10 MB each) would exceed it.
RSS_GROWTH_LIMIT_MB = 150
# A round may still grow past the limit once (a fresh malloc arena, the page cache of a
# cleanup, seen in one CI run: +175 MB); a leak grows every round, so up to three are measured.
MEASURED_ROUNDS = 3

MIXED_FIELDS: tuple[dict[str, str], ...] = (
    {},
    {"only_mask": "true"},
    {"alpha_matting": "true"},
    {"post_process_mask": "true"},
)


def rss_mb() -> float:
    """VmRSS of this process, which runs the live server."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def remove_background(client: httpx.Client, url: str, photo: bytes, fields: dict[str, str]) -> str:
    """One request to its end, following a "processing" answer up as the API says; the error,
    or "" on success."""
    answer = client.post(
        f"{url}/api/v5/removebg_mask",
        files={"image": ("photo.jpg", photo, "image/jpeg")},
        data={"key": KEY, **fields},
    )
    reply = answer.json()
    while answer.status_code == 200 and reply.get("status") == "processing":
        time.sleep(0.2)
        answer = client.post(reply["fetch_result"], json={"key": KEY})
        reply = answer.json()
    if answer.status_code != 200 or reply.get("status") != "success":
        return f"{answer.status_code} {reply}"
    output = client.get(reply["output"][0])
    if output.status_code != 200 or not output.content.startswith(b"\x89PNG"):
        return f"output {output.status_code}"
    return ""


def send_concurrently(url: str, count: int, concurrency: int) -> list[str]:
    """``count`` mixed requests from ``concurrency`` clients; the errors."""
    photos = [path.read_bytes() for path in sorted(PHOTOS.glob("*.jpg"))]
    errors: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(count))

    def client_loop() -> None:
        with httpx.Client(timeout=60) as client:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                photo = photos[index % len(photos)]
                error = remove_background(
                    client, url, photo, MIXED_FIELDS[index % len(MIXED_FIELDS)]
                )
                if error:
                    with lock:
                        errors.append(error)

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_mixed_requests_give_no_error_and_bounded_memory(
    live_server, tiny_settings
) -> None:
    server = live_server(tiny_settings, api_keys=(KEY,), workers=2)
    assert send_concurrently(server.url, WARM_UP, CONCURRENCY) == []
    growths: list[float] = []
    for _ in range(MEASURED_ROUNDS):
        rss_before = rss_mb()
        assert send_concurrently(server.url, REQUESTS, CONCURRENCY) == []
        growths.append(rss_mb() - rss_before)
        if growths[-1] < RSS_GROWTH_LIMIT_MB:
            return
    rounds = ", ".join(f"{growth:.0f}" for growth in growths)
    raise AssertionError(f"RSS grew in every round of {REQUESTS} requests: {rounds} MB")
