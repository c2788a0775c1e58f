"""Inputs and outputs in an S3 bucket (AWS S3, SeaweedFS, MinIO, ...) through boto3.

Layout under ``s3://BUCKET/PREFIX`` (``ALPHACUT_STORAGE_URL``):

- ``PREFIX/<name>``: outputs kept for ``ALPHACUT_OUTPUT_TTL`` (0: for ever);
- ``PREFIX/temp/<name>``: ``temp`` outputs, kept for ``ALPHACUT_TEMP_TTL``;
- ``PREFIX/_inputs/<name>``: uploaded images (and ``bg_image``) waiting for a worker; never
  served, deleted when the job ends.

A PUT is atomic per object, so a reader sees a whole output or none; the worker marks a job
done only after its output's PUT succeeded. Connection failures are retried a few times with
exponential backoff, then the operation fails with ``StorageUnavailable`` (HTTP 503).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from alphacut.errors import SettingsError, StorageUnavailable
from alphacut.io.storage import CHUNK_BYTES, TEMP_DIR, StoredOutput, media_type, output_object

if TYPE_CHECKING:
    from alphacut.config import Settings

log = logging.getLogger(__name__)

INPUTS_DIR = "_inputs"
# SigV4 presigned URLs live at most 7 days.
PRESIGN_MAX_SECONDS = 7 * 24 * 3600
# Metadata on every output object: when it may be deleted (Unix time; absent: never).
EXPIRES_METADATA = "alphacut-expires-at"
# Objects left behind by a crash between deleting a job and its output are swept once they
# are this much older than their lifetime: by then the job row is certainly gone (its
# webhook, which keeps a row past expiry, has long given up).
ORPHAN_GRACE_SECONDS = 24 * 3600.0
# A full sweep lists every object under the prefix: run it at most this often.
ORPHAN_SWEEP_INTERVAL = 3600.0
# A URL path that may name an output: plain segments, no dot-segments, never the inputs.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

T = TypeVar("T")


def parse_storage_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix``); the prefix may be empty."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError("expected s3://BUCKET/PREFIX")
    return parts.netloc, parts.path.strip("/")


def _is_output_path(relative: str) -> bool:
    segments = relative.split("/")
    if segments[0] == INPUTS_DIR or len(segments) > 2:
        return False
    if len(segments) == 2 and segments[0] != TEMP_DIR:
        return False
    return all(_SEGMENT.match(segment) for segment in segments)


class S3Storage:
    """The ``Storage`` of a cluster: every API node and worker sees the same bucket."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        temp_ttl: float = 0.0,
        output_ttl: float = 0.0,
        attempts: int = 4,
        backoff: float = 0.5,
    ) -> None:
        """``client``: a boto3 S3 client; ``attempts`` tries of each operation on connection
        errors, waiting ``backoff`` seconds, then twice as long each time."""
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.temp_ttl = temp_ttl
        self.output_ttl = output_ttl
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._last_sweep = 0.0
        from botocore.exceptions import BotoCoreError, ClientError

        self._client_error: type[Exception] = ClientError
        self._botocore_error: type[Exception] = BotoCoreError

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise SettingsError(
                "ALPHACUT_STORAGE_URL is an s3:// URL, which needs boto3: "
                "pip install 'alphacut[distributed]'"
            ) from None
        bucket, prefix = parse_storage_url(settings.storage_url)
        config = Config(
            connect_timeout=5,
            read_timeout=60,
            # Our own retries (below) with backoff and a clear final error; boto3's would
            # multiply them.
            retries={"total_max_attempts": 1, "mode": "standard"},
            signature_version="s3v4",
            # Self-hosted stores (SeaweedFS, MinIO) answer on one host name: path-style.
            s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
        )
        # Credentials and region come from boto3's usual sources (AWS_ACCESS_KEY_ID, ...).
        client = boto3.session.Session().client(
            "s3", endpoint_url=settings.s3_endpoint_url or None, config=config
        )
        return cls(
            client,
            bucket,
            prefix,
            temp_ttl=settings.temp_ttl,
            output_ttl=settings.output_ttl,
        )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    # --- errors and retries ---------------------------------------------------------------

    def _error_code(self, exc: Exception) -> str:
        if isinstance(exc, self._client_error):
            response: dict[str, Any] = getattr(exc, "response", {})
            return str(response.get("Error", {}).get("Code", ""))
        return ""

    def _is_missing(self, exc: Exception) -> bool:
        return self._error_code(exc) in ("NoSuchKey", "404", "NotFound")

    def _is_transient(self, exc: Exception) -> bool:
        """Worth another try: the store could not be reached, or asked us to slow down."""
        if isinstance(exc, self._client_error):
            response: dict[str, Any] = getattr(exc, "response", {})
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return status >= 500 or self._error_code(exc) in ("SlowDown", "RequestTimeout")
        # Everything else botocore raises here is about the connection: refused, reset,
        # closed early, timed out.
        return isinstance(exc, self._botocore_error)

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        """Run ``operation``, retrying transient failures; a final failure is a clear
        ``StorageUnavailable`` naming ``what`` was being done."""
        for attempt in range(1, self.attempts + 1):
            try:
                return operation()
            except Exception as exc:
                if self._is_missing(exc) or not isinstance(
                    exc, (self._client_error, self._botocore_error)
                ):
                    raise
                if not self._is_transient(exc):
                    raise StorageUnavailable(
                        f"the output storage ({self.url}) refused to {what}: {exc}"
                    ) from exc
                if attempt == self.attempts:
                    raise StorageUnavailable(
                        f"the output storage ({self.url}) is unreachable: could not {what} "
                        f"after {self.attempts} attempts ({exc})"
                    ) from exc
                wait = self.backoff * 2 ** (attempt - 1)
                log.warning(
                    "storage: could not %s (attempt %d of %d, again in %.1f s): %s",
                    what,
                    attempt,
                    self.attempts,
                    wait,
                    exc,
                )
                time.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    # --- inputs ---------------------------------------------------------------------------

    def save_input(self, name: str, data: bytes) -> str:
        key = self._key(f"{INPUTS_DIR}/{name}")
        self._call(
            "store the uploaded image",
            lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data),
        )
        return f"s3://{self.bucket}/{key}"

    def _input_key(self, reference: str) -> str:
        bucket, key = parse_storage_url(reference)
        if bucket != self.bucket:
            raise FileNotFoundError(f"{reference} is not in this storage's bucket")
        return key

    def read_input(self, reference: str) -> bytes:
        key = self._input_key(reference)

        def read() -> bytes:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            return data

        try:
            return self._call("read the job's input", read)
        except self._client_error as exc:
            if self._is_missing(exc):
                raise FileNotFoundError(reference) from exc
            raise

    def delete_input(self, reference: str) -> None:
        # Best effort: the job has ended either way; a leftover input costs only space.
        try:
            key = self._input_key(reference)
            self._call(
                "delete the job's input",
                lambda: self.client.delete_object(Bucket=self.bucket, Key=key),
            )
        except Exception as exc:
            log.warning("storage: could not delete input %s: %s", reference, exc)

    # --- outputs --------------------------------------------------------------------------

    def write_output(self, name: str, data: bytes, temp: bool, as_base64: bool) -> str:
        relative, body = output_object(name, data, temp, as_base64)
        ttl = self.temp_ttl if temp else self.output_ttl
        metadata = {EXPIRES_METADATA: f"{time.time() + ttl:.0f}"} if ttl > 0 else {}
        self._call(
            "write the output",
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(relative),
                Body=body,
                ContentType=media_type(relative),
                Metadata=metadata,
            ),
        )
        return relative

    def open_output(self, relative: str) -> StoredOutput | None:
        if not _is_output_path(relative):
            return None
        try:
            answer = self._call(
                "read the output",
                lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(relative)),
            )
        except self._client_error as exc:
            if self._is_missing(exc):
                return None
            raise
        body = answer["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK_BYTES)
            finally:
                body.close()

        return StoredOutput(relative, int(answer["ContentLength"]), chunks())

    def exists(self, relative: str) -> bool:
        if not _is_output_path(relative):
            return False
        try:
            self._call(
                "look up the output",
                lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(relative)),
            )
        except self._client_error as exc:
            if self._is_missing(exc):
                return False
            raise
        return True

    def delete_output(self, relative: str) -> None:
        if _is_output_path(relative):
            self._call(
                "delete the output",
                lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(relative)),
            )

    def presigned_url(self, relative: str, lifetime: float) -> str:
        """A URL anyone may GET the output at for ``lifetime`` seconds (1 s to 7 days)."""
        seconds = int(min(PRESIGN_MAX_SECONDS, max(1.0, lifetime)))
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(relative)},
            ExpiresIn=seconds,
        )
        return url

    def cleanup_expired(self, now: float) -> int:
        """Delete outputs well past their lifetime that the job store's cleanup missed.

        The job store's cleanup deletes a job's row and then its output, so a client is never
        handed a dangling URL; a crash in between leaks the object, and this sweep, listing
        by prefix (S3 lifecycle rules are not available on every store), collects it.
        """
        if now - self._last_sweep < ORPHAN_SWEEP_INTERVAL:
            return 0
        self._last_sweep = now
        removed = 0
        for prefix, ttl in ((f"{TEMP_DIR}/", self.temp_ttl), ("", self.output_ttl)):
            if ttl > 0:
                removed += self._sweep(prefix, now - ttl - ORPHAN_GRACE_SECONDS)
        return removed

    def _sweep(self, relative_prefix: str, older_than: float) -> int:
        """Delete the outputs directly under ``relative_prefix`` last written before then."""
        root = self._key("")
        paginator = self.client.get_paginator("list_objects_v2")
        # Delimiter "/": outputs lie directly under the prefix (temp/ and _inputs/ apart).
        pages = paginator.paginate(Bucket=self.bucket, Prefix=root + relative_prefix, Delimiter="/")
        removed = 0
        for page in pages:
            stale = [
                {"Key": item["Key"]}
                for item in page.get("Contents", [])
                if item["LastModified"].timestamp() < older_than
                and _is_output_path(item["Key"][len(root) :])
            ]
            if stale:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": stale})
                removed += len(stale)
        return removed

    def create_bucket(self) -> str:
        """Create the bucket unless it exists: "created" or "exists" (``alphacut storage
        init``; safe from several machines at once). Raises botocore's errors as they come."""
        from botocore.exceptions import ClientError

        def error_code(exc: ClientError) -> str:
            return str(exc.response.get("Error", {}).get("Code", ""))

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return "exists"
        except ClientError as exc:
            if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        # AWS wants the region named, except for its default one.
        region = self.client.meta.region_name
        where = {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            self.client.create_bucket(
                Bucket=self.bucket, **(where if region and region != "us-east-1" else {})
            )
        except ClientError as exc:
            if error_code(exc) != "BucketAlreadyOwnedByYou":  # another node was quicker
                raise
            return "exists"
        return "created"

    def check_ready(self) -> None:
        """One HEAD of the bucket, no retries: readiness must answer quickly."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise StorageUnavailable(f"bucket {self.bucket} unreachable: {exc}") from exc
