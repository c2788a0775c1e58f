"""kill -9 loses no accepted job: the server runs as a real process, is killed and restarted."""

from __future__ import annotations

import io
import signal

import httpx
import pytest
from PIL import Image

from alphacut.jobs.store import QUEUED, RUNNING, SQLJobStore, sqlite_url
from tests.conftest import free_port, requires_real_model, subject_image
from tests.jobhelpers import ServerProcess, post, wait_done, wait_until

pytestmark = [pytest.mark.real_model, requires_real_model]


def test_kill_9_then_restart_finishes_every_job(tmp_path, file_server):
    base, root = file_server
    subject_image()[0].save(root / "restart-subject.png")
    home = tmp_path / "home"
    log = tmp_path / "server.log"

    port = free_port()  # the restart reuses it, so the URLs handed out stay valid
    first = ServerProcess(home, log, port)
    try:
        first.wait_ready()
        answers = [
            post(
                first.url,
                {"image": f"{base}/restart-subject.png", "seed": n, "instant_response": True},
            ).json()
            for n in range(4)
        ]
        assert all(answer["status"] == "processing" for answer in answers), answers
        ids = [answer["id"] for answer in answers]
        store = SQLJobStore(sqlite_url(home / "jobs.sqlite3"))  # read alongside the server (WAL)
        wait_until(
            lambda: store.get(ids[0]).status == RUNNING, timeout=150, what="the first job to run"
        )
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=30)
    finally:
        first.stop()

    # What the killed server left: one job mid-run under a now-dead pid, the rest queued.
    statuses = {job_id: store.get(job_id).status for job_id in ids}
    assert statuses[ids[0]] == RUNNING and statuses[ids[-1]] == QUEUED, statuses
    killed_worker = store.get(ids[0]).worker
    assert killed_worker.endswith(f":{first.proc.pid}")

    second = ServerProcess(home, log, port)
    try:
        second.wait_ready()
        for answer in answers:
            done = wait_done(second.url, answer["id"], timeout=240)
            assert done["status"] == "success", done
            # The URL promised before the crash is the one that now serves the result.
            assert done["output"] == answer["future_links"]
            assert done["meta"]["seed"] == answer["meta"]["seed"]
            png = httpx.get(done["output"][0], timeout=30)
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(png.content)).size == (200, 150)
        # Requeued at start-up because its pid is dead, not 60 s later when its lease ran
        # out: jobs are claimed in id order, so it ran first.
        assert "resuming 1 job(s) left running by a stopped server" in log.read_text()
        finished = [store.get(job_id).finished_at for job_id in ids]
        assert finished == sorted(finished)
        rerun = store.get(ids[0])
        assert rerun.attempts == 2 and rerun.worker.endswith(f":{second.proc.pid}")
        assert all(store.get(job_id).attempts == 1 for job_id in ids[1:])
        assert not list((home / "inputs").iterdir())  # inputs are removed once jobs end
    finally:
        second.stop()
