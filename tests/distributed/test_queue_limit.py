"""The per-key queue limit counts a key's jobs across the whole cluster: jobs accepted by one
API node count against the same key on another (issue 11, "Limits across nodes")."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import subject_image

KEY = "cluster-key"


def test_queue_limit_counts_jobs_accepted_by_another_api_node(
    live_server, shared_cluster, file_server
):
    base, root = file_server
    subject_image()[0].save(root / "queue-limit.png")
    # The shared cluster's workers take the cpu queue only, so these jobs stay queued.
    settings = shared_cluster.settings.model_copy(
        update={"default_queue": "gpu", "max_queued_per_key": 2, "api_keys": (KEY,)}
    )
    first_node, second_node = live_server(settings), live_server(settings)
    body = {"key": KEY, "image": f"{base}/queue-limit.png", "instant_response": True}
    accepted = [
        httpx.post(f"{first_node.url}/api/v5/removebg_mask", json=body, timeout=30)
        for _ in range(2)
    ]
    try:
        assert [answer.json()["status"] for answer in accepted] == ["processing"] * 2
        refused = httpx.post(f"{second_node.url}/api/v5/removebg_mask", json=body, timeout=30)
        assert refused.status_code == 429, refused.text
        reply = refused.json()
        assert reply["status"] == "error" and "too many queued jobs" in reply["message"]
        assert reply["retry_after"] >= 1
        assert refused.headers["Retry-After"] == str(reply["retry_after"])
    finally:  # no gpu worker will ever take them: leave the cluster as it was
        first_node.state.pool.broker.delete(settings.broker_prefix + "gpu")
        for answer in accepted:
            first_node.state.store.fail(answer.json()["id"], "removed by the test", 500)
    # Once they are gone, the key may queue again, through either node.
    again = httpx.post(f"{second_node.url}/api/v5/removebg_mask", json=body, timeout=30)
    try:
        assert again.status_code == 200 and again.json()["status"] == "processing"
    finally:
        first_node.state.pool.broker.delete(settings.broker_prefix + "gpu")
        first_node.state.store.fail(again.json()["id"], "removed by the test", 500)


def test_the_queue_limit_holds_exactly_under_parallel_requests_to_two_api_nodes(
    live_server, shared_cluster, file_server
):
    """50 requests at once, split over two nodes, against a limit of 7: the count and the
    insert are one step per key (the store's per-owner lock), so exactly 7 are accepted."""
    base, root = file_server
    subject_image()[0].save(root / "queue-limit-race.png")
    limit, requests = 7, 50
    settings = shared_cluster.settings.model_copy(
        update={"default_queue": "gpu", "max_queued_per_key": limit, "api_keys": (KEY,)}
    )
    nodes = [live_server(settings), live_server(settings)]
    body = {"key": KEY, "image": f"{base}/queue-limit-race.png", "instant_response": True}
    start = threading.Barrier(requests)

    def send(index: int) -> httpx.Response:
        start.wait()  # all at once
        node = nodes[index % len(nodes)]
        return httpx.post(f"{node.url}/api/v5/removebg_mask", json=body, timeout=60)

    with ThreadPoolExecutor(requests) as pool:
        answers = list(pool.map(send, range(requests)))
    accepted = [answer for answer in answers if answer.status_code == 200]
    try:
        assert len(accepted) == limit, [answer.status_code for answer in answers]
        assert all(answer.json()["status"] == "processing" for answer in accepted)
        for refused in (answer for answer in answers if answer.status_code != 200):
            assert refused.status_code == 429, refused.text
            reply = refused.json()
            assert "too many queued jobs" in reply["message"] and reply["retry_after"] >= 1
            assert refused.headers["Retry-After"] == str(reply["retry_after"])
        assert len({answer.json()["id"] for answer in accepted}) == limit
    finally:  # no gpu worker will ever take them: leave the cluster as it was
        nodes[0].state.pool.broker.delete(settings.broker_prefix + "gpu")
        for answer in accepted:
            nodes[0].state.store.fail(answer.json()["id"], "removed by the test", 500)
