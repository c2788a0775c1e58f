"""Settings read from ``ALPHACUT_*`` environment variables.

The environment is read in one place, ``load_settings()``, once per process; the result is
passed down explicitly. ``Settings(...)`` itself never reads the environment, so tests and
library users get exactly the values they pass (plus the defaults below).

The field descriptions are user documentation: the configuration page is generated from
``Settings.model_fields``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from alphacut.errors import SettingsError
from alphacut.models.registry import DEFAULT_MODEL

__all__ = [
    "DEFAULT_FETCH_TIMEOUT",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "ENV_PREFIX",
    "Settings",
    "load_settings",
]

ENV_PREFIX = "ALPHACUT_"
# Also FetchPolicy's defaults (io/fetch.py), so a policy built without settings agrees.
DEFAULT_MAX_DOWNLOAD_BYTES = 25 * 1024 * 1024
DEFAULT_FETCH_TIMEOUT = 20.0

# Comma-separated in the environment ("a,b,c"); NoDecode stops pydantic-settings from
# expecting JSON for these, so _split_commas below sees the raw string.
CommaList = Annotated[tuple[str, ...], NoDecode]

# Folders under ``home`` used when model_dir / output_dir are not set.
_HOME_SUBFOLDERS = {"model_dir": "models", "output_dir": "outputs"}


# The broker queues images go to (distributed mode): the one place their names are written.
ImageQueue = Literal["cpu", "gpu"]
IMAGE_QUEUES: tuple[ImageQueue, ...] = get_args(ImageQueue)
# ALPHACUT_DEFAULT_QUEUE's value for "route each job by its model and the queues' backlog".
AUTO_QUEUE: Final = "auto"


class Settings(BaseSettings):
    """Every setting of the service, the CLI and the library, with its default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        # An empty variable (ALPHACUT_WORKERS=) means "use the default", as it always has.
        env_ignore_empty=True,
        extra="forbid",
    )

    home: Path = Field(
        default=Path("~/.alphacut"),
        validate_default=True,  # so the default is expanded too
        description="Folder for alphacut's state: models, outputs, the job database and the "
        "generated webhook secret.",
    )
    model_dir: Path = Field(
        default=None,
        validate_default=True,
        description="Folder holding the model files; defaults to `models` inside the home folder.",
    )
    output_dir: Path = Field(
        default=None,
        validate_default=True,
        description="Folder where results are written and served from at `/outputs/`; defaults "
        "to `outputs` inside the home folder.",
    )
    database_url: str = Field(
        default=None,
        validate_default=True,
        repr=False,  # may carry a password: keep it out of logs
        description="The job database: `sqlite:///PATH` or "
        "`postgresql+psycopg://USER:PASSWORD@HOST:PORT/NAME`; defaults to `jobs.sqlite3` "
        "inside the home folder. SQLite is brought to the current schema at start; on "
        "PostgreSQL run `alphacut db upgrade` first (and after each upgrade of alphacut).",
    )
    broker_url: str = Field(
        default="",
        repr=False,  # may carry a password: keep it out of logs
        description="Celery broker for the distributed mode, `redis://HOST:PORT/DB`: the API "
        "nodes send each job to `alphacut worker` processes through it. When empty (the "
        "default), `alphacut serve` runs the jobs itself, in-process.",
    )
    broker_prefix: str = Field(
        default="",
        description="Distributed mode: a prefix for every key and channel alphacut uses on the "
        "broker, so several clusters (production and staging, or test runs) can share one "
        "Redis database without taking each other's jobs.",
    )
    default_queue: Literal["auto", ImageQueue] = Field(
        default="auto",
        description="Distributed mode: the queue an API node sends jobs to. `auto` (the "
        "default) picks it per job: the queue whose live workers have the request's model, "
        "the one with fewer waiting jobs per worker when both have it, `cpu` when no live "
        "worker has it ([Routing](scaling.md#routing-cpu-or-gpu)); `cpu` or `gpu` sends every "
        "job there. An `alphacut worker` without `--queue` takes jobs from this queue (`cpu` "
        "for `auto`).",
    )
    storage_url: str = Field(
        default="",
        description="Where outputs (and uploaded images on their way to a worker) are kept: "
        "empty (the default) for folders on this machine (`ALPHACUT_OUTPUT_DIR`), or "
        "`s3://BUCKET/PREFIX` for an S3-compatible bucket shared by every API node and worker "
        "(needs `pip install 'alphacut[distributed]'`). Credentials and region come from "
        "boto3's usual variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, "
        "`AWS_DEFAULT_REGION`, ...).",
    )
    s3_endpoint_url: str = Field(
        default="",
        description="The S3 API's URL for a store other than AWS (SeaweedFS, MinIO, ...), e.g. "
        "`http://127.0.0.1:8333`; when empty, AWS S3.",
    )
    output_urls: Literal["proxy", "presigned"] = Field(
        default="proxy",
        description="How output links point at S3 outputs: `proxy` (the default) links to "
        "`/outputs/` on the API node, which streams the object from the bucket; `presigned` "
        "hands out presigned S3 URLs, valid for the output's lifetime (at most 7 days, S3's "
        "limit). `presigned` needs an `s3://` `ALPHACUT_STORAGE_URL`.",
    )
    model: str = Field(
        default=DEFAULT_MODEL,
        min_length=1,
        description="Model used when a request or command does not name one.",
    )
    api_keys: CommaList = Field(
        default=(),
        repr=False,  # keys must not end up in logs through a printed Settings
        description="Comma-separated API keys the server accepts; when empty, anyone who can "
        "reach the server may use it.",
    )
    public_url: str = Field(
        default="",
        description="Base URL put in front of output links, for a server behind a reverse proxy; "
        "when empty, links use the URL the request came in on.",
    )
    url_allowlist: CommaList = Field(
        default=(),
        description="Comma-separated hosts or `host:port` pairs that image and webhook URLs may "
        "reach even though they resolve to private addresses, e.g. `127.0.0.1,localhost:8081`.",
    )
    allowed_hosts: CommaList = Field(
        default=(),
        description="Comma-separated host names the server answers to (the `Host` header, "
        "without the port; `*.example.com` for subdomains), e.g. `cutouts.example.com`; any "
        "other Host gets 400. Empty (the default): any Host. Set it behind a proxy, against "
        "DNS rebinding and forged links.",
    )
    max_download_bytes: int = Field(
        default=DEFAULT_MAX_DOWNLOAD_BYTES,
        ge=1,
        description="Largest image the server downloads from a URL, in bytes (default 25 MiB).",
    )
    fetch_timeout: float = Field(
        default=DEFAULT_FETCH_TIMEOUT,
        gt=0,
        description="Time allowed for downloading an image from a URL, in seconds, in total.",
    )
    max_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Largest image accepted, in pixels (width x height); guards against "
        "decompression bombs.",
    )
    max_body_bytes: int = Field(
        default=0,
        ge=0,
        description="Largest request body, in bytes, counted as it arrives (413 beyond it). 0 "
        "sizes it from `ALPHACUT_MAX_DOWNLOAD_BYTES`: the image as base64 (4/3 of it) plus "
        "1 MiB for the other fields, about 34.3 MiB by default.",
    )
    body_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Time a client has to send its whole request body, in seconds (408 beyond).",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Time a client has to send a request's headers, in seconds; a connection "
        "that takes longer is closed (slow clients cannot hold connections open).",
    )
    keep_alive_timeout: int = Field(
        default=5,
        ge=1,
        description="Time an idle keep-alive connection stays open between requests, in seconds.",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="Connections and requests in progress at once: a new request is answered "
        "503 at once (JSON with `retry_after`, a `Retry-After` header, and the connection "
        "closed) when this many connections are open, its own included, or this many other "
        "requests are in progress.",
    )
    errors_http_200: bool = Field(
        default=False,
        description="Answer errors with HTTP status 200 (and the error in the body), for clients "
        "that expect it: `1` or `0` (also true/false, yes/no, on/off).",
    )
    sync_wait: float = Field(
        default=20.0,
        ge=0,
        description='Time a request waits for its result before answering "processing", in '
        "seconds.",
    )
    max_queued_per_key: int = Field(
        default=10,
        ge=1,
        description="Jobs one API key may have queued or running; more are refused with HTTP 429.",
    )
    key_pepper: str = Field(
        default="",
        repr=False,  # a secret: keep it out of logs
        description="Secret mixed into the stored hash of each managed API key (`alphacut keys`); "
        "when empty, one is generated and kept in `key_pepper` in the home folder. Servers and "
        "the CLI sharing one job database must use the same pepper.",
    )
    rate_limit: int = Field(
        default=0,
        ge=0,
        description="Requests per minute one API key may make to removebg_mask, for keys "
        "without their own limit (`alphacut keys create --rate`); more are refused with HTTP "
        "429. 0 means no limit.",
    )
    megapixel_limit: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Image megapixels per minute one API key may send (a 12 MP photo counts "
        "12), for keys without their own limit (`alphacut keys create --megapixels`); more "
        "are refused with HTTP 429. 0 means no limit.",
    )
    webhook_secret: str = Field(
        default="",
        repr=False,  # a secret: keep it out of logs
        description="Key for the HMAC signature of webhook deliveries; when empty, one is "
        "generated and kept in the home folder.",
    )
    temp_ttl: float = Field(
        default=24 * 3600.0,
        ge=0,
        description="How long outputs of `temp` requests are kept, in seconds (0 keeps them "
        "forever).",
    )
    output_ttl: float = Field(
        default=0.0,
        ge=0,
        description="How long other outputs are kept, in seconds (0 keeps them forever).",
    )
    png_compress_level: int = Field(
        default=1,
        ge=0,
        le=9,
        description="zlib compression level of PNG outputs, 0 to 9: 1 is fast, 9 gives the "
        "smallest files.",
    )
    providers: CommaList = Field(
        default=(),
        description="Comma-separated ONNX Runtime providers to try in order (`tensorrt`, `cuda`, "
        "`openvino`, `cpu`); unavailable ones are skipped. When empty: `cuda,cpu`.",
    )
    input_size: int = Field(
        default=0,
        ge=0,
        description="Side of the square image the model sees, in pixels (a multiple of 64 for "
        "ISNet); smaller is faster and less accurate. 0 uses the model's own size.",
    )
    workers: int = Field(
        default=2,
        ge=1,
        description="Jobs processed at the same time (inference itself runs one at a time per "
        "model).",
    )
    max_inflight_pixels: int = Field(
        default=16_000_000,
        ge=0,
        description="Image pixels in the pipeline at once across all workers; a job that would "
        "exceed it waits for the others, bounding peak memory. 0 means no limit.",
    )
    batch_size: int = Field(
        default=1,
        ge=1,
        description="Queued images inferred together in one model call, at most (useful on GPUs).",
    )
    batch_wait_ms: float = Field(
        default=5.0,
        ge=0,
        description="Time to wait for more images to fill a batch, in milliseconds.",
    )
    web_ui: bool = Field(
        default=True,
        description="Serve the web page at `/`: `1` or `0` (also true/false, yes/no, on/off).",
    )
    webhook_attempts: int = Field(
        default=6,
        ge=1,
        description="Times a webhook delivery is tried before giving up.",
    )
    webhook_backoff: float = Field(
        default=7.5,
        ge=0,
        description="Wait before the first webhook retry, in seconds; each later wait is three "
        "times longer (the default 6 attempts span about 15 minutes).",
    )
    cache_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description="Disk space for the mask cache, in bytes (default 512 MiB, about 400 "
        "photos at input size 1024); 0 turns it off. The model's output for each picture is "
        "kept in `cache/masks` inside the home folder, so a repeat request for the same "
        "picture with other options skips the model; least recently used entries go first. "
        "With S3 storage the cache is in the bucket (`PREFIX/_cache/masks/`), shared by the "
        "cluster, and the oldest entries go first.",
    )
    cleanup_interval: float = Field(
        default=300.0,
        gt=0,
        description="Time between passes that delete expired outputs, in seconds.",
    )
    shutdown_grace: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM (or Ctrl-C), how long running jobs get to finish, in seconds. "
        "From the signal on, new jobs are refused with HTTP 503 and queued jobs wait for the "
        "next start; a job still running when the grace ends is run again by the next start.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the values passed in: the environment is read by load_settings(), nowhere else.
        return (init_settings,)

    @property
    def worker_queue(self) -> ImageQueue:
        """The queue an ``alphacut worker`` without ``--queue`` takes images from."""
        return IMAGE_QUEUES[0] if self.default_queue == AUTO_QUEUE else self.default_queue

    @field_validator("*", mode="before")
    @classmethod
    def _strip_text(cls, value: Any) -> Any:
        # "  true " from a hand-edited env file means true, as before pydantic-settings.
        return value.strip() if isinstance(value, str) else value

    @field_validator("api_keys", "url_allowlist", "allowed_hosts", "providers", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("model_dir", "output_dir", mode="before")
    @classmethod
    def _default_under_home(cls, value: Any, info: ValidationInfo) -> Any:
        home = info.data.get("home")  # absent only when home itself failed validation
        if value is None and home is not None and info.field_name is not None:
            return home / _HOME_SUBFOLDERS[info.field_name]
        return value

    @field_validator("database_url", mode="before")
    @classmethod
    def _database_under_home(cls, value: Any, info: ValidationInfo) -> Any:
        home = info.data.get("home")
        if value is None and home is not None:
            return f"sqlite:///{home / 'jobs.sqlite3'}"
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        # The driver is checked when the store opens it (alphacut.jobs.database).
        if not value.startswith(("sqlite:", "sqlite+", "postgresql:", "postgresql+", "postgres:")):
            raise ValueError("expected sqlite:///PATH or postgresql+psycopg://...")
        return value

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://")):
            raise ValueError("expected redis://HOST:PORT/DB (or empty: in-process workers)")
        return value

    @field_validator("storage_url")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        if value and not re.fullmatch(r"s3://[A-Za-z0-9][A-Za-z0-9.\-_]*[A-Za-z0-9](/.*)?", value):
            raise ValueError("expected s3://BUCKET/PREFIX (or empty: local folders)")
        return value

    @field_validator("output_urls")
    @classmethod
    def _presigned_needs_s3(cls, value: str, info: ValidationInfo) -> str:
        if value == "presigned" and not info.data.get("storage_url"):
            raise ValueError("presigned output URLs need ALPHACUT_STORAGE_URL=s3://...")
        return value

    @field_validator("model_dir", "output_dir")
    @classmethod
    def _expand_folder(cls, value: Path) -> Path:
        return value.expanduser()


def load_settings(**overrides: Any) -> Settings:
    """Settings from the ``ALPHACUT_*`` environment variables; ``overrides`` win over them.

    Raises SettingsError naming each bad variable and its value, e.g.
    ``ALPHACUT_WORKERS='abc': Input should be a valid integer``.
    """
    from_environment = EnvSettingsSource(Settings)()
    try:
        return Settings(**{**from_environment, **overrides})
    except ValidationError as exc:
        raise SettingsError(_describe(exc, set(overrides))) from None


def _describe(error: ValidationError, overridden: set[str]) -> str:
    """One line per problem, naming what the user set: the variable, or the override."""
    lines = []
    for problem in error.errors(include_url=False):
        field = str(problem["loc"][0]) if problem["loc"] else ""
        name = field if field in overridden else f"{ENV_PREFIX}{field.upper()}"
        lines.append(f"{name}={problem['input']!r}: {problem['msg']}")
    return "\n".join(lines)
