"""A pytest plugin for bench/reliability.py: counts what a test run sent, writes it as JSON.

Loaded with ``-p bench.reliability_plugin`` and ``ALPHACUT_RELIABILITY_REPORT=<file>``; without
that variable it does nothing. It counts, per test:

* HTTP requests sent to alphacut through httpx (sync and async clients, Starlette's TestClient
  included) or requests (what schemathesis uses), with each answer's status code. Only answers
  of alphacut's app count: those of an in-process uvicorn server (the tests' ``LiveServer``; its
  port is recorded when uvicorn's Config is made) or of Starlette's TestClient. The server's
  own outbound fetches and webhooks, which run in the same process, and the answers of the
  tests' plain HTTP servers (image hosts, webhook receivers) are left out;
* Hypothesis examples run by a ``@given`` test (its inner test is wrapped with a counter);

and records each test's outcome and the first line of its docstring. Requests written to raw
sockets (the slow-client tests) are not counted.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

REPORT_VARIABLE = "ALPHACUT_RELIABILITY_REPORT"


class RunCounts:
    def __init__(self) -> None:
        self.current_test = ""
        self.statuses: dict[str, Counter[int]] = {}
        self.examples: Counter[str] = Counter()
        self.outcomes: dict[str, str] = {}
        self.alphacut_ports: set[int] = set()
        self.descriptions: dict[str, str] = {}

    def count_status(self, url: Any, status_code: int) -> None:
        """Count an answer if it came from alphacut's app (see the module's docstring)."""
        parsed = urlsplit(str(url))
        from_alphacut = parsed.hostname == "testserver" or (
            parsed.hostname in ("127.0.0.1", "localhost") and parsed.port in self.alphacut_ports
        )
        if from_alphacut:
            self.statuses.setdefault(self.current_test, Counter())[status_code] += 1

    def as_json(self) -> dict[str, Any]:
        tests = {}
        for nodeid in sorted(set(self.outcomes) | set(self.statuses) | set(self.examples)):
            statuses = self.statuses.get(nodeid, Counter())
            tests[nodeid] = {
                "outcome": self.outcomes.get(nodeid, "not run"),
                "description": self.descriptions.get(nodeid, ""),
                "http_requests": sum(statuses.values()),
                "http_5xx": sum(n for code, n in statuses.items() if code >= 500),
                "statuses": {str(code): n for code, n in sorted(statuses.items())},
                "hypothesis_examples": self.examples.get(nodeid, 0),
            }
        return {"tests": tests}


COUNTS = RunCounts()


def _count_responses(cls: type, is_async: bool) -> None:
    original = cls.send  # type: ignore[attr-defined]

    if is_async:

        @functools.wraps(original)
        async def send_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            response = await original(self, *args, **kwargs)
            COUNTS.count_status(response.request.url, response.status_code)
            return response

        cls.send = send_async  # type: ignore[attr-defined]
    else:

        @functools.wraps(original)
        def send(self: Any, *args: Any, **kwargs: Any) -> Any:
            response = original(self, *args, **kwargs)
            COUNTS.count_status(response.request.url, response.status_code)
            return response

        cls.send = send  # type: ignore[attr-defined]


def _enabled(config: pytest.Config) -> bool:
    return bool(os.environ.get(REPORT_VARIABLE))


def pytest_configure(config: pytest.Config) -> None:
    if not _enabled(config):
        return
    import httpx
    import requests
    import uvicorn

    original_config_init = uvicorn.Config.__init__

    @functools.wraps(original_config_init)
    def recording_config_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_config_init(self, *args, **kwargs)
        COUNTS.alphacut_ports.add(self.port)

    uvicorn.Config.__init__ = recording_config_init  # type: ignore[method-assign]
    _count_responses(httpx.Client, is_async=False)
    _count_responses(httpx.AsyncClient, is_async=True)
    _count_responses(requests.Session, is_async=False)


def _counting(nodeid: str, inner_test: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(inner_test)
    def counted(*args: Any, **kwargs: Any) -> Any:
        COUNTS.examples[nodeid] += 1
        return inner_test(*args, **kwargs)

    return counted


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not os.environ.get(REPORT_VARIABLE):
        return
    for item in items:
        function = getattr(item, "obj", None)
        doc = (getattr(function, "__doc__", None) or "").strip()
        COUNTS.descriptions[item.nodeid] = " ".join(doc.split("\n\n")[0].split())
        handle = getattr(function, "hypothesis", None)
        if handle is not None and hasattr(handle, "inner_test"):
            handle.inner_test = _counting(item.nodeid, handle.inner_test)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    COUNTS.current_test = item.nodeid
    try:
        return (yield)
    finally:
        COUNTS.current_test = ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        previous = COUNTS.outcomes.get(report.nodeid)
        if previous in (None, "passed"):  # a failure in teardown still fails the test
            COUNTS.outcomes[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(REPORT_VARIABLE)
    if path:
        Path(path).write_text(json.dumps(COUNTS.as_json(), indent=1))
