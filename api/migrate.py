"""Schema migrations from Python (the CLI's `twin db ...` commands call these).

Policy: the application never creates or alters tables by itself. `create_app`
checks that the database is at the latest Alembic revision and otherwise refuses
to start with `DatabaseNotMigrated`, whose message says to run `twin db upgrade`.
This keeps schema changes explicit (one process runs them, before the API and
workers start, as docker-compose does) instead of racing between several API
workers that all start at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from api.db import make_engine
from api.settings import Settings

# api/migrate.py -> the repository root (api.__file__ can be None under an editable
# install made before api/__init__.py existed, which turns `api` into a namespace package).
REPO_MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
UPGRADE_HINT = "run `twin db upgrade` (or `alembic upgrade head`)"


class DatabaseNotMigrated(RuntimeError):
    """The database schema is missing or older than this version of the code."""


def migrations_dir() -> Path:
    """The repository's migrations; TWIN_MIGRATIONS_DIR overrides it for non-editable
    installs (the Docker image), where `api` lives in site-packages without them."""
    override = os.environ.get("TWIN_MIGRATIONS_DIR")
    return Path(override) if override else REPO_MIGRATIONS_DIR


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # Hand the connection over rather than the URL: no ConfigParser '%' escaping to get
    # wrong, and SQLite pragmas / PostgreSQL options of our engine apply to migrations.
    config.attributes["connection"] = connection
    return config


@contextmanager
def _connect(url: str | None) -> Iterator[Connection]:
    engine = make_engine(url or Settings().database_url)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


def upgrade(url: str | None = None, revision: str = "head") -> None:
    with _connect(url) as connection:
        command.upgrade(_config(connection), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    with _connect(url) as connection:
        command.downgrade(_config(connection), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def revision_of(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def current_revision(url: str | None = None) -> str | None:
    """The database's revision, or None when it was never migrated."""
    with _connect(url) as connection:
        return revision_of(connection)


def is_up_to_date(url: str | None = None) -> bool:
    return current_revision(url) == head_revision()


def check_migrated(engine: Engine) -> None:
    """Raise DatabaseNotMigrated unless the database is at the head revision."""
    with engine.connect() as connection:
        current = revision_of(connection)
    head = head_revision()
    if current == head:
        return
    where = engine.url.render_as_string(hide_password=True)
    state = "has no schema" if current is None else f"is at revision {current}, not {head}"
    raise DatabaseNotMigrated(f"database {where} {state}: {UPGRADE_HINT}")
