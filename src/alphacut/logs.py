"""Structured JSON logs for `alphacut serve` and `alphacut worker`, carrying the request id and
job id, never keys or image data."""

from __future__ import annotations

import contextvars
import json
import logging
import time

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
job_id_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("job_id", default=None)
QUIET_LIBRARY_LOGGERS = ("httpx", "httpcore")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # A record may carry its request id (formatted later, outside the request's context).
        if (request_id := getattr(record, "request_id", None) or request_id_var.get()) is not None:
            entry["request_id"] = request_id
        if (job_id := getattr(record, "job_id", None) or job_id_var.get()) is not None:
            entry["job_id"] = job_id
        fields = getattr(record, "fields", None)  # structured extras, e.g. the access log's
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str | int = "info") -> None:
    """JSON lines on stderr for every logger, at ``level`` ("info", or a number); the same for
    ``alphacut serve`` and ``alphacut worker``. Python's warnings become log lines too."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs every request's full URL at info level: query strings of image and webhook
    # URLs carry signatures and tokens. alphacut's own messages name the host only.
    for name in QUIET_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
