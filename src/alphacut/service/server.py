"""``alphacut serve``'s uvicorn server, with a drain before it stops.

Plain uvicorn, on SIGTERM, closes its listening socket at once and then waits for open
connections, while the workers would go on claiming queued jobs. Here the first SIGTERM (or
Ctrl-C) starts the drain instead: the server keeps answering (new jobs get 503, fetch and
/readyz work) until the running jobs are done or ``shutdown_grace`` has passed, and only then
lets uvicorn stop. A second signal ends the grace: uvicorn stops now, and jobs still running
stay RUNNING in the store for the next start.

``alphacut serve --workers N`` (the distributed mode only) runs N such servers, each a process
with its own app, sharing one listening socket; a small supervisor passes each SIGTERM or
SIGINT on to every one of them, so each drains as above, and exits once they all have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from alphacut.config import Settings
from alphacut.logs import configure_logging
from alphacut.service.state import ServiceState

log = logging.getLogger(__name__)

# uvicorn.run's exit status when the app failed to start.
STARTUP_FAILURE = 3
# The signals the supervisor of several processes passes on to each of them.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The app of a process of several, named (uvicorn.Config wants one to bind the socket).
_APP = "alphacut.service.app:create_app"


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def service_state(self) -> ServiceState | None:
        """The app's state once its lifespan created it; uvicorn wraps the app in its own
        middlewares (proxy headers, ...), each keeping the next one as ``.app``."""
        app = getattr(self.config, "loaded_app", None)
        while app is not None and not isinstance(app, FastAPI):
            app = getattr(app, "app", None)
        return None if app is None else getattr(app.state, "service", None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = self.service_state()
        if not self.started or state is None or self._loop is None:
            super().handle_exit(sig, frame)  # still starting up: uvicorn's own handling
            return
        # A signal handler may run between any two bytecodes of the loop's thread: hand the
        # work to the loop rather than touch its state here.
        if self._draining:
            self._loop.call_soon_threadsafe(self._end_grace, state)
            super().handle_exit(sig, frame)
        else:
            self._draining = True
            self._loop.call_soon_threadsafe(self._start_drain, state, sig)

    def _start_drain(self, state: ServiceState, sig: int) -> None:
        state.begin_shutdown()
        self._drain_task = asyncio.create_task(self._drain_then_exit(state, sig))

    def _end_grace(self, state: ServiceState) -> None:
        state.end_grace()
        if self._drain_task is not None:
            self._drain_task.cancel()

    async def _drain_then_exit(self, state: ServiceState, sig: int) -> None:
        await state.drain()
        # uvicorn's own wait for open connections gets what is left of the grace (at least
        # 1 s for the answers already being written), so the whole stop stays within it.
        self.config.timeout_graceful_shutdown = max(1, int(state.grace_left()))
        super().handle_exit(sig, None)


def run_server(
    app: FastAPI,
    shutdown_grace: float,
    sockets: list[socket.socket] | None = None,
    **options: Any,
) -> None:
    """Like ``uvicorn.run(app, **options)``, with the drain above (on ``sockets`` if given)."""
    config = uvicorn.Config(app, timeout_graceful_shutdown=max(1, int(shutdown_grace)), **options)
    server = DrainingServer(config)
    if sockets is not None:  # a process of several: stop with the supervisor
        threading.Thread(target=_exit_with_parent, args=(server, os.getppid()), daemon=True).start()
    server.run(sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def run_server_processes(
    settings: Settings, processes: int, log_level: str, **options: Any
) -> None:
    """``processes`` servers of ``settings``' app (distributed mode), sharing one listening
    socket, supervised until each has drained and stopped. ``options`` go to uvicorn."""
    # Bound as uvicorn binds its own (IPv6 hosts, SO_REUSEADDR, inheritable); nothing loaded.
    binding = {name: options[name] for name in ("host", "port") if name in options}
    sock = uvicorn.Config(_APP, log_config=None, **binding).bind_socket()
    supervisor = ProcessSupervisor(settings, sock, log_level, options)
    try:
        status = supervisor.run(processes)
    finally:
        sock.close()
    if status:
        sys.exit(status)


class ProcessSupervisor:
    """Starts the server processes (spawned: a fresh interpreter, as uvicorn's own), starts a
    new one in place of one that died while serving, and passes signals on. A first process
    that failed to start stops them all: the app or the settings would fail the same way
    again. A replacement that fails (the database down as it starts, say) is tried again
    with backoff while the others go on serving."""

    def __init__(
        self, settings: Settings, sock: socket.socket, log_level: str, options: dict[str, Any]
    ) -> None:
        self.settings = settings
        self.sock = sock
        self.log_level = log_level
        self.options = options
        self.context = multiprocessing.get_context("spawn")
        self.received: list[int] = []

    def run(self, processes: int) -> int:
        """0 once every process stopped after a signal; STARTUP_FAILURE if a first one failed
        to start."""
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, lambda sig, frame: self.received.append(sig))
        slots = [_Slot(self._start()) for _ in range(processes)]
        log.info("serving with %d processes: %s", processes, [slot.pid for slot in slots])
        stopping, status = False, 0
        while any(slot.alive for slot in slots) or not stopping:
            while self.received:
                stopping = True  # the first signal drains each process, a second ends its grace
                self._signal(slots, self.received.pop(0))
            for slot in slots:
                if stopping or slot.alive:
                    continue
                if slot.process is not None:  # it just ended
                    if slot.process.exitcode == STARTUP_FAILURE and not slot.replaced:
                        log.error("server process %s failed to start: stopping", slot.pid)
                        stopping, status = True, STARTUP_FAILURE
                        self._signal(slots, signal.SIGTERM)
                        break
                    delay = slot.ended()
                    log.warning(
                        "server process %s exited (%s): starting another in %g s",
                        *_ended(slot.process),
                        delay,
                    )
                    slot.process = None
                if time.monotonic() >= slot.restart_at:
                    slot.start(self._start())
            alive = [slot.process.sentinel for slot in slots if slot.alive and slot.process]
            if alive:
                multiprocessing.connection.wait(alive, 0.5)
            else:  # every slot waits out its backoff
                time.sleep(0.5)
        return status

    def _start(self) -> BaseProcess:
        child = self.context.Process(
            target=_serve_process,
            args=(self.settings, self.sock, self.log_level, self.options),
            name="alphacut-serve",
        )
        child.start()
        return child

    @staticmethod
    def _signal(slots: list[_Slot], sig: int) -> None:
        for slot in slots:
            if slot.alive and slot.pid is not None:
                os.kill(slot.pid, sig)


# A replacement process that ends within this many seconds counts as a failed start: the next
# one waits twice as long as the last, up to RESPAWN_MAX_SECONDS.
RESPAWN_WINDOW_SECONDS = 60.0
RESPAWN_MAX_SECONDS = 30.0


class _Slot:
    """One of the supervisor's server processes, and when to start its next one."""

    def __init__(self, process: BaseProcess) -> None:
        self.process: BaseProcess | None = process
        self.started_at = time.monotonic()
        self.replaced = False  # this process took the place of one that ended
        self.quick_deaths = 0
        self.restart_at = 0.0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def ended(self) -> float:
        """Note that the process ended; the seconds to wait before the next one."""
        quick = time.monotonic() - self.started_at < RESPAWN_WINDOW_SECONDS
        self.quick_deaths = self.quick_deaths + 1 if quick else 0
        delay = min(RESPAWN_MAX_SECONDS, 2.0 ** (self.quick_deaths - 1)) if quick else 0.0
        self.restart_at = time.monotonic() + delay
        return delay

    def start(self, process: BaseProcess) -> None:
        self.process, self.started_at, self.replaced = process, time.monotonic(), True


def _ended(child: BaseProcess) -> tuple[int | None, str]:
    code = child.exitcode
    return child.pid, f"signal {-code}" if code is not None and code < 0 else f"status {code}"


def _serve_process(
    settings: Settings, sock: socket.socket, log_level: str, options: dict[str, Any]
) -> None:
    """One of the processes of ``run_server_processes``: its own app, on the shared socket."""
    # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which passes it
    # on once (twice would end the grace at once).
    os.setpgrp()
    configure_logging(log_level)
    from alphacut.service.app import create_app
    from alphacut.service.limits import uvicorn_options

    # The supervisor's signal, raised again by uvicorn once it stopped: the end, not an error.
    with contextlib.suppress(KeyboardInterrupt):
        run_server(
            create_app(settings),
            settings.shutdown_grace,
            sockets=[sock],
            log_level=log_level,
            **options,
            **uvicorn_options(settings),  # built here: its protocol class cannot be pickled
        )


def _exit_with_parent(server: DrainingServer, parent: int) -> None:
    """Drain and stop if the supervisor dies (SIGKILL, a crash) rather than serve on alone."""
    while os.getppid() == parent:
        threading.Event().wait(1.0)
    server.handle_exit(signal.SIGTERM, None)
