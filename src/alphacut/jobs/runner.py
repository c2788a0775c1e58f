"""What the service needs from whatever runs its jobs: the in-process ``WorkerPool`` or, in the
distributed mode, the ``CeleryDispatcher`` that hands jobs to ``alphacut worker`` processes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from PIL import Image

from alphacut.jobs.store import Job


class JobRunner(Protocol):
    running: int  # jobs this process is running now (0 on an API node of a cluster)

    def offer_decoded(self, key: str, image: Image.Image) -> None: ...
    def discard_decoded(self, key: str) -> None: ...
    def add_finished_listener(self, listener: Callable[[Job], None]) -> None: ...
    def check_accepting(self) -> None:
        """Raise an ``AlphacutError`` (503) if a new job could not be run now."""

    def check_model(self, model: str) -> None:
        """Raise an ``AlphacutError`` (422) if no job for ``model`` could run: it is not
        installed where jobs run (may block: off the loop)."""

    def queue_for(self, model: str) -> str | None:
        """The broker queue a job for ``model`` goes to, kept in its request as "queue"; None
        where this process runs its jobs itself (may block: off the loop)."""

    async def submit(self, job: Job) -> None:
        """Hand over a job just created in the store."""

    async def wait_for(self, job_id: int, timeout: float) -> Job | None: ...
    def health_problems(self) -> list[str]:
        """For /readyz: what keeps this runner from taking jobs (may block: off the loop)."""

    async def start(self) -> None: ...
    def begin_drain(self) -> None: ...
    async def wait_idle(self, timeout: float) -> bool: ...
    async def stop(self, grace: float) -> None: ...
