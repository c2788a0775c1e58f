"""The services ``scripts/services.sh start`` runs (PostgreSQL, Redis, S3), for the tests
that use them.

``.ci/run`` evals the script's ``export`` lines before ``make test``, so the services reach the
tests as environment variables. They are taken out of the environment as the tests start
(``tests/conftest.py`` imports this module first): every other test, and every server a test
starts, runs the embedded defaults whatever the shell exported, and a test that wants a
service asks for it here.

A test (or fixture) that runs the script itself does it in a state folder of its own
(``services_state_folder``) and stops what it started (``script_services``): services started
for a test and never stopped outlive the test run (a SeaweedFS is ~200 MB).
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"
SERVICE_VARIABLES = (
    "ALPHACUT_DATABASE_URL",
    "ALPHACUT_BROKER_URL",
    "ALPHACUT_BROKER_PREFIX",
    "ALPHACUT_STORAGE_URL",
    "ALPHACUT_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)
EXPORTED = {name: os.environ.pop(name) for name in SERVICE_VARIABLES if name in os.environ}

# Where a PostgreSQL server is looked for: the one the script exported, else the machine's own
# on the standard loopback port (trust auth, as on CI machines).
_POSTGRES_CANDIDATES = [
    url
    for url in (
        EXPORTED.get("ALPHACUT_DATABASE_URL", ""),
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    )
    if url.startswith("postgres")
]


def find_postgres() -> tuple[str | None, str]:
    """(URL of a database on a reachable server, or None; why none was found)."""
    try:
        import psycopg  # noqa: F401
        import sqlalchemy as sa
    except ImportError:
        return None, "psycopg is not installed (make setup installs it: the distributed extra)"
    from alphacut.jobs.database import parse_database_url

    problems = []
    for url in _POSTGRES_CANDIDATES:
        engine = sa.create_engine(parse_database_url(url), connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            return url, ""
        except sa.exc.OperationalError as exc:
            problems.append(f"{url}: {str(exc.orig).strip().splitlines()[0]}")
        finally:
            engine.dispose()
    hint = 'run `eval "$(scripts/services.sh start)"`'
    return None, f"no PostgreSQL server reachable ({hint}): " + "; ".join(problems)


@contextmanager
def scratch_postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty database ``alphacut_test_<random>`` on that server, dropped afterwards."""
    import sqlalchemy as sa

    from alphacut.jobs.database import parse_database_url

    admin_url = parse_database_url(server_url)
    name = f"alphacut_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                # FORCE: pools of stores the tests left open must not keep it alive.
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def services_script(
    command: str, state: Path, env: Mapping[str, str] | None = None, timeout: float = 420
) -> subprocess.CompletedProcess[str]:
    """``scripts/services.sh COMMAND`` with ``state`` as its state folder."""
    full_env = {**os.environ, **(env or {}), "ALPHACUT_SERVICES_DIR": str(state)}
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def parse_exports(output: str) -> dict[str, str]:
    """The ``export NAME=value`` lines the script printed, as a dict (nothing else allowed)."""
    exports = {}
    for line in output.splitlines():
        words = shlex.split(line)
        assert len(words) == 2 and words[0] == "export", f"not an export line: {line!r}"
        name, _, value = words[1].partition("=")
        exports[name] = value
    return exports


@contextmanager
def services_state_folder() -> Iterator[Path]:
    """A new state folder for the script, removed afterwards. Not under pytest's ``tmp_path``
    (0700, root's when the tests run as root): the ``postgres`` user, which runs a private
    PostgreSQL there as root, must be able to enter it."""
    folder = Path(tempfile.mkdtemp(prefix="alphacut-services-"))
    try:
        folder.chmod(0o755)
        yield folder / "services"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def forget_services(exports: Mapping[str, str]) -> None:
    """Drop what ``start`` left on servers that outlive ``stop`` (the machine's own): the state
    folder's database and its keys on the broker. Servers already stopped are skipped."""
    import sqlalchemy as sa
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from alphacut.jobs.database import parse_database_url

    database = parse_database_url(exports["ALPHACUT_DATABASE_URL"])
    admin = sa.create_engine(
        database.set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
    )
    try:
        with admin.connect() as connection:
            connection.execute(
                sa.text(f'DROP DATABASE IF EXISTS "{database.database}" WITH (FORCE)')
            )
    except sa.exc.OperationalError:
        pass  # the script's own server, stopped
    finally:
        admin.dispose()
    broker = Redis.from_url(exports["ALPHACUT_BROKER_URL"], socket_connect_timeout=2)
    try:
        keys = list(broker.scan_iter(match=exports["ALPHACUT_BROKER_PREFIX"] + "*"))
        if keys:
            broker.delete(*keys)
    except RedisConnectionError:
        pass  # the script's own server, stopped
    finally:
        broker.close()


@contextmanager
def script_services(state: Path, env: Mapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """``scripts/services.sh start`` in ``state``: its exports; then ``stop``, and what the
    services left on the machine's own servers is dropped (``forget_services``)."""
    try:
        done = services_script("start", state, env)
        assert done.returncode == 0, f"scripts/services.sh start failed:\n{done.stderr}"
        exports = parse_exports(done.stdout)
        try:
            yield exports
        finally:
            forget_services(exports)
    finally:
        stopped = services_script("stop", state)
        assert stopped.returncode == 0, f"scripts/services.sh stop failed:\n{stopped.stderr}"
