"""S3Storage against the real SeaweedFS S3 gateway of scripts/services.sh (no mocks)."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from alphacut.config import Settings, load_settings
from alphacut.errors import SettingsError, StorageUnavailable
from alphacut.io.s3 import (
    EXPIRES_METADATA,
    ORPHAN_GRACE_SECONDS,
    PRESIGN_MAX_SECONDS,
    S3Storage,
    parse_storage_url,
)
from alphacut.io.storage import LocalStorage, open_storage
from tests.conftest import free_port
from tests.s3helpers import FaultyS3Proxy, s3_settings


@pytest.fixture
def storage(s3_service, s3_prefix, tmp_path) -> S3Storage:
    settings = s3_settings(Settings(home=tmp_path), s3_service, s3_prefix, temp_ttl=60)
    opened = open_storage(settings)
    assert isinstance(opened, S3Storage)
    return opened


def test_settings_choose_the_storage(tmp_path, s3_service):
    assert isinstance(open_storage(Settings(home=tmp_path)), LocalStorage)  # the default
    assert not (tmp_path / "s3").exists()
    with pytest.raises(SettingsError, match="expected s3://BUCKET/PREFIX"):
        load_settings(home=tmp_path, storage_url="/var/outputs")
    with pytest.raises(SettingsError, match="presigned output URLs need"):
        load_settings(home=tmp_path, output_urls="presigned")
    with pytest.raises(SettingsError, match="output_urls='signed'"):
        load_settings(home=tmp_path, storage_url="s3://b/p", output_urls="signed")
    assert parse_storage_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_storage_url("s3://bucket") == ("bucket", "")


def test_outputs_round_trip(storage, s3_service, s3_prefix):
    assert storage.write_output("a.png", b"png-bytes", temp=False, as_base64=False) == "a.png"
    assert storage.write_output("b.png", b"png", temp=True, as_base64=True) == "temp/b.base64"
    assert sorted(s3_service.keys(s3_prefix)) == [
        f"{s3_prefix}/a.png",
        f"{s3_prefix}/temp/b.base64",
    ]
    opened = storage.open_output("a.png")
    assert opened is not None and opened.path is None and opened.size == 9
    assert b"".join(opened.chunks) == b"png-bytes"
    opened = storage.open_output("temp/b.base64")
    assert opened is not None and base64.b64decode(b"".join(opened.chunks)) == b"png"
    head = s3_service.client().head_object(
        Bucket=s3_service.bucket, Key=f"{s3_prefix}/temp/b.base64"
    )
    assert head["ContentType"] == "text/plain"
    assert abs(float(head["Metadata"][EXPIRES_METADATA]) - (time.time() + 60)) < 30
    assert storage.exists("a.png") and not storage.exists("nope.png")
    storage.delete_output("a.png")
    assert not storage.exists("a.png") and storage.open_output("a.png") is None


def test_inputs_round_trip_and_are_never_served(storage, s3_service, s3_prefix):
    reference = storage.save_input("x.input", b"image bytes")
    assert reference == f"s3://{s3_service.bucket}/{s3_prefix}/_inputs/x.input"
    assert storage.read_input(reference) == b"image bytes"
    for relative in ("_inputs/x.input", "../outputs/a.png", "temp/../_inputs/x.input", "a//b", ""):
        assert storage.open_output(relative) is None, relative
        assert not storage.exists(relative), relative
    storage.delete_input(reference)
    storage.delete_input(reference)  # already gone: not an error
    with pytest.raises(FileNotFoundError):
        storage.read_input(reference)
    with pytest.raises(FileNotFoundError):
        storage.read_input("s3://another-bucket/x.input")


def test_presigned_url_is_downloadable_for_its_lifetime(storage):
    storage.write_output("p.png", b"\x89PNG-ish", temp=False, as_base64=False)
    url = storage.presigned_url("p.png", 120)
    assert "X-Amz-Expires=120" in url
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"\x89PNG-ish"
    assert answer.headers["content-type"] == "image/png"
    assert f"X-Amz-Expires={PRESIGN_MAX_SECONDS}" in storage.presigned_url("p.png", 1e12)
    assert "X-Amz-Expires=1&" in storage.presigned_url("p.png", -5)  # expired: 1 s, not 0
    short = storage.presigned_url("p.png", 1)
    time.sleep(2.5)
    assert httpx.get(short).status_code == 403  # the store enforces the lifetime


def test_orphan_sweep_by_prefix(storage, s3_service, s3_prefix):
    """Outputs long past their lifetime whose job is gone are deleted by listing the prefix
    (no lifecycle rules); inputs and fresh outputs stay."""
    storage.output_ttl = 3600
    storage.write_output("old.png", b"1", temp=False, as_base64=False)
    storage.write_output("old.png", b"1", temp=True, as_base64=False)
    reference = storage.save_input("queued.input", b"2")
    assert storage.cleanup_expired(time.time()) == 0  # nothing old enough
    storage._last_sweep = 0.0
    later = time.time() + 3600 + ORPHAN_GRACE_SECONDS + 60
    assert storage.cleanup_expired(later) == 2
    assert s3_service.keys(s3_prefix) == [f"{s3_prefix}/_inputs/queued.input"]
    assert storage.read_input(reference) == b"2"
    assert storage.cleanup_expired(later + 1) == 0  # at most one sweep an hour


def test_unreachable_store_is_retried_then_a_clear_error(s3_service, s3_prefix, tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = s3_settings(Settings(home=tmp_path), s3_service, s3_prefix)
    storage = open_storage(settings.model_copy(update={"s3_endpoint_url": endpoint}))
    assert isinstance(storage, S3Storage)
    storage.backoff = 0.1
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        storage.write_output("a.png", b"x", temp=False, as_base64=False)
    assert time.monotonic() - started >= 0.1 + 0.2 + 0.4  # three waits between four tries
    message = caught.value.message
    assert (
        "unreachable" in message and "after 4 attempts" in message and "write the output" in message
    )
    assert caught.value.status_code == 503
    with pytest.raises(StorageUnavailable, match="unreachable"):
        storage.check_ready()


def test_connection_cut_mid_request_is_retried(storage, s3_service, s3_prefix):
    """A proxy cuts the first output PUTs: the write succeeds on a later attempt."""
    with FaultyS3Proxy(s3_service.endpoint, rb"^PUT /[^ ]*/flaky\.png") as proxy:
        flaky = S3Storage(
            s3_service.client(proxy.endpoint), s3_service.bucket, s3_prefix, backoff=0.05
        )
        original = proxy.cut
        # Cut two attempts, then let the third through.
        attempts = {"n": 0}

        class CutTwice:
            def search(self, data: bytes) -> object:
                if original.search(data):
                    attempts["n"] += 1
                    return attempts["n"] <= 2 or None
                return None

        proxy.cut = CutTwice()  # type: ignore[assignment]
        assert flaky.write_output("flaky.png", b"ok", temp=False, as_base64=False) == "flaky.png"
        assert proxy.cuts == 2
    assert storage.exists("flaky.png")


def test_check_ready_on_a_reachable_bucket(storage, s3_service, s3_prefix, tmp_path):
    storage.check_ready()
    missing = open_storage(
        s3_settings(Settings(home=tmp_path), s3_service, s3_prefix).model_copy(
            update={"storage_url": "s3://no-such-bucket-here/x"}
        )
    )
    with pytest.raises(StorageUnavailable, match="no-such-bucket-here"):
        missing.check_ready()
