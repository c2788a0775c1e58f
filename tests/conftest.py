"""Shared fixtures: a tiny ONNX model built here, real servers on loopback, image servers."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

import tests.services  # noqa: F401  (first: takes the services' variables out of the environment)
from alphacut.config import Settings, load_settings
from alphacut.models.registry import BUILTIN_MODELS

# Tests never write into the user's home (the mask cache, keys, jobs, outputs): this process and
# every process it starts get a temporary one, whose `models` is the user's model folder (the
# weights `make setup` pulled; their derived graph cache is shared as in normal use).
USER_MODEL_DIR = load_settings().model_dir
TEST_HOME = Path(tempfile.mkdtemp(prefix="alphacut-test-home-"))
if USER_MODEL_DIR.is_dir():
    (TEST_HOME / "models").symlink_to(USER_MODEL_DIR, target_is_directory=True)
os.environ["ALPHACUT_HOME"] = str(TEST_HOME)
os.environ.pop("ALPHACUT_MODEL_DIR", None)  # resolves through the link above
os.environ.pop("ALPHACUT_OUTPUT_DIR", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(TEST_HOME, ignore_errors=True)


# The distributed-mode fixtures (a Celery cluster on the real services) and the S3 store's, for
# any test module.
pytest_plugins = ["tests.s3helpers", "tests.cluster"]

# Small MIT-licensed sample photos kept in the repository (see tests/data/README.md).
PHOTOS = Path(__file__).resolve().parent / "data"
# Research-only evaluation data with ground truth: never in the repository, found only through
# ALPHACUT_EVALDATA (``.ci/run`` sets it where CI has the data); None when unset.
EVALDATA = Path(os.environ["ALPHACUT_EVALDATA"]) if os.environ.get("ALPHACUT_EVALDATA") else None
TINY_SIZE = 64


def evaldata_missing(subset: str) -> str | None:
    """Why ``ALPHACUT_EVALDATA/<subset>`` cannot be used (a skip reason), or None if it can."""
    if EVALDATA is None:
        return (
            "EVALUATION DATA NOT SET: ALPHACUT_EVALDATA is unset; point it at the evaldata "
            "folder (research-only photos with ground truth, never in the repo) to run this test"
        )
    if not (EVALDATA / subset / "images").is_dir():
        return f"EVALUATION DATA MISSING: no {EVALDATA / subset / 'images'} (ALPHACUT_EVALDATA)"
    return None


def requires_evaldata(subset: str) -> pytest.MarkDecorator:
    """Skip mark for tests that read ``ALPHACUT_EVALDATA/<subset>`` (general, matting)."""
    reason = evaldata_missing(subset)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def evaldata(subset: str) -> Path:
    """``ALPHACUT_EVALDATA/<subset>``; skips the calling test, with the reason, if it is missing."""
    reason = evaldata_missing(subset)
    if reason is not None:
        pytest.skip(reason)
    assert EVALDATA is not None
    return EVALDATA / subset


def build_tiny_onnx(path: Path, size: int = TINY_SIZE) -> None:
    """A 'segmenter' that calls bright pixels foreground: sigmoid(10 * mean over channels).

    Input ``input`` [batch, 3, size, size], output ``output`` [batch, 1, size, size]. With
    mean = std = 0.5 preprocessing, pixels brighter than mid-grey score above 0.5, so tests can
    draw images whose correct mask they know.
    """
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1], keepdims=1),
            helper.make_node("Mul", ["mean", "gain"], ["scaled"]),
            helper.make_node("Sigmoid", ["scaled"], ["output"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor("gain", TensorProto.FLOAT, [], [10.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_tiny_model(model_dir: Path, name: str = "tiny") -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    build_tiny_onnx(model_dir / f"{name}.onnx")
    (model_dir / f"{name}.json").write_text(
        json.dumps(
            {
                "input_size": TINY_SIZE,
                "mean": [0.5] * 3,
                "std": [0.5] * 3,
                "licence": "test",
                "description": "tiny test model",
            }
        )
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding ``tiny.onnx`` + ``tiny.json`` (64 px input, mean/std 0.5).

    Its parent is a usable home: ``Engine(Settings(home=tiny_model_dir.parent, model="tiny"))``.
    """
    model_dir = tmp_path_factory.mktemp("tiny-home") / "models"
    write_tiny_model(model_dir)
    return model_dir


