"""Single-flight runner and dynamic batching, on the tiny model (CPU, deterministic)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from alphacut.models.inference import ModelRunner
from alphacut.models.registry import ModelSpec
from alphacut.models.session import create_session
from tests.conftest import TINY_SIZE, build_tiny_onnx

SPEC = ModelSpec("tiny", "tiny.onnx", TINY_SIZE, (0.5,) * 3, (0.5,) * 3, "test")


class GatedSession:
    """Wraps a session; ``run`` waits for ``gate`` so that requests pile up in the queue."""

    def __init__(self, session) -> None:
        self.session = session
        self.gate = threading.Event()
        self.batch_sizes: list[int] = []
        self.fail_next = False

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feed):
        self.batch_sizes.append(next(iter(feed.values())).shape[0])
        self.gate.wait(timeout=30)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return self.session.run(names, feed)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runner") / "tiny.onnx"
    build_tiny_onnx(path)  # input [batch, 3, 64, 64]: a dynamic batch dimension
    return path


def _tensors(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.uniform(-1, 1, (3, TINY_SIZE, TINY_SIZE)).astype(np.float32) for _ in range(count)]


def _expected(tensor: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-10.0 * tensor.mean(axis=0)))


def _predict_all(
    runner: ModelRunner, session: GatedSession, tensors: list[np.ndarray]
) -> list[np.ndarray]:
    """Submit every tensor from its own thread while the first run is held at the gate."""
    results: list[np.ndarray | None] = [None] * len(tensors)

    def worker(i: int) -> None:
        results[i] = runner.predict_tensor(tensors[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(tensors))]
    for thread in threads:
        thread.start()
    deadline = time.time() + 10
    # Release the gate once every request is in the held first run or waiting in the queue.
    while sum(session.batch_sizes) + runner.queue_depth < len(tensors) and time.time() < deadline:
        time.sleep(0.01)
    session.gate.set()
    for thread in threads:
        thread.join(timeout=30)
    return [r for r in results if r is not None]


def test_concurrent_predicts_are_batched_and_correct(tiny_path):
    session = GatedSession(create_session(tiny_path, ("cpu",), batch_size=4))
    assert session.get_inputs()[0].shape[0] == "batch"
    runner = ModelRunner(session, SPEC, max_batch=4, max_wait_ms=20)
    try:
        tensors = _tensors(9)
        results = _predict_all(runner, session, tensors)
        assert len(results) == 9
        for tensor, result in zip(tensors, results, strict=True):
            assert result.shape == (TINY_SIZE, TINY_SIZE)
            np.testing.assert_allclose(result, _expected(tensor), atol=1e-5)
        assert runner.items_run == 9
        assert runner.batches_run < runner.items_run
        assert max(session.batch_sizes) > 1 and max(session.batch_sizes) <= 4
    finally:
        runner.close()


def test_batched_output_equals_single_runs(tiny_path):
    session = create_session(tiny_path, ("cpu",), batch_size=4)
    tensors = _tensors(3)
    batch = session.run(None, {"input": np.stack(tensors)})[0]
    for i, tensor in enumerate(tensors):
        single = session.run(None, {"input": tensor[None]})[0]
        np.testing.assert_array_equal(batch[i], single[0])


def test_batch_size_one_never_batches(tiny_path):
    # batch_size=1 pins the model's batch dim to 1, so the runner must not stack requests.
    session = GatedSession(create_session(tiny_path, ("cpu",), batch_size=1))
    assert session.get_inputs()[0].shape[0] == 1
    runner = ModelRunner(session, SPEC, max_batch=8, max_wait_ms=20)
    try:
        assert runner.max_batch == 1
        results = _predict_all(runner, session, _tensors(5))
        assert len(results) == 5
        assert runner.batches_run == runner.items_run == 5
        assert set(session.batch_sizes) == {1}
    finally:
        runner.close()


def test_max_batch_one_on_a_dynamic_model_runs_one_at_a_time(tiny_path):
    session = GatedSession(create_session(tiny_path, ("cpu",), batch_size=4))
    runner = ModelRunner(session, SPEC, max_batch=1)
    try:
        _predict_all(runner, session, _tensors(4))
        assert runner.batches_run == 4 and set(session.batch_sizes) == {1}
    finally:
        runner.close()


def test_a_failed_run_fails_its_callers_and_the_runner_goes_on(tiny_path):
    session = GatedSession(create_session(tiny_path, ("cpu",)))
    session.gate.set()
    session.fail_next = True
    runner = ModelRunner(session, SPEC)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            runner.predict_tensor(_tensors(1)[0])
        tensor = _tensors(1)[0]
        np.testing.assert_allclose(runner.predict_tensor(tensor), _expected(tensor), atol=1e-5)
    finally:
        runner.close()
    with pytest.raises(RuntimeError, match="closed"):
        runner.predict_tensor(tensor)


def test_partial_batches_are_padded_to_warmed_shapes(tiny_model_dir):
    """Only the shapes 1, 2, 4, ..., max_batch reach the session (each tuned once at start)."""
    import threading

    import onnxruntime as ort

    from alphacut.models.inference import ModelRunner
    from alphacut.models.registry import load_sidecar_spec

    spec = load_sidecar_spec(tiny_model_dir / "tiny.json")
    session = ort.InferenceSession(
        str(tiny_model_dir / "tiny.onnx"), providers=["CPUExecutionProvider"]
    )
    seen: list[int] = []

    class RecordingSession:
        def __getattr__(self, name):
            return getattr(session, name)

        def run(self, outputs, feed):
            seen.append(next(iter(feed.values())).shape[0])
            return session.run(outputs, feed)

    runner = ModelRunner(RecordingSession(), spec, max_batch=6, max_wait_ms=500)
    try:
        assert runner.batch_sizes == [1, 2, 4, 6]
        runner.warm_up()
        assert seen == [1, 2, 4, 6]
        values = {-1.0: 0.0, 0.0: 0.5, 1.0: 1.0}
        results: dict[float, float] = {}

        def client(value: float) -> None:
            tensor = np.full((3, spec.input_size, spec.input_size), value, np.float32)
            results[value] = float(runner.predict_tensor(tensor).mean())

        threads = [threading.Thread(target=client, args=(v,)) for v in values]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert set(seen[4:]) <= {1, 2, 4, 6} and sum(seen[4:]) >= 3
        assert 4 in seen[4:] or 2 in seen[4:]  # batched, and padded where partial
        for value, expected in values.items():
            assert abs(results[value] - expected) < 0.01
    finally:
        runner.close()
