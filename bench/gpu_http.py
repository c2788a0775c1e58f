"""Loopback HTTP load on `alphacut serve` as run on a GPU worker (used by bench/gpu_device.sh).

    python bench/gpu_http.py --photos DIR --requests 64 --concurrency 1,8

Sends each photo as a data URI with the seed's body, downloads the output PNG (a request counts
as done when the client has the image), and prints images/s and p50/p95 latency per level.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import threading
import time
from pathlib import Path

import httpx


def run_level(url: str, bodies: list[dict], requests: int, concurrency: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    todo = iter(range(requests))

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    index = next(todo, None)
                if index is None:
                    return
                started = time.perf_counter()
                try:
                    answer = http.post(
                        f"{url}/api/v5/removebg_mask", json=bodies[index % len(bodies)]
                    )
                    body = answer.json()
                    if body.get("status") != "success":
                        raise RuntimeError(str(body)[:200])
                    http.get(body["output"][0]).raise_for_status()
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(str(exc)[:200])
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "images_per_s": round(len(latencies) / wall, 2),
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(ordered[max(0, round(0.95 * len(ordered)) - 1)], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:7000")
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    bodies = []
    for photo in sorted(args.photos.glob("*.jpg")):
        uri = "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode()
        bodies.append(
            {
                "key": "",
                "seed": 12345,
                "image": uri,
                "post_process_mask": False,
                "only_mask": False,
                "alpha_matting": False,
                "webhook": None,
                "track_id": None,
            }
        )
    run_level(args.url, bodies, 8, 4)  # warm-up
    levels = [
        run_level(args.url, bodies, args.requests, int(c)) for c in args.concurrency.split(",")
    ]
    print(json.dumps(levels))


if __name__ == "__main__":
    main()
