"""Where inputs and outputs live on disk, and how outputs are named in URLs."""

from __future__ import annotations

import base64
import errno
import os
import tempfile
from pathlib import Path

from alphacut.errors import StorageFull

TEMP_DIR = "temp"


# A full disk (or an exhausted quota) is an operations problem with a clear remedy: say so,
# rather than "internal error".
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


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


class OutputStorage:
    """Output files under ``root`` (``temp/`` for short-lived ones), inputs under ``inputs``."""

    def __init__(self, root: Path, inputs: Path) -> None:
        self.root = root
        self.inputs = inputs
        root.mkdir(parents=True, exist_ok=True)
        (root / TEMP_DIR).mkdir(exist_ok=True)
        inputs.mkdir(parents=True, exist_ok=True)

    def write_output(self, name: str, data: bytes, temp: bool, as_base64: bool) -> str:
        """Store an output; returns its path relative to ``root`` (also its URL path)."""
        if as_base64:
            # The hosted API serves base64 text at <uuid>.base64 instead of the image.
            name = name.rsplit(".", 1)[0] + ".base64"
            data = base64.b64encode(data)
        relative = f"{TEMP_DIR}/{name}" if temp else name
        _atomic_write(self.root / relative, data, "output")
        return relative

    def resolve(self, relative: str) -> Path | None:
        """The file for a URL path, or None if it escapes the folder or does not exist."""
        path = (self.root / relative).resolve()
        root = self.root.resolve()
        if root not in path.parents or not path.is_file():
            return None
        return path

    def delete_output(self, relative: str) -> None:
        path = self.resolve(relative)
        if path is not None:
            path.unlink(missing_ok=True)

    def save_input(self, name: str, data: bytes) -> Path:
        path = self.inputs / name
        _atomic_write(path, data, "input")
        return path