def make_tiny_settings(home: Path, model_dir: Path) -> Settings:
    """Embedded-mode settings on the tiny model, with their state in ``home``."""
    return Settings(
        home=home,
        model_dir=model_dir,
        model="tiny",
        url_allowlist=("127.0.0.1",),
        sync_wait=120.0,
        workers=2,
    )


@pytest.fixture
def tiny_settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    return make_tiny_settings(tmp_path / "home", tiny_model_dir)


def real_settings(home: Path) -> Settings:
    """Settings for the real model: weights from the normal model folder, state in ``home``."""
    model_dir = load_settings().model_dir
    # A generous sync wait: a loaded CI machine must not turn a success into "processing".
    return Settings(
        home=home,
        model_dir=model_dir,
        model="medium",
        url_allowlist=("127.0.0.1",),
        workers=2,
        sync_wait=120.0,
    )


def real_model_installed() -> bool:
    return BUILTIN_MODELS["medium"].path(load_settings().model_dir).is_file()


requires_real_model = pytest.mark.skipif(
    not real_model_installed(),
    reason="REAL MODEL MISSING: run `make setup` (alphacut models pull medium); "
    "these tests check the real ISNet pipeline and always run in CI",
)


def run_python_with_tiny_model(
    script: str, home: Path, model_dir: Path
) -> subprocess.CompletedProcess[str]:
    """``python -c script`` in a clean environment whose settings select the tiny model."""
    env = {
        "ALPHACUT_HOME": str(home),
        "ALPHACUT_MODEL_DIR": str(model_dir),
        "ALPHACUT_MODEL": "tiny",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )


def disc(size: int, radius: float) -> np.ndarray:
    """A size x size float32 image: 1 inside a centred circle of ``radius``, 0 outside."""
    yy, xx = np.mgrid[:size, :size]
    return (np.hypot(yy - size / 2, xx - size / 2) < radius).astype(np.float32)


def subject_image(width: int = 200, height: int = 150) -> tuple[Image.Image, np.ndarray]:
    """A bright rectangle on a dark background, and its true mask."""
    array = np.full((height, width, 3), 20, np.uint8)
    mask = np.zeros((height, width), bool)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = True
    array[mask] = (235, 220, 210)
    return Image.fromarray(array), mask


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_uri(image: Image.Image) -> str:
    """``image`` as the API's ``image`` field: a PNG data URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A real uvicorn server on loopback in a thread."""

    def __init__(self, settings: Settings, engine: object | None = None) -> None:
        """``engine``: an already loaded ``Engine`` to share (saves loading the model again)."""
        from alphacut.service.app import create_app
        from alphacut.service.limits import uvicorn_options

        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings, engine)  # type: ignore[arg-type]
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            **uvicorn_options(settings),  # as `alphacut serve` runs it
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 120
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def state(self):
        return self.app.state.service


@pytest.fixture
def tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Records logged with an exception: each test ends by asserting there are none."""
    caplog.set_level(logging.INFO)
    records: list[logging.LogRecord] = []
    yield records
    records.extend(r for r in caplog.records if r.exc_info)


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    """Factory: ``live_server(settings, **overrides)`` starts a server, stopped after the test."""
    started: list[LiveServer] = []

    def start(settings: Settings, **overrides: object) -> LiveServer:
        server = LiveServer(settings.model_copy(update=overrides))
        started.append(server.__enter__())
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, folder) of a loopback HTTP server; tests drop files into the folder."""
    root = tmp_path_factory.mktemp("served")
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


@pytest.fixture
def short_storage_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose storage is unavailable is retried after 0.05, 0.1, 0.2 s (at most), and
    given up after 0.6 s (in production: 2 s to 30 s, for 10 minutes)."""
    from alphacut.jobs import worker

    monkeypatch.setattr(worker, "STORAGE_RETRY_FIRST_SECONDS", 0.05)
    monkeypatch.setattr(worker, "STORAGE_RETRY_MAX_SECONDS", 0.2)
    monkeypatch.setattr(worker, "STORAGE_RETRY_LIMIT_SECONDS", 0.6)
