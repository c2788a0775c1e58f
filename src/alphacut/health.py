"""The health check of a container, for both roles: ``python3 -m alphacut.health`` (the image's
HEALTHCHECK) or ``alphacut healthcheck`` (the same check from the CLI).

- A **worker** (``alphacut worker``) writes a heartbeat file, ``<home>/health/worker-<host>-
  <pid>.json``, when it reports ready, and rewrites it every ``ANNOUNCE_INTERVAL`` seconds from
  its heartbeat thread, whether or not the broker answers (a liveness check: restarting a
  worker does not bring a broker back). It is healthy while the file of every live worker
  process of this host is younger than ``max_age``; the file goes when the worker stops.
- An **API node** (``alphacut serve``) is healthy when ``GET /healthz`` on this host answers
  200 (``http://127.0.0.1:7000/healthz`` unless told another port or URL).
- ``auto`` (the default) takes the worker's check where a live worker process of this host
  has a heartbeat file, and the API's otherwise.

This module imports only the standard library, so a probe costs 0.1 s of CPU, not the 0.6 s
the CLI's imports (numpy, OpenCV) take.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["auto", "api", "worker"]
ROLES: tuple[Role, ...] = ("auto", "api", "worker")

# A worker beats every 10 s (worker_models.ANNOUNCE_INTERVAL): six beats missed is a hung
# or stopped heartbeat, not a busy machine.
DEFAULT_MAX_AGE = 60.0
DEFAULT_PORT = 7000
DEFAULT_TIMEOUT = 5.0


def home_folder() -> Path:
    """``ALPHACUT_HOME`` as the settings read it (empty means the default), without importing
    them (pydantic costs a probe 0.4 s)."""
    return Path(os.environ.get("ALPHACUT_HOME") or "~/.alphacut").expanduser()


def heartbeat_folder(home: Path) -> Path:
    return home / "health"


def heartbeat_path(home: Path, pid: int | None = None, host: str | None = None) -> Path:
    """The heartbeat file of one worker process. The host name is in it because the home
    folder may be shared between machines (docs/scaling.md); the pid, because one host may
    run several workers."""
    host = host or socket.gethostname()
    return heartbeat_folder(home) / f"worker-{host}-{pid or os.getpid()}.json"


def write_heartbeat(path: Path, name: str, queue: str, announced: bool | None = None) -> None:
    """Write (atomically) a worker's heartbeat: who it is and when it last beat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "pid": os.getpid(),
        "name": name,
        "queue": queue,
        "time": time.time(),
        "announced": announced,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def remove_heartbeat(path: Path) -> None:
    path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@dataclass(frozen=True)
class Heartbeat:
    path: Path
    pid: int
    name: str
    queue: str
    time: float
    announced: bool | None

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.time


def read_heartbeats(home: Path, host: str | None = None) -> list[Heartbeat]:
    """The heartbeat files of this host's workers, of live processes only (a file left by a
    process that died is ignored; the next worker of the host removes it)."""
    host = host or socket.gethostname()
    found = []
    for path in sorted(heartbeat_folder(home).glob(f"worker-{host}-*.json")):
        try:
            data = json.loads(path.read_text())
            beat = Heartbeat(
                path,
                int(data["pid"]),
                str(data.get("name", "")),
                str(data.get("queue", "")),
                float(data["time"]),
                data.get("announced"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced, or not ours
        if pid_alive(beat.pid):
            found.append(beat)
    return found


def clear_dead_heartbeats(home: Path, host: str | None = None) -> None:
    """Remove this host's heartbeat files whose process is gone (a worker that was killed)."""
    host = host or socket.gethostname()
    for path in heartbeat_folder(home).glob(f"worker-{host}-*.json"):
        try:
            pid = int(path.stem.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if not pid_alive(pid):
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Result:
    healthy: bool
    message: str


def check_worker(home: Path, max_age: float = DEFAULT_MAX_AGE) -> Result:
    beats = read_heartbeats(home)
    if not beats:
        return Result(
            False,
            f"no live worker heartbeat in {heartbeat_folder(home)} for host "
            f"{socket.gethostname()} (is `alphacut worker` running, and ready?)",
        )
    now = time.time()
    stale = [beat for beat in beats if beat.age(now) > max_age]
    if stale:
        return Result(
            False,
            "; ".join(
                f"worker {beat.name or beat.pid} (pid {beat.pid}) last beat "
                f"{beat.age(now):.0f} s ago (more than {max_age:g} s)"
                for beat in stale
            ),
        )
    parts = []
    for beat in beats:
        note = " (its last announcement on the broker failed)" if beat.announced is False else ""
        parts.append(
            f"worker {beat.name or beat.pid} ({beat.queue}) alive, beat {beat.age(now):.0f} s "
            f"ago{note}"
        )
    return Result(True, "; ".join(parts))


def check_api(url: str, timeout: float = DEFAULT_TIMEOUT) -> Result:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (ours)
            status = response.status
    except urllib.error.HTTPError as exc:
        return Result(False, f"{url} answered {exc.code}")
    except (OSError, ValueError) as exc:  # refused, timed out, bad URL
        reason = getattr(exc, "reason", exc)
        return Result(False, f"no API at {url}: {reason}")
    if status != 200:
        return Result(False, f"{url} answered {status}")
    return Result(True, f"API healthy: {url} answered 200")


def api_url(port: int = DEFAULT_PORT, url: str | None = None) -> str:
    return url or f"http://127.0.0.1:{port}/healthz"


def check(
    role: str = "auto",
    *,
    port: int = DEFAULT_PORT,
    url: str | None = None,
    max_age: float = DEFAULT_MAX_AGE,
    timeout: float = DEFAULT_TIMEOUT,
    home: Path | None = None,
) -> Result:
    """The check of ``role`` (``auto``: the worker's where this host has a live worker)."""
    if role not in ROLES:
        return Result(False, f"role must be one of {', '.join(ROLES)}, not {role!r}")
    home = home_folder() if home is None else home
    if role == "worker" or (role == "auto" and read_heartbeats(home)):
        return check_worker(home, max_age)
    return check_api(api_url(port, url), timeout)


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m alphacut.health``: those of ``alphacut healthcheck``."""
    parser = argparse.ArgumentParser(
        prog="python3 -m alphacut.health",
        description="Exit 0 when this host's alphacut API node or worker is healthy, 1 if not.",
    )
    parser.add_argument("--role", choices=ROLES, default="auto")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the API's port")
    parser.add_argument("--url", default=None, help="the API's health URL (instead of --port)")
    parser.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = check(
        args.role, port=args.port, url=args.url, max_age=args.max_age, timeout=args.timeout
    )
    print(("healthy: " if result.healthy else "unhealthy: ") + result.message)
    return 0 if result.healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
