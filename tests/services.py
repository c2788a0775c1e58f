"""The services ``scripts/services.sh start`` runs (PostgreSQL, Redis, S3), for the tests
that use them.

``.ci/run`` evals the script's ``export`` lines before ``make test``, so the services reach the
tests as environment variables. They are taken out of the environment as the tests start
(``tests/conftest.py`` imports this module first): every other test, and every server a test
starts, runs the embedded defaults whatever the shell exported, and a test that wants a
service asks for it here.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

SERVICE_VARIABLES = (
    "ALPHACUT_DATABASE_URL",
    "ALPHACUT_BROKER_URL",
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
