"""Where inputs and outputs live, and how outputs are named in URLs.

``Storage`` is what the service and the workers use; ``LocalStorage`` keeps files in folders
on this machine (the default), ``alphacut.io.s3.S3Storage`` keeps them in an S3 bucket.
``open_storage(settings)`` picks one from ``ALPHACUT_STORAGE_URL``.
"""

from __future__ import annotations

import base64
import errno
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from alphacut.errors import StorageFull

if TYPE_CHECKING:
    from alphacut.config import Settings

TEMP_DIR = "temp"
CHUNK_BYTES = 256 * 1024
# Content types of outputs, by suffix, as served and as stored in S3.
_MEDIA_TYPES = {
    ".png": "image/png",
    ".base64": "text/plain",
    ".webp": "image/webp",
    ".jpg": "image/jpeg",
}


def media_type(relative: str) -> str:
    return _MEDIA_TYPES.get(Path(relative).suffix, "application/octet-stream")


@dataclass(frozen=True)
class StoredOutput:
    """An output opened for serving: a local file (served with ranges and ETags) or a stream
    of chunks from remote storage."""

    relative: str
    size: int
    chunks: Iterator[bytes]
    path: Path | None = None


class Storage(Protocol):
    """Uploaded inputs on their way to a worker, and the outputs served at ``/outputs/``."""

    def save_input(self, name: str, data: bytes) -> str:
        """Keep an input until its job ends; returns the reference the worker reads it by."""
        ...

    def read_input(self, reference: str) -> bytes:
        """The input's bytes; raises FileNotFoundError if it is gone."""
        ...

    def delete_input(self, reference: str) -> None:
        """Forget an input (its job ended); a missing one is not an error."""
        ...

    def write_output(self, name: str, data: bytes, temp: bool, as_base64: bool) -> str:
        """Store an output, whole or not at all; returns its path relative to the outputs
        (also its URL path)."""
        ...

    def open_output(self, relative: str) -> StoredOutput | None:
        """The output for a URL path, or None if there is none (or the path is not one)."""
        ...

    def exists(self, relative: str) -> bool: ...

    def delete_output(self, relative: str) -> None: ...

    def cleanup_expired(self, now: float) -> int:
        """Delete outputs left behind past their lifetime (the job store's cleanup deletes
        the others with their jobs); returns how many went."""
        ...

    def check_ready(self) -> None:
        """Raise if the storage cannot be reached (for /readyz)."""
        ...


def open_storage(settings: Settings) -> Storage:
    """The storage ``settings`` name: an S3 bucket for ``storage_url``, else local folders."""
    if settings.storage_url:
        from alphacut.io.s3 import S3Storage  # boto3 only where S3 is used

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.output_dir, settings.home / "inputs")


# A full disk (or an exhausted quota) is an operations problem with a clear remedy: say so,
# rather than "internal error".
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def output_object(name: str, data: bytes, temp: bool, as_base64: bool) -> tuple[str, bytes]:
    """(path relative to the outputs, bytes) of an output as stored and served."""
    if as_base64:
        # The hosted API serves base64 text at <uuid>.base64 instead of the image.
        name = name.rsplit(".", 1)[0] + ".base64"
        data = base64.b64encode(data)
    return (f"{TEMP_DIR}/{name}" if temp else name), data


def _atomic_write(path: Path, data: bytes, disk: str) -> None:
    """Write to a temporary name and rename it into place: readers never see a partial file,
    and a failed write leaves nothing behind. ``disk`` names it in the disk-full error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise StorageFull(f"no space left on the {disk} disk") from exc
        raise


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk


class LocalStorage:
    """Output files under ``root`` (``temp/`` for short-lived ones), inputs under ``inputs``."""

    def __init__(self, root: Path, inputs: Path) -> None:
        self.root = root
        self.inputs = inputs
        root.mkdir(parents=True, exist_ok=True)
        (root / TEMP_DIR).mkdir(exist_ok=True)
        inputs.mkdir(parents=True, exist_ok=True)

    def write_output(self, name: str, data: bytes, temp: bool, as_base64: bool) -> str:
        """Store an output; returns its path relative to ``root`` (also its URL path)."""
        relative, data = output_object(name, data, temp, as_base64)
        _atomic_write(self.root / relative, data, "output")
        return relative

    def resolve(self, relative: str) -> Path | None:
        """The file for a URL path, or None if it escapes the folder or does not exist."""
        path = (self.root / relative).resolve()
        root = self.root.resolve()
        if root not in path.parents or not path.is_file():
            return None
        return path

    def open_output(self, relative: str) -> StoredOutput | None:
        try:
            path = self.resolve(relative)
            size = path.stat().st_size if path is not None else 0
        except (ValueError, OSError):  # a NUL byte, a name too long for the file system
            return None
        if path is None:
            return None
        return StoredOutput(relative, size, _read_chunks(path), path)

    def exists(self, relative: str) -> bool:
        try:
            return self.resolve(relative) is not None
        except (ValueError, OSError):
            return False

    def delete_output(self, relative: str) -> None:
        path = self.resolve(relative)
        if path is not None:
            path.unlink(missing_ok=True)

    def save_input(self, name: str, data: bytes) -> str:
        """Returns the input's absolute path: the reference jobs record (as they always have)."""
        path = self.inputs / name
        _atomic_write(path, data, "input")
        return str(path)

    def read_input(self, reference: str) -> bytes:
        return Path(reference).read_bytes()

    def delete_input(self, reference: str) -> None:
        Path(reference).unlink(missing_ok=True)

    def cleanup_expired(self, now: float) -> int:
        # Expired local outputs go with their jobs (ServiceState.cleanup); nothing else to do.
        return 0

    def check_ready(self) -> None:
        pass  # a local folder: if it were unusable, the server would not have started


# The local storage's name before S3 storage existed.
OutputStorage = LocalStorage
