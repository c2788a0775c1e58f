"""Session creation: provider fallback, the optimised-graph cache, symbolic dims and the
dynamic-dims conversion (on small graphs built here)."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from alphacut.models import session as session_mod
from alphacut.models.convert import make_dims_dynamic
from alphacut.models.session import (
    InputSizeMismatch,
    cache_path,
    choose_providers,
    create_session,
)
from tests.conftest import TINY_SIZE, build_tiny_onnx


@pytest.fixture
def only_cpu(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])


def test_unavailable_providers_fall_back_to_cpu_with_a_log_line(only_cpu, caplog):
    with caplog.at_level(logging.WARNING, logger="alphacut.models.session"):
        assert choose_providers(("tensorrt", "cuda", "openvino", "cpu")) == ["CPUExecutionProvider"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    for provider in (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "OpenVINOExecutionProvider",
    ):
        assert provider in messages


def test_default_providers_are_quiet_on_a_cpu_machine(only_cpu, caplog):
    with caplog.at_level(logging.WARNING, logger="alphacut.models.session"):
        assert choose_providers(()) == ["CPUExecutionProvider"]
    assert not caplog.records


def test_available_gpu_provider_comes_first_and_cpu_is_always_last(monkeypatch):
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert choose_providers(("cuda",)) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(("CUDA", "cuda")) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_gpu_asked_but_session_on_cpu_is_logged(caplog):
    class CpuOnly:
        def get_providers(self):
            return ["CPUExecutionProvider"]

        def get_inputs(self):
            return []

    with caplog.at_level(logging.WARNING, logger="alphacut.models.session"):
        session_mod._check_session(
            CpuOnly(), ["CUDAExecutionProvider", "CPUExecutionProvider"], 0, Path("m.onnx")
        )
    assert "runs on" in caplog.text and "CUDA" in caplog.text


def _conv_model(path: Path, seed: int = 1) -> None:
    """A 3x3 convolution (432 weights: large enough to go to the side file), then a sigmoid."""
    weights = np.random.default_rng(seed).normal(0, 0.1, (16, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("ReduceMean", ["conv"], ["mean"], axes=[1], keepdims=1),
            helper.make_node("Sigmoid", ["mean"], ["output"]),
        ],
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, TINY_SIZE, TINY_SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, TINY_SIZE, TINY_SIZE])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _run(session: ort.InferenceSession) -> np.ndarray:
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    return session.run(None, {"input": x})[0]


def test_optimised_graph_cache_is_written_once_and_reused(tmp_path, caplog):
    model = tmp_path / "conv.onnx"
    _conv_model(model)
    cache = tmp_path / "cache"
    first = create_session(model, ("cpu",), cache_dir=cache, input_size=TINY_SIZE)
    cached = cache_path(cache, model, TINY_SIZE, 1)
    # The graph and, beside it, its weights (and the savers' lock); no temporary files left.
    weights = [p for p in cache.iterdir() if p != cached and p.suffix != ".lock"]
    assert cached.is_file() and len(weights) == 1 and weights[0].suffix == ".data"
    assert weights[0].name.startswith(cached.name) and cached.stat().st_size < 1024
    with caplog.at_level(logging.INFO, logger="alphacut.models.session"):
        second = create_session(model, ("cpu",), cache_dir=cache, input_size=TINY_SIZE)
    assert "cached graph" in caplog.text
    np.testing.assert_array_equal(_run(first), _run(second))
    # Different pinned dims are a different graph, so a different cache file.
    assert cache_path(cache, model, TINY_SIZE, 4) != cached


def test_a_replaced_model_is_optimised_again_and_the_old_graph_removed(tmp_path):
    """Any other model file under the same name (even one given an older mtime, as ``cp -p``
    does) gets its own saved graph; the old graph, its weights and the format before side files
    go."""
    model = tmp_path / "conv.onnx"
    _conv_model(model, seed=1)
    cache = tmp_path / "cache"
    create_session(model, ("cpu",), cache_dir=cache, input_size=TINY_SIZE)
    old = cache_path(cache, model, TINY_SIZE, 1)
    (old_weights,) = cache.glob("*.data")
    legacy = cache / f"{session_mod._graph_prefix(model, TINY_SIZE, 1)}.opt.onnx"
    legacy.write_bytes(b"a graph saved with its weights inline, by an earlier version")
    before = model.stat().st_mtime - 100
    _conv_model(model, seed=2)  # other weights, copied in with an older mtime
    os.utime(model, (before, before))
    reference = _run(create_session(model, ("cpu",)))
    np.testing.assert_array_equal(
        _run(create_session(model, ("cpu",), cache_dir=cache, input_size=TINY_SIZE)), reference
    )
    new = cache_path(cache, model, TINY_SIZE, 1)
    (new_weights,) = cache.glob("*.data")
    assert new != old and new_weights != old_weights
    # The old graph, its weights and lock, and the legacy file are gone.
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [new.name, new_weights.name, f"{new.name}.lock"]
    )


def test_sessions_created_at_once_leave_one_whole_cache(tmp_path, caplog):
    """Servers, workers and threads may start together on an empty cache: each optimises and
    saves under its own names, the last rename wins, and the next start loads that one."""
    model = tmp_path / "conv.onnx"
    _conv_model(model)
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(4) as pool:
        sessions = list(
            pool.map(
                lambda _: create_session(model, ("cpu",), cache_dir=cache, input_size=TINY_SIZE),
                range(4),
            )
        )
    outputs = [_run(session) for session in sessions]
    for output in outputs[1:]:
        np.testing.assert_array_equal(output, outputs[0])
    cached = cache_path(cache, model, TINY_SIZE, 1)
    names = sorted(p.name for p in cache.iterdir() if p.suffix != ".lock")
    assert len(names) == 2 and cached.name in names and not [n for n in names if n[0] == "."]
    caplog.clear()  # a start that read a graph while another replaced it optimised again: fine
    with caplog.at_level(logging.INFO, logger="alphacut.models.session"):
        np.testing.assert_array_equal(
            _run(create_session(model, ("cpu",), cache_dir=cache, input_size=TINY_SIZE)),
            outputs[0],
        )
    assert "cached graph" in caplog.text and "did not load" not in caplog.text


def test_a_cache_that_cannot_be_written_still_loads_the_model(tmp_path, monkeypatch, caplog):
    """A save that fails inside ONNX Runtime (a full disk, the folder removed) or a lock that
    cannot be taken (NFS without locks) costs the cache, never the session."""
    model = tmp_path / "conv.onnx"
    _conv_model(model)
    reference = _run(create_session(model, ("cpu",)))
    real_session = ort.InferenceSession

    def failing_save(path, sess_options=None, **kwargs):
        if sess_options is not None and sess_options.optimized_model_filepath:
            raise RuntimeError("No space left on device")
        return real_session(path, sess_options=sess_options, **kwargs)

    cache = tmp_path / "cache"
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(ort, "InferenceSession", failing_save)
        np.testing.assert_array_equal(
            _run(create_session(model, ("cpu",), cache_dir=cache, input_size=TINY_SIZE)),
            reference,
        )
    assert "No space left on device" in caplog.text
    assert [p.name for p in cache.iterdir()] == []  # nothing half-written left behind

    def no_locks(*args):
        raise OSError(37, "No locks available")

    monkeypatch.setattr("fcntl.flock", no_locks)
    np.testing.assert_array_equal(
        _run(create_session(model, ("cpu",), cache_dir=cache, input_size=TINY_SIZE)), reference
    )
    assert cache_path(cache, model, TINY_SIZE, 1).is_file()


def test_a_dead_saves_leftovers_are_removed_by_the_next_save(tmp_path):
    model = tmp_path / "conv.onnx"
    _conv_model(model)
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache_path(cache, model, TINY_SIZE, 1)
    hour_ago = time.time() - 3700
    dead = [
        cache / f".{cached.name}.1-dead.tmp",
        cache / f"{cached.name}.1-dead.data",
        cache / f"{cached.name}.1-dead.data.saving",
    ]
    running = [cache / f"{cached.name}.2-busy.data", cache / f"{cached.name}.2-busy.data.saving"]
    for path in dead + running:
        path.write_bytes(b"x")
    for path in dead:
        os.utime(path, (hour_ago, hour_ago))
    create_session(model, ("cpu",), cache_dir=cache, input_size=TINY_SIZE)
    assert not any(p.exists() for p in dead)
    assert all(p.exists() for p in running)  # another save, still writing


@pytest.mark.parametrize("damage", ["weights removed", "graph truncated"])
def test_a_damaged_saved_graph_is_optimised_again(tmp_path, caplog, damage):
    model = tmp_path / "conv.onnx"
    _conv_model(model)
    cache = tmp_path / "cache"
    reference = _run(create_session(model, ("cpu",), cache_dir=cache, input_size=TINY_SIZE))
    cached = cache_path(cache, model, TINY_SIZE, 1)
    if damage == "weights removed":
        next(cache.glob("*.data")).unlink()
    else:
        cached.write_bytes(cached.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="alphacut.models.session"):
        session = create_session(model, ("cpu",), cache_dir=cache, input_size=TINY_SIZE)
    assert "did not load" in caplog.text
    np.testing.assert_array_equal(_run(session), reference)
    # Saved again, whole: the next start loads it.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alphacut.models.session"):
        create_session(model, ("cpu",), cache_dir=cache, input_size=TINY_SIZE)
    assert "cached graph" in caplog.text and "did not load" not in caplog.text


def test_unwritable_cache_still_loads(tmp_path):
    model = tmp_path / "tiny.onnx"
    build_tiny_onnx(model)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    session = create_session(model, ("cpu",), cache_dir=blocker / "cache")
    assert session.get_inputs()[0].name == "input"


def test_fixed_input_size_mismatch_is_a_clear_error(tmp_path):
    model = tmp_path / "tiny.onnx"
    build_tiny_onnx(model)  # fixed 64x64 spatial dims
    with pytest.raises(InputSizeMismatch, match="fixed input size"):
        create_session(model, ("cpu",), input_size=32)
    assert create_session(model, ("cpu",), input_size=TINY_SIZE)


def _traced_model(size: int) -> onnx.ModelProto:
    """ISNet's pattern in miniature: pool by 2, then Resize back to a traced constant size
    (Concat(Shape(x)[0:2], const[size, size])), added to the input, mean, sigmoid."""
    half = helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 3, size // 2, size // 2])
    nodes = [
        helper.make_node("MaxPool", ["input"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["pooled"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "two"], ["nc"]),
        helper.make_node(
            "Constant",
            [],
            ["traced"],
            value=numpy_helper.from_array(np.array([size, size], np.int64)),
        ),
        helper.make_node("Concat", ["nc", "traced"], ["sizes"], axis=0),
        helper.make_node("Resize", ["pooled", "", "", "sizes"], ["up"], mode="linear"),
        helper.make_node("Add", ["up", "input"], ["sum"]),
        helper.make_node("ReduceMean", ["sum"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["mean"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "traced",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, size, size])],
        [
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([2], np.int64), "two"),
        ],
        value_info=[half],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def test_dynamic_dims_conversion_runs_other_sizes_and_batches(tmp_path):
    static_path, dynamic_path = tmp_path / "static.onnx", tmp_path / "dynamic.onnx"
    onnx.save(_traced_model(128), str(static_path))
    model = _traced_model(128)
    assert make_dims_dynamic(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dynamic_path))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 128, 128)).astype(np.float32)
    static = ort.InferenceSession(str(static_path), providers=["CPUExecutionProvider"])
    reference = [static.run(None, {"input": x[i : i + 1]})[0] for i in range(2)]
    # Default size: identical to the original graph, alone or as a batch of two.
    pinned = create_session(dynamic_path, ("cpu",), input_size=128)
    np.testing.assert_array_equal(pinned.run(None, {"input": x[:1]})[0], reference[0])
    batched = create_session(dynamic_path, ("cpu",), input_size=128, batch_size=2)
    out = batched.run(None, {"input": x})[0]
    np.testing.assert_allclose(out[0], reference[0][0], atol=1e-6)
    np.testing.assert_allclose(out[1], reference[1][0], atol=1e-6)
    # Another size: the same as a graph traced at that size.
    for size in (64, 192):
        y = rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
        traced = tmp_path / f"traced{size}.onnx"
        onnx.save(_traced_model(size), str(traced))
        expected = ort.InferenceSession(str(traced), providers=["CPUExecutionProvider"]).run(
            None, {"input": y}
        )[0]
        got = create_session(dynamic_path, ("cpu",), input_size=size).run(None, {"input": y})[0]
        np.testing.assert_allclose(got, expected, atol=1e-6)
