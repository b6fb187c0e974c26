"""Engines and sessions for SQLite (embedded default) and PostgreSQL (production).

SQLite runs in WAL mode so dashboards can read while a loop writes, with foreign
keys enforced (SQLite leaves them off unless asked on every connection).
PostgreSQL goes through psycopg 3; plain `postgresql://` URLs are rewritten to it
so users can paste the URL their database provider gives them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

_PG_PREFIXES = ("postgresql://", "postgres://", "postgresql+psycopg2://")


def normalize_url(url: str) -> str:
    """Point every PostgreSQL URL at the psycopg 3 driver, the only one installed."""
    for prefix in _PG_PREFIXES:
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        # Readers and the writer share the file; wait instead of failing with "locked".
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def make_engine(url: str, echo: bool = False) -> Engine:
    url = normalize_url(url)
    if not is_sqlite(url):
        # pre_ping: a PostgreSQL restart must not surface as errors on the next requests.
        return create_engine(url, echo=echo, pool_pre_ping=True)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if make_url(url).database in (None, "", ":memory:"):
        # An in-memory database lives in one connection; share it across threads.
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, echo=echo, **kwargs)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: services return ORM objects that routes read after commit.
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for scripts (the CLI): rolled back on error, always closed."""
    session = factory()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def open_session(url: str | None = None, *, check_migrated: bool = True) -> Iterator[Session]:
    """Engine + session for one command-line action, disposed afterwards.

    `url` defaults to Settings().database_url. With `check_migrated`, an un-migrated
    database raises api.migrate.DatabaseNotMigrated instead of "no such table" later.
    """
    from api.migrate import check_migrated as check  # late: migrate imports this module
    from api.settings import Settings

    engine = make_engine(url or Settings().database_url)
    try:
        if check_migrated:
            check(engine)
        with session_scope(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()
