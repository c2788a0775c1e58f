"""Schemathesis against the live server's OpenAPI document: every operation, generated
requests that fit the schema and ones that break it, each sent without and with a valid key.
No answer may be a 5xx. ``ALPHACUT_FUZZ_EXAMPLES`` sets the examples per operation and mode
(``make fuzz`` runs many more than ``make test``)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

import alphacut.io.fetch
from tests.conftest import LiveServer

KEY = "fuzz-key"
EXAMPLES = int(os.environ.get("ALPHACUT_FUZZ_EXAMPLES", "12"))


@pytest.fixture
def server(live_server, tiny_settings, monkeypatch: pytest.MonkeyPatch) -> LiveServer:
    def no_dns(host: str, port: int) -> list[str]:
        # Generated URLs name random hosts: answer "does not resolve" rather than ask DNS.
        if host in ("127.0.0.1", "localhost"):
            return ["127.0.0.1"]
        raise OSError("no DNS in the fuzz test")

    monkeypatch.setattr(alphacut.io.fetch, "_resolve", no_dns)
    return live_server(tiny_settings, api_keys=(KEY,), sync_wait=5.0, fetch_timeout=2.0)


def with_key(body: Any) -> Any:
    return {**body, "key": KEY} if isinstance(body, dict) else body


def test_no_operation_answers_5xx(server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case: Any) -> None:
                for body in (case.body, with_key(case.body)):
                    case.body = body
                    response = case.call(base_url=server.url)
                    statuses[response.status_code] += 1
                    if response.status_code >= 500:
                        server_errors.append(
                            f"{case.method} {case.formatted_path} -> "
                            f"{response.status_code} {response.text[:200]}"
                        )

            try:
                call()
            except Unsatisfiable:
                pass  # nothing to break: the operation takes no input (negative mode)
    total = sum(statuses.values())
    print(f"schemathesis: {total} requests, statuses {dict(sorted(statuses.items()))}")
    assert total > 0
    assert not server_errors, server_errors[:10]
