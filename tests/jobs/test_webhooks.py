"""Webhook signing, the retry schedule, and deliveries over real HTTP (tiny model)."""

from __future__ import annotations

import time

import pytest

from alphacut.config import Settings
from alphacut.jobs import webhooks
from alphacut.jobs.store import SQLJobStore
from alphacut.jobs.webhooks import WebhookSender, backoff_delay, sign, verify
from tests.conftest import subject_image
from tests.jobhelpers import (
    SECRET,
    WebhookReceiver,
    fetch,
    post,
    submit_and_wait,
    wait_done,
    wait_until,
)


def test_sign_and_verify():
    body = b'{"status": "success"}'
    header = sign(SECRET, body)
    assert header.startswith("t=") and ",v1=" in header
    assert verify(SECRET, body, header)
    assert not verify("other-secret", body, header)
    assert not verify(SECRET, body + b" ", header)  # tampered body
    stale = sign(SECRET, body, int(time.time()) - 3600)
    assert not verify(SECRET, body, stale)  # replayed an hour later
    for broken in ["", "v1=abc", "t=x,v1=abc", "t=1"]:
        assert not verify(SECRET, body, broken)


def test_default_schedule_is_six_attempts_over_about_15_minutes(monkeypatch):
    settings = Settings()
    assert settings.webhook_attempts == 6
    # The five waits between six attempts, without jitter: 7.5 s x 3^n.
    monkeypatch.setattr(webhooks.random, "uniform", lambda low, high: 1.0)
    waits = [backoff_delay(n, settings.webhook_backoff) for n in range(1, 6)]
    assert waits == pytest.approx([7.5, 22.5, 67.5, 202.5, 607.5])
    assert 14 * 60 < sum(waits) < 16 * 60
    # With jitter, each wait stays within +-25% and the waits are not all equal.
    monkeypatch.undo()
    samples = [backoff_delay(3, 7.5) for _ in range(200)]
    assert all(0.75 * 67.5 <= s <= 1.25 * 67.5 for s in samples)
    assert max(samples) - min(samples) > 10
    assert WebhookSender.__init__.__defaults__[:3] == (6, 7.5, 30.0)


def test_gives_up_after_webhook_attempts(live_server, tiny_settings, file_server):
    base, root = file_server
    subject_image()[0].save(root / "hook-subject.png")
    server = live_server(
        tiny_settings, webhook_secret=SECRET, webhook_attempts=3, webhook_backoff=0.1
    )
    with WebhookReceiver(fail_first=99) as receiver:
        done = submit_and_wait(
            server.url, {"image": f"{base}/hook-subject.png", "webhook": receiver.url}
        )
        wait_until(
            lambda: fetch(server.url, done["id"]).get("webhook_status") == "failed",
            what="webhook to give up",
        )
        job = server.state.store.get(done["id"])
        assert [a["status_code"] for a in job.webhook_attempts] == [500, 500, 500]
        assert [a["attempt"] for a in job.webhook_attempts] == [1, 2, 3]
        assert len(receiver.calls) == 3 and all(call["verified"] for call in receiver.calls)
        time.sleep(0.5)  # and nothing more is sent
        assert len(receiver.calls) == 3


def test_unreachable_webhook_is_recorded(live_server, tiny_settings, file_server):
    base, root = file_server
    subject_image()[0].save(root / "hook-subject.png")
    server = live_server(
        tiny_settings, webhook_secret=SECRET, webhook_attempts=2, webhook_backoff=0.1
    )
    with WebhookReceiver() as receiver:
        url = receiver.url
    # The receiver is closed: its port now refuses connections.
    done = submit_and_wait(server.url, {"image": f"{base}/hook-subject.png", "webhook": url})
    wait_until(
        lambda: fetch(server.url, done["id"]).get("webhook_status") == "failed",
        what="webhook to give up",
    )
    attempts = server.state.store.get(done["id"]).webhook_attempts
    assert len(attempts) == 2 and all("error" in a and "status_code" not in a for a in attempts)


def test_failed_job_fetch_and_webhook(live_server, tiny_settings, file_server, tmp_path):
    """A job that fails in the worker: fetch says failed, and the webhook says so too.

    The job is one whose input file vanished before a worker got to it (as when the inputs
    folder is wiped while jobs wait): its row is added through a second store connection,
    as another process sharing the database would, from a request the handler built.
    """
    base, root = file_server
    subject_image()[0].save(root / "hook-subject.png")
    server = live_server(tiny_settings, webhook_secret=SECRET, webhook_backoff=0.2)
    with WebhookReceiver() as receiver:
        ok = submit_and_wait(
            server.url,
            {"image": f"{base}/hook-subject.png", "webhook": receiver.url, "track_id": "order-1"},
        )
        template = server.state.store.get(ok["id"])
        other = SQLJobStore(server.settings.database_url)
        lost = other.create(
            template.owner,
            {
                **template.request,
                "input_path": str(tmp_path / "vanished.input"),
                "file_name": "vanished.png",
                "track_id": 42,
            },
        )
        body = wait_done(server.url, lost.id)
        assert {k: body[k] for k in ("status", "id", "message")} == {
            "status": "failed",
            "id": lost.id,
            "message": "the job's input was lost",
        }
        assert set(body) == {"status", "id", "message", "webhook_status"}
        wait_until(lambda: len(receiver.calls) == 2, what="both webhooks")
        payloads = {call["payload"]["id"]: call["payload"] for call in receiver.calls}
        assert all(call["verified"] for call in receiver.calls)
        assert payloads[lost.id] == {
            "status": "failed",
            "id": lost.id,
            "message": "the job's input was lost",
            "track_id": 42,
        }
        success = payloads[ok["id"]]
        assert success == {
            "status": "success",
            "id": ok["id"],
            "output": ok["output"],
            "generationTime": ok["generationTime"],
            "track_id": "order-1",
            "meta": ok["meta"],
        }
        wait_until(
            lambda: fetch(server.url, lost.id)["webhook_status"] == "delivered",
            what="webhook_status delivered",
        )


def test_webhook_url_obeys_ssrf_rules(live_server, tiny_settings, file_server):
    base, root = file_server
    subject_image()[0].save(root / "hook-subject.png")
    server = live_server(tiny_settings)
    for hook in [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest",
        "ftp://x/hook",
        "http://localhost:1/hook",
    ]:  # localhost is not on the allow-list, 127.0.0.1 is
        response = post(server.url, {"image": f"{base}/hook-subject.png", "webhook": hook})
        assert response.status_code == 400, (hook, response.text)
        assert response.json()["status"] == "error" and "webhook" in response.json()["message"]
    assert server.state.store.count_by_status() == {}  # refused before any job was made
