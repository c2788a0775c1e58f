"""Errors that reach users: each carries the HTTP status the API answers with."""

from __future__ import annotations


class AlphacutError(Exception):
    """Base class. ``status_code`` is the HTTP status; ``str(err)`` is the user-facing message."""

    __module__ = "alphacut"  # public as alphacut.AlphacutError: tracebacks name it so

    status_code: int = 400

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class InvalidRequest(AlphacutError):
    status_code = 422


class Unauthorized(AlphacutError):
    status_code = 401


class InvalidImage(AlphacutError):
    """The bytes are not an image we can decode (or are a truncated/corrupt one)."""

    status_code = 415


class ImageTooLarge(AlphacutError):
    status_code = 413


class FetchError(AlphacutError):
    """An image or webhook URL that is refused or cannot be fetched: the client's problem (4xx)."""

    status_code = 400


class ModelNotAvailable(AlphacutError):
    status_code = 503


class ModelPullError(AlphacutError):
    status_code = 500


class SettingsError(AlphacutError):
    """An ``ALPHACUT_*`` setting with a bad value; the message names each variable and value."""

    status_code = 500


class TooManyJobs(AlphacutError):
    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(AlphacutError):
    """The server is draining before it stops: it takes no new jobs."""

    status_code = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageFull(AlphacutError):
    """No space left on the disk that holds inputs or outputs (HTTP 507 Insufficient Storage)."""

    status_code = 507


class BrokerUnavailable(ShuttingDown):
    """Distributed mode: the job broker (Redis) does not answer, so no job can be accepted
    (HTTP 503 with ``retry_after``, like a draining server)."""


class DatabaseUnavailable(ShuttingDown):
    """The job database cannot be reached (a PostgreSQL restart, a network cut): no job can be
    created or read, so the request is refused with 503 and ``retry_after``."""


class StorageUnavailable(AlphacutError):
    """The output storage (an S3 bucket) could not be reached or refused an operation, after
    retries (HTTP 503, with ``retry_after``: an S3 blip or restart lasts seconds)."""

    status_code = 503
    retry_after = 5
