"""The project as shipped: kept out of the user's files, installed from uv.lock, licensed."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from alphacut import __version__
from alphacut.config import load_settings
from tests.conftest import TEST_HOME, USER_MODEL_DIR

ROOT = Path(__file__).resolve().parent.parent


def test_tests_run_in_a_temporary_home_with_the_users_weights() -> None:
    """make test never fills the user's home (mask cache, jobs, keys): tests/conftest.py gives
    every test process a temporary ALPHACUT_HOME whose models are the user's."""
    settings = load_settings()
    assert settings.home == TEST_HOME
    assert Path(tempfile.gettempdir()).resolve() in TEST_HOME.resolve().parents
    if USER_MODEL_DIR.is_dir():
        assert settings.model_dir.resolve() == USER_MODEL_DIR.resolve()


def _locked_versions() -> dict[str, set[str]]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        versions.setdefault(_canonical(package["name"]), set()).add(package.get("version", ""))
    return versions


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# The project itself, and what `python -m venv` seeds the environment with.
_NOT_LOCKED = {"alphacut", "pip", "setuptools", "wheel"}


def test_installed_packages_are_the_locked_versions() -> None:
    """`make setup` installs exactly uv.lock's versions, whatever PyPI serves today: every
    distribution in the environment is in the lock at the installed version."""
    locked = _locked_versions()
    installed = {
        _canonical(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
    }
    assert installed["alphacut"] == __version__
    off_lock = {
        name: (version, sorted(locked.get(name, set())))
        for name, version in installed.items()
        if name not in _NOT_LOCKED and version not in locked.get(name, set())
    }
    assert not off_lock, f"installed but not as locked (run `make setup`): {off_lock}"


def test_lock_matches_pyproject() -> None:
    """uv.lock was refreshed after the last change to pyproject.toml's dependencies."""
    uv = shutil.which("uv", path=str(ROOT / ".venv" / "bin")) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (make setup installs it into .venv)")
    result = subprocess.run(
        [uv, "lock", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0 and "network" in result.stderr.lower():
        pytest.skip(f"no package index to check the lock against: {result.stderr[-300:]}")
    assert result.returncode == 0, f"uv.lock is stale: run `make lock`\n{result.stderr}"


def test_version_is_written_once() -> None:
    """pyproject.toml takes the version from alphacut.__version__."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("alphacut") == __version__


def test_wheel_and_sdist_carry_the_licence_and_notice(tmp_path: Path) -> None:
    """LICENSE (Apache-2.0) and NOTICE (the weights' AGPL-3.0, the HEIC extra's libraries)
    ship in both distributions, and the wheel's metadata names the licence."""
    uv = shutil.which("uv", path=str(ROOT / ".venv" / "bin")) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (make setup installs it into .venv)")
    result = subprocess.run(
        [uv, "build", "--out-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 and "network" in result.stderr.lower():
        pytest.skip(f"no package index for the build backend: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob(f"alphacut-{__version__}-*.whl")
    (sdist,) = tmp_path.glob(f"alphacut-{__version__}.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"alphacut-{__version__}.dist-info/METADATA").decode()
        licence = archive.read(f"alphacut-{__version__}.dist-info/licenses/LICENSE").decode()
        notice = archive.read(f"alphacut-{__version__}.dist-info/licenses/NOTICE").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Apache License" in licence and "Version 2.0" in licence
    assert "AGPL-3.0" in notice and "pillow-heif" in notice
    assert not [name for name in names if name.endswith(".onnx")], "weights never ship"
    with tarfile.open(sdist) as archive:
        members = {Path(name).name for name in archive.getnames()}
    assert {"LICENSE", "NOTICE", "pyproject.toml"} <= members


def test_the_public_names_agree_and_exceptions_report_alphacut_as_their_module():
    """``__all__``, the lazy exports and the type checker's imports name the same things (as
    httpx's test_exported_members); an exception a user catches is ``alphacut.Name``."""
    import ast

    import alphacut

    assert sorted(alphacut.__all__) == alphacut.__all__
    assert set(alphacut.__all__) == set(alphacut._EXPORTS) | {"__version__"}
    tree = ast.parse(Path(alphacut.__file__).read_text())
    checked = next(node for node in tree.body if isinstance(node, ast.If))  # TYPE_CHECKING
    imports = [node for node in checked.body if isinstance(node, ast.ImportFrom)]
    imported = {alias.name for node in imports for alias in node.names}
    assert imported == set(alphacut._EXPORTS)
    for name in alphacut._EXPORTS:
        value = getattr(alphacut, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert value.__module__ == "alphacut", name
            assert getattr(alphacut, value.__name__) is value


def test_every_module_is_in_the_package_map_of_docs_architecture():
    """docs/architecture.md says where each thing lives: a module it leaves out is a module
    contributors do not find (its layering rules are lint-imports contracts, in make test)."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    table = doc[doc.index("## Package map") :]
    table = table[: table.index("\n## ", 1)]
    rows = {}
    for line in table.splitlines():
        if line.startswith("| `"):
            cells = line.split("|")
            rows[cells[1]] = cells[2]
    package = ROOT / "src" / "alphacut"
    missing = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if "migrations" in relative.parts or relative.parts[-1] == "__init__.py":
            continue
        if len(relative.parts) == 1:  # a top-level module: named in the first column
            listed = any(f"`{path.name}`" in first for first in rows)
        else:  # in its package's row
            row = [what for first, what in rows.items() if f"`{relative.parts[0]}/`" in first]
            listed = bool(row) and f"`{path.name}`" in row[0]
        if not listed:
            missing.append(str(relative))
    assert not missing, f"not in docs/architecture.md's package map: {missing}"
