"""One log format for `alphacut serve` and `alphacut worker`: JSON lines with the same fields,
and the beat's periodic passes quiet at the default level (issue 18)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alphacut.jobs.celery_app import (
    CLEANUP,
    DELIVER_DUE_WEBHOOKS,
    DELIVER_WEBHOOK,
    REQUEUE,
    RUN_JOB,
    configure_worker_logging,
)
from alphacut.logs import configure_logging

# The fields of every line; a line may add request_id, job_id, exception and an access-log
# line's own fields.
FIELDS = {"ts", "time", "level", "logger", "message"}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.captureWarnings(False)


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _celery_task_line(logger: str, fmt: str, name: str) -> None:
    """A line as Celery writes it for a task received or succeeded (celery/app/trace.py)."""
    context = {"id": "abc", "name": name, "runtime": 0.01, "return_value": 0}
    logging.getLogger(logger).info(fmt, context, extra={"data": context})


def test_worker_logs_like_serve_and_quiets_the_periodic_passes(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info")
    logging.getLogger("alphacut.service.state").info("serve's line")
    serve = _json_lines(capsys.readouterr().err)
    configure_worker_logging("info")
    for name in (DELIVER_DUE_WEBHOOKS, CLEANUP, REQUEUE, RUN_JOB, DELIVER_WEBHOOK):
        _celery_task_line("celery.worker.strategy", "Task %(name)s[%(id)s] received", name)
        _celery_task_line(
            "celery.app.trace", "Task %(name)s[%(id)s] succeeded: %(return_value)s", name
        )
        logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", "x", name)
    logging.getLogger("celery.app.trace").error(
        "Task %(name)s[%(id)s] raised", {"name": REQUEUE, "id": "abc"}
    )
    logging.getLogger("alphacut.jobs.celery_tasks").info("requeued %d job(s)", 2)
    worker = _json_lines(capsys.readouterr().err)
    assert serve[0].keys() == FIELDS and all(line.keys() == FIELDS for line in worker)
    messages = [str(line["message"]) for line in worker]
    for periodic in (DELIVER_DUE_WEBHOOKS, CLEANUP, REQUEUE):
        assert not any(periodic in m for m in messages if "raised" not in m), messages
    for task in (RUN_JOB, DELIVER_WEBHOOK):  # real work stays logged at info
        assert f"Task {task}[abc] received" in messages
        assert f"Task {task}[abc] succeeded: 0" in messages
    assert f"Task {REQUEUE}[abc] raised" in messages  # failures of a pass are never quieted
    assert "requeued 2 job(s)" in messages  # nor what a pass did
    # At debug level the periodic lines are there, as debug lines.
    configure_worker_logging(logging.DEBUG)
    _celery_task_line("celery.worker.strategy", "Task %(name)s[%(id)s] received", CLEANUP)
    (line,) = _json_lines(capsys.readouterr().err)
    assert line["level"] == "debug" and line["message"] == f"Task {CLEANUP}[abc] received"


def test_a_real_worker_logs_json_and_no_periodic_lines(tmp_path: Path) -> None:
    """`alphacut worker --beat` on Redis: its stderr is JSON lines only; over a few seconds of
    deliver_due_webhooks runs (every second here) none is logged, while a job's task is."""
    from tests.cluster import find_redis

    redis_server, why = find_redis()
    if redis_server is None:
        pytest.skip(why)
    from alphacut.config import Settings
    from alphacut.jobs.celery_app import create_celery

    prefix = f"test-logging-{secrets.token_hex(4)}:"
    env = {
        **os.environ,
        "ALPHACUT_HOME": str(tmp_path / "home"),  # its own SQLite job database
        "ALPHACUT_BROKER_URL": f"{redis_server}/0",
        "ALPHACUT_BROKER_PREFIX": prefix,
        "ALPHACUT_WEBHOOK_BACKOFF": "0.5",  # deliver_due_webhooks every second
    }
    cli = Path(sys.executable).with_name("alphacut")
    err, out = tmp_path / "stderr.log", tmp_path / "stdout.log"
    with err.open("wb") as err_file, out.open("wb") as out_file:
        proc = subprocess.Popen(
            [str(cli), "worker", "--beat"], env=env, stdout=out_file, stderr=err_file
        )
    try:
        deadline = time.time() + 60
        while " ready." not in err.read_text(errors="replace"):
            assert proc.poll() is None and time.time() < deadline, err.read_text()
            time.sleep(0.2)
        sender = create_celery(Settings(broker_url=f"{redis_server}/0", broker_prefix=prefix))
        sender.send_task(RUN_JOB, args=[424242], queue="cpu")  # no such job: "already done"
        sender.close()
        time.sleep(5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    lines = _json_lines(err.read_text())  # fails on any line that is not JSON
    assert all(FIELDS <= line.keys() for line in lines)
    messages = [str(line["message"]) for line in lines]
    assert any(m.endswith(" ready.") for m in messages)
    assert any(f"Task {RUN_JOB}[" in m and "received" in m for m in messages), messages
    assert any(f"Task {RUN_JOB}[" in m and "succeeded" in m for m in messages), messages
    assert not any("deliver_due_webhooks" in m or "deliver-due-webhooks" in m for m in messages)
    assert "-------------- " not in out.read_text()  # no banner
