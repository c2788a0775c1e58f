"""Webhooks in both modes: signed, retried on the backoff, each carrying the job id."""

from __future__ import annotations

from tests.conftest import subject_image
from tests.jobhelpers import WebhookReceiver, fetch, submit_and_wait, wait_until


def test_webhook_is_signed_retried_and_recorded(live_server, mode_settings, file_server):
    base, root = file_server
    subject_image()[0].save(root / "mode-hook.png")
    server = live_server(mode_settings, webhook_secret="test-webhook-secret", webhook_backoff=0.5)
    with WebhookReceiver(fail_first=1) as receiver:
        done = submit_and_wait(
            server.url,
            {"image": f"{base}/mode-hook.png", "webhook": receiver.url, "track_id": "t-1"},
        )
        wait_until(lambda: len(receiver.calls) == 2, timeout=60, what="a retried delivery")
        assert [call["answered"] for call in receiver.calls] == [500, 200]
        assert all(call["verified"] for call in receiver.calls)
        for call in receiver.calls:
            assert call["payload"]["id"] == done["id"] and call["payload"]["track_id"] == "t-1"
        assert receiver.calls[1]["payload"]["output"] == done["output"]
        wait_until(
            lambda: fetch(server.url, done["id"]).get("webhook_status") == "delivered",
            what="webhook_status delivered",
        )
