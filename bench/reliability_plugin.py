"""A pytest plugin for bench/reliability.py: counts what a test run sent, writes it as JSON.

Loaded with ``-p bench.reliability_plugin`` and ``ALPHACUT_RELIABILITY_REPORT=<file>``; without
that variable it does nothing. It counts, per test:

* HTTP requests the test sent through httpx (sync and async clients, Starlette's TestClient
  included) or requests (what schemathesis uses), with each answer's status code;
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

import pytest

REPORT_VARIABLE = "ALPHACUT_RELIABILITY_REPORT"


class RunCounts:
    def __init__(self) -> None:
        self.current_test = ""
        self.statuses: dict[str, Counter[int]] = {}
        self.examples: Counter[str] = Counter()
        self.outcomes: dict[str, str] = {}
        self.descriptions: dict[str, str] = {}

    def count_status(self, status_code: int) -> None:
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
            COUNTS.count_status(response.status_code)
            return response

        cls.send = send_async  # type: ignore[attr-defined]
    else:

        @functools.wraps(original)
        def send(self: Any, *args: Any, **kwargs: Any) -> Any:
            response = original(self, *args, **kwargs)
            COUNTS.count_status(response.status_code)
            return response

        cls.send = send  # type: ignore[attr-defined]


def _enabled(config: pytest.Config) -> bool:
    return bool(os.environ.get(REPORT_VARIABLE))


def pytest_configure(config: pytest.Config) -> None:
    if not _enabled(config):
        return
    import httpx
    import requests

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
