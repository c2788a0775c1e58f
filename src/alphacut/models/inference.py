"""Single-flight inference with optional dynamic batching.

All inference for one model goes through one thread. On a CPU, concurrent ``session.run`` calls
only fight over the same cores (and multiply peak memory), so requests queue here while their
decoding, resizing and encoding run on other threads. On a GPU, requests that arrive within
``max_wait_ms`` of each other are stacked into one batch (up to ``max_batch``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
from PIL import Image

from alphacut.models.processing import preprocess, to_probability
from alphacut.models.registry import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class _Request:
    tensor: np.ndarray
    future: Future[np.ndarray] = field(default_factory=Future)


class ModelRunner:
    """Thread-safe front of one ONNX Runtime session; ``predict`` may be called from any thread."""

    def __init__(
        self,
        session: ort.InferenceSession,
        spec: ModelSpec,
        max_batch: int = 1,
        max_wait_ms: float = 5.0,
    ) -> None:
        self.session = session
        self.spec = spec
        model_input = session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = session.get_outputs()[0].name
        # A fixed batch dimension of 1 (most exports) means items must run one at a time.
        batch_dim = model_input.shape[0] if model_input.shape else 1
        self.max_batch = max(1, max_batch) if not isinstance(batch_dim, int) else 1
        self.max_wait = max_wait_ms / 1000.0
        self.batches_run = 0
        self.items_run = 0
        self.inference_seconds = 0.0
        self._closed = False
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="alphacut-inference", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def batch_sizes(self) -> list[int]:
        """The batch shapes the session ever sees: 1, 2, 4, ... up to max_batch.

        Partial batches are padded up to the next of these. A GPU provider tunes its kernels
        once per input shape (cuDNN's algorithm search takes seconds), so letting every batch
        size from 1 to N through made the first batches of each size crawl: measured on an H100,
        8 clients got 3.4 images/s with unpadded batches of up to 8, against 28 with batch 1.
        """
        sizes, size = [], 1
        while size < self.max_batch:
            sizes.append(size)
            size *= 2
        return [*sizes, self.max_batch]

    def warm_up(self) -> None:
        """Run every batch shape once, so the first requests do not pay for kernel set-up."""
        size = self.spec.input_size
        for batch in self.batch_sizes:
            zeros = np.zeros((batch, 3, size, size), np.float32)
            self.session.run([self.output_name], {self.input_name: zeros})

    def predict(self, image: Image.Image) -> np.ndarray:
        """Probability map (0..1 float32) at the model's input resolution."""
        return self.predict_tensor(preprocess(image, self.spec))

    def predict_tensor(self, tensor: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError("the model runner is closed")
        request = _Request(tensor)
        self._queue.put(request)
        # The output transform runs here, in the caller's thread, so that the inference thread
        # can start the next run at once.
        return to_probability(request.future.result(), self.spec)

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _collect(self, first: _Request) -> list[_Request]:
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=max(remaining, 0))
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # let the loop see the stop signal after this batch
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._collect(first) if self.max_batch > 1 else [first]
            try:
                started = time.perf_counter()
                stacked = np.stack([req.tensor for req in batch])
                padded = next(size for size in self.batch_sizes if size >= len(batch))
                if padded > len(batch):
                    filler = np.zeros((padded - len(batch), *stacked.shape[1:]), stacked.dtype)
                    stacked = np.concatenate([stacked, filler])
                raw = self.session.run([self.output_name], {self.input_name: stacked})[0]
                self.inference_seconds += time.perf_counter() - started
                self.batches_run += 1
                self.items_run += len(batch)
                for i, req in enumerate(batch):
                    req.future.set_result(raw[i])
            except BaseException as exc:  # a failed run must fail its callers, not the thread
                log.exception("inference failed")
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)
