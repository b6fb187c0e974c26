"""Alembic environment.

Where the database comes from, first match wins:
1. a connection handed over by `api.migrate` in `config.attributes["connection"]`
   (so SQLite gets its pragmas and tests can pin a PostgreSQL schema);
2. `sqlalchemy.url` in the Alembic config, when a caller set it;
3. `api.settings.Settings().database_url` (env DATABASE_URL).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from api.db import is_sqlite, make_engine
from api.orm import Base
from api.settings import Settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings().database_url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    url = _url()
    context.configure(
        url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=is_sqlite(url)
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _configure(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
