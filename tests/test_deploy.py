"""Deployment files (Dockerfile, deploy/compose.yaml, deploy/k8s/): no container engine runs
here, so these tests check that the files parse, use only settings the code reads, and run
commands and flags the CLI has."""

from __future__ import annotations

import re
import shlex
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


def test_the_dockerfile_parses_pulls_the_model_and_runs_as_a_user():
    dockerfile = pytest.importorskip("dockerfile", reason="pip install dockerfile (test extra)")
    commands = dockerfile.parse_file(str(DOCKERFILE))
    runs = " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN")
    assert "alphacut models pull medium" in runs
    users = [c.value[0] for c in commands if c.cmd == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(c.cmd == "HEALTHCHECK" for c in commands)
    args = {c.value[0].split("=")[0] for c in commands if c.cmd == "ARG"}
    assert {"BASE", "VARIANT"} <= args  # the CUDA variant is a build argument


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
