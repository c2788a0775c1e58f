"""SIGTERM drains: no new jobs (503), running jobs finish within the grace, queued jobs wait.

The draining answers run in-process on the tiny model; the signal itself is sent to a real
``alphacut serve`` on the real model, whose seconds-long jobs give the signal a job to land
on (a 1600x1200 photo with alpha matting: several seconds even on a fast CPU).
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from alphacut.jobs.store import QUEUED, RUNNING, SUCCESS
from tests.conftest import free_port, requires_real_model, subject_image
from tests.jobhelpers import (
    ServerProcess,
    open_job_store,
    post,
    submit_and_wait,
    wait_done,
    wait_until,
)


def begin_shutdown(server) -> None:
    """What the SIGTERM handler does, run on the server's event loop."""
    loop = server.state.background[0].get_loop()
    asyncio.run_coroutine_threadsafe(_begin(server.state), loop).result(timeout=10)


async def _begin(state) -> None:
    state.begin_shutdown()


def test_a_draining_server_refuses_jobs_with_503_and_still_serves_fetch(
    live_server, tiny_settings, file_server
):
    base, root = file_server
    subject_image()[0].save(root / "drain-subject.png")
    server = live_server(tiny_settings, shutdown_grace=30.0)
    done = submit_and_wait(server.url, {"image": f"{base}/drain-subject.png"})

    begin_shutdown(server)
    refused = post(server.url, {"image": f"{base}/drain-subject.png"})
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["status"] == "error" and "shutting down" in body["message"]
    assert 1 <= body["retry_after"] <= 31
    assert refused.headers["Retry-After"] == str(body["retry_after"])
    # Every removebg path, whatever the body: the check comes before the body is read.
    assert httpx.post(server.url + "/api/v6/image_editing/removebg_mask").status_code == 503
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 503 and "shutting down" in ready.json()["message"]
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert wait_done(server.url, done["id"])["status"] == "success"


@pytest.mark.real_model
@requires_real_model
def test_sigterm_finishes_the_running_job_and_leaves_the_queue_for_the_next_start(
    tmp_path, file_server
):
    base, root = file_server
    subject_image(1600, 1200)[0].save(root / "drain-large.png")
    subject_image()[0].save(root / "drain-small.png")
    home, log, port = tmp_path / "home", tmp_path / "server.log", free_port()
    grace = 90.0  # far above the running job's time on a busy CPU: it must finish
    env = {"ALPHACUT_SHUTDOWN_GRACE": str(grace)}

    first = ServerProcess(home, log, port, env)
    try:
        first.wait_ready()
        bodies = [{"image": f"{base}/drain-large.png", "alpha_matting": True}] + [
            {"image": f"{base}/drain-small.png", "seed": n} for n in range(3)
        ]
        answers = [post(first.url, {**body, "instant_response": True}).json() for body in bodies]
        ids = [answer["id"] for answer in answers]
        store = open_job_store(home)
        wait_until(lambda: store.get(ids[0]).status == RUNNING, timeout=150, what="job 1 to run")

        first.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # Draining, not gone: new jobs are refused with a clear 503, fetch still answers.
        refused = post(first.url, bodies[1])
        assert refused.status_code == 503, refused.text
        assert refused.json()["retry_after"] >= 1
        assert httpx.post(f"{first.url}/api/v5/fetch/{ids[1]}", json={}).status_code == 200
        first.proc.wait(timeout=grace + 30)
        stopped_after = time.monotonic() - signalled
    finally:
        first.stop()

    assert stopped_after < grace, stopped_after
    # uvicorn re-raises the signal it handled once it is done, so a drained server ends as
    # "terminated by SIGTERM" (what a service manager expects).
    assert first.proc.returncode in (0, -signal.SIGTERM), first.proc.returncode
    assert "shutting down: no new jobs" in log.read_text()
    running_job = store.get(ids[0])
    assert running_job.status == SUCCESS and running_job.attempts == 1
    assert [store.get(job_id).status for job_id in ids[1:]] == [QUEUED] * 3
    assert [store.get(job_id).attempts for job_id in ids[1:]] == [0] * 3
    assert len(store.list_by_status(QUEUED)) == 3  # the refused request made no job

    second = ServerProcess(home, log, port, env)
    try:
        second.wait_ready()
        for answer in answers:
            done = wait_done(second.url, answer["id"], timeout=240)
            assert done["status"] == "success", done
            assert done["output"] == answer["future_links"]
        assert "resuming" not in log.read_text()  # nothing was left running
        # Each job ran exactly once; the one that finished during the drain was not rerun.
        assert [store.get(job_id).attempts for job_id in ids] == [1] * 4
        assert store.get(ids[0]).finished_at == running_job.finished_at
        assert len(list((home / "outputs").iterdir())) == 4 + 1  # four outputs and temp/
    finally:
        second.stop()


@pytest.mark.real_model
@requires_real_model
def test_a_job_outliving_the_grace_stays_running_and_runs_again_at_the_next_start(
    tmp_path, file_server
):
    base, root = file_server
    subject_image(1600, 1200)[0].save(root / "drain-large.png")
    home, log, port = tmp_path / "home", tmp_path / "server.log", free_port()
    env = {"ALPHACUT_SHUTDOWN_GRACE": "0.5"}

    first = ServerProcess(home, log, port, env)
    try:
        first.wait_ready()
        body = {"image": f"{base}/drain-large.png", "alpha_matting": True, "instant_response": True}
        answer = post(first.url, body).json()
        store = open_job_store(home)
        wait_until(lambda: store.get(answer["id"]).status == RUNNING, timeout=150, what="running")
        first.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        first.proc.wait(timeout=60)
        stopped_after = time.monotonic() - signalled
    finally:
        first.stop()

    # Not held up by the job's thread (closing the engine takes a moment).
    assert stopped_after < 10, stopped_after
    assert "shutdown grace over with 1 job(s) still running" in log.read_text()
    assert store.get(answer["id"]).status == RUNNING  # not failed by the closed engine

    second = ServerProcess(home, log, port, env)
    try:
        second.wait_ready()
        assert wait_done(second.url, answer["id"], timeout=240)["status"] == "success"
        assert "resuming 1 job(s) left running by a stopped server" in log.read_text()
        assert store.get(answer["id"]).attempts == 2
    finally:
        second.stop()
