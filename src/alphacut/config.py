"""Settings read from ``ALPHACUT_*`` environment variables.

Settings are read once per process (``Settings.from_env()``) and passed down explicitly, so tests
can build an app with any configuration without touching the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"ALPHACUT_{name}", default).strip()


def _env_float(name: str, default: float) -> float:
    raw = _env(name)
    return float(raw) if raw else default


def _env_int(name: str, default: int) -> int:
    raw = _env(name)
    return int(raw) if raw else default


def _env_bool(name: str, default: bool) -> bool:
    raw = _env(name).lower()
    if not raw:
        return default
    return raw in {"1", "true", "yes", "on"}


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in _env(name).split(",") if part.strip())


def default_home() -> Path:
    return Path(_env("HOME") or Path.home() / ".alphacut").expanduser()


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=default_home)
    model_dir: Path | None = None
    output_dir: Path | None = None
    model: str = "medium"
    api_keys: tuple[str, ...] = ()
    public_url: str = ""
    url_allowlist: tuple[str, ...] = ()
    max_download_bytes: int = 25 * 1024 * 1024
    fetch_timeout: float = 20.0
    max_pixels: int = 50_000_000
    errors_http_200: bool = False
    sync_wait: float = 20.0
    max_queued_per_key: int = 10
    webhook_secret: str = ""
    temp_ttl: float = 24 * 3600.0
    output_ttl: float = 0.0  # 0 = keep forever
    png_compress_level: int = 1
    providers: tuple[str, ...] = ()
    input_size: int = 0  # 0 = the model's own input size
    workers: int = 2
    # Image pixels in the pipeline at once across workers (jobs/budget.py); 0: no limit.
    max_inflight_pixels: int = 16_000_000
    batch_size: int = 1
    batch_wait_ms: float = 5.0
    web_ui: bool = True
    webhook_attempts: int = 6
    webhook_backoff: float = 7.5  # seconds; x3 per retry: 6 attempts span ~15 min
    cleanup_interval: float = 300.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser())
        if self.model_dir is None:
            object.__setattr__(self, "model_dir", self.home / "models")
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", self.home / "outputs")

    @property
    def models_path(self) -> Path:
        assert self.model_dir is not None
        return Path(self.model_dir)

    @property
    def outputs_path(self) -> Path:
        assert self.output_dir is not None
        return Path(self.output_dir)

    @classmethod
    def from_env(cls) -> Settings:
        home = default_home()
        model_dir = _env("MODEL_DIR")
        output_dir = _env("OUTPUT_DIR")
        return cls(
            home=home,
            model_dir=Path(model_dir).expanduser() if model_dir else None,
            output_dir=Path(output_dir).expanduser() if output_dir else None,
            model=_env("MODEL", "medium"),
            api_keys=_env_list("API_KEYS"),
            public_url=_env("PUBLIC_URL").rstrip("/"),
            url_allowlist=_env_list("URL_ALLOWLIST"),
            max_download_bytes=_env_int("MAX_DOWNLOAD_BYTES", 25 * 1024 * 1024),
            fetch_timeout=_env_float("FETCH_TIMEOUT", 20.0),
            max_pixels=_env_int("MAX_PIXELS", 50_000_000),
            errors_http_200=_env_bool("ERRORS_HTTP_200", False),
            sync_wait=_env_float("SYNC_WAIT", 20.0),
            max_queued_per_key=_env_int("MAX_QUEUED_PER_KEY", 10),
            webhook_secret=_env("WEBHOOK_SECRET"),
            temp_ttl=_env_float("TEMP_TTL", 24 * 3600.0),
            output_ttl=_env_float("OUTPUT_TTL", 0.0),
            png_compress_level=_env_int("PNG_COMPRESS_LEVEL", 1),
            providers=_env_list("PROVIDERS"),
            input_size=_env_int("INPUT_SIZE", 0),
            workers=_env_int("WORKERS", 2),
            max_inflight_pixels=_env_int("MAX_INFLIGHT_PIXELS", 16_000_000),
            batch_size=_env_int("BATCH_SIZE", 1),
            batch_wait_ms=_env_float("BATCH_WAIT_MS", 5.0),
            web_ui=_env_bool("WEB_UI", True),
            webhook_attempts=_env_int("WEBHOOK_ATTEMPTS", 6),
            webhook_backoff=_env_float("WEBHOOK_BACKOFF", 7.5),
            cleanup_interval=_env_float("CLEANUP_INTERVAL", 300.0),
        )
