"""``alphacut serve``'s uvicorn server, with a drain before it stops.

Plain uvicorn, on SIGTERM, closes its listening socket at once and then waits for open
connections, while the workers would go on claiming queued jobs. Here the first SIGTERM (or
Ctrl-C) starts the drain instead: the server keeps answering (new jobs get 503, fetch and
/readyz work) until the running jobs are done or ``shutdown_grace`` has passed, and only then
lets uvicorn stop. A second signal ends the grace: uvicorn stops now, and jobs still running
stay RUNNING in the store for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from alphacut.service.state import ServiceState

log = logging.getLogger(__name__)

# uvicorn.run's exit status when the app failed to start.
STARTUP_FAILURE = 3


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state: ServiceState | None = getattr(self.app.state, "service", None)
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


def run_server(app: FastAPI, shutdown_grace: float, **options: Any) -> None:
    """Like ``uvicorn.run(app, **options)``, with the drain above."""
    config = uvicorn.Config(app, timeout_graceful_shutdown=max(1, int(shutdown_grace)), **options)
    server = DrainingServer(config, app)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
