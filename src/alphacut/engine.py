"""The process-wide model holder: one ONNX Runtime session per model, loaded on first use.

The service, the CLI and the library all go through an ``Engine`` so that every entry point
runs the same pipeline with the same sessions.
"""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image

from alphacut.config import Settings
from alphacut.errors import ModelNotAvailable
from alphacut.models.inference import ModelRunner
from alphacut.models.mask_cache import (
    CachedProbability,
    MaskCache,
    model_identity,
    open_mask_cache,
)
from alphacut.models.registry import ModelSpec, resolve_model
from alphacut.models.session import InputSizeMismatch, create_session
from alphacut.pipeline.decode import decode_image
from alphacut.pipeline.options import RemoveOptions
from alphacut.pipeline.remove import RemoveResult, remove_background


class Engine:
    def __init__(
        self, settings: Settings, warm_up: bool = True, mask_cache: MaskCache | None = None
    ) -> None:
        """``warm_up``: run one inference at load (a server's first user then waits for
        nothing; a one-shot command would only pay for it twice). ``mask_cache``: where model
        outputs are kept (default: on disk under the home folder, ``cache_bytes`` in size)."""
        self.settings = settings
        self.warm_up = warm_up
        self.mask_cache = mask_cache or open_mask_cache(
            settings.home / "cache" / "masks", settings.cache_bytes
        )
        self._runners: dict[str, ModelRunner] = {}
        self._cached_probability: dict[str, CachedProbability] = {}
        self._lock = threading.Lock()

    def spec(self, model: str | None = None) -> ModelSpec:
        return resolve_model(
            model or self.settings.model, self.settings.model_dir, self.settings.input_size
        )

    def runner(self, model: str | None = None) -> ModelRunner:
        name = model or self.settings.model
        runner = self._runners.get(name)
        if runner is not None:
            return runner
        with self._lock:
            runner = self._runners.get(name)
            if runner is None:
                spec = self.spec(name)
                runner = self._load(spec)
                if self.mask_cache is not None:
                    identity = model_identity(
                        spec,
                        spec.runtime_path(self.settings.model_dir),
                        runner.session.get_providers(),
                    )
                    self._cached_probability[name] = CachedProbability(
                        self.mask_cache, runner.predict, identity
                    )
                self._runners[name] = runner
        return runner

    def _load(self, spec: ModelSpec) -> ModelRunner:
        model_dir = self.settings.model_dir
        path = spec.runtime_path(model_dir)
        if not path.is_file():
            hint = spec.install_hint(model_dir)
            raise ModelNotAvailable(f"model {spec.name!r} is not installed ({path}); {hint}")
        try:
            session = create_session(
                path,
                self.settings.providers,
                cache_dir=Path(model_dir) / "cache",
                input_size=spec.input_size,
                batch_size=self.settings.batch_size,
            )
        except InputSizeMismatch as exc:
            raise ModelNotAvailable(str(exc)) from exc
        runner = ModelRunner(session, spec, self.settings.batch_size, self.settings.batch_wait_ms)
        # The first run allocates buffers and picks kernels (seconds for ISNet); pay that at
        # start-up rather than on the first user's request.
        if self.warm_up:
            runner.warm_up()
        return runner

    @property
    def loaded_models(self) -> list[str]:
        return list(self._runners)

    def remove(
        self,
        image: bytes | Image.Image,
        options: RemoveOptions | None = None,
        model: str | None = None,
        background: Image.Image | None = None,
    ) -> RemoveResult:
        """Decode (if bytes) and run the pipeline with ``model`` (default: the configured one)."""
        if isinstance(image, bytes | bytearray):
            image = decode_image(bytes(image), self.settings.max_pixels)
        runner = self.runner(model)
        cached = self._cached_probability.get(model or self.settings.model)
        return remove_background(
            image, runner.predict, options, background, cached, self.settings.max_pixels
        )

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()
        self._cached_probability.clear()
