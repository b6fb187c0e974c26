"""Alembic migrations on SQLite and PostgreSQL: up, down, and agreement with the ORM."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from api import migrate
from api.app import create_app
from api.db import make_engine, normalize_url
from api.orm import Base
from api.settings import Settings

TABLES = {
    "processes",
    "models",
    "runs",
    "run_steps",
    "run_values",
    "run_events",
    "api_keys",
    "audit_log",
    "model_activations",
    "alarms",
    "alarm_events",
    "alarm_cursors",
}


def _chain() -> list[str]:
    """Revision ids from the head down to the first migration."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate._config())
    return [rev.revision for rev in script.walk_revisions()]


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_creates_all_tables_and_downgrade_removes_them(empty_db_url: str) -> None:
    assert migrate.current_revision(empty_db_url) is None
    assert not migrate.is_up_to_date(empty_db_url)

    migrate.upgrade(empty_db_url)
    assert TABLES <= _tables(empty_db_url)
    assert migrate.current_revision(empty_db_url) == migrate.head_revision()
    assert "0003" in _chain()
    assert migrate.head_revision() == "0005"  # alarms, the newest revision
    assert migrate.is_up_to_date(empty_db_url)

    migrate.downgrade(empty_db_url, "base")
    assert not (TABLES & _tables(empty_db_url))
    assert migrate.current_revision(empty_db_url) is None


def test_upgrade_is_idempotent(db_url: str) -> None:
    migrate.upgrade(db_url)
    assert migrate.is_up_to_date(db_url)


def test_migrated_schema_matches_the_orm(db_url: str) -> None:
    """The hand-written migration and api/orm.py describe the same tables and indexes."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_indexes_exist(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        inspector = inspect(engine)
        lookup = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("run_values")}
        uniques = {
            u["name"]: u["column_names"] for u in inspector.get_unique_constraints("run_steps")
        }
    finally:
        engine.dispose()
    assert lookup["ix_run_values_lookup"] == ["run_id", "channel", "tag", "step"]
    assert uniques["uq_run_steps_run_step"] == ["run_id", "step"]


def test_create_app_refuses_an_unmigrated_database(empty_db_url: str) -> None:
    with pytest.raises(migrate.DatabaseNotMigrated, match="twin db upgrade"):
        create_app(Settings(database_url=empty_db_url))


def test_create_app_refuses_an_outdated_database(db_url: str) -> None:
    migrate.downgrade(db_url, "base")
    with pytest.raises(migrate.DatabaseNotMigrated, match="has no schema"):
        create_app(Settings(database_url=db_url))


def test_sqlite_relative_path(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///./relative.db"
    migrate.upgrade(url)
    assert (tmp_path / "relative.db").is_file()
    assert migrate.is_up_to_date(url)


def test_upgrade_reads_database_url_from_the_environment(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    migrate.upgrade()
    assert migrate.current_revision(url) == migrate.head_revision()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite pragmas")
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@h:5432/d",
        "postgres://u:p@h/d",
        "postgresql+psycopg2://u@h/d",
    ],
)
def test_plain_postgresql_urls_use_psycopg3(url: str) -> None:
    assert normalize_url(url).startswith("postgresql+psycopg://")


def test_other_urls_are_left_alone() -> None:
    assert normalize_url("sqlite:///./twin.db") == "sqlite:///./twin.db"
    assert normalize_url("postgresql+psycopg://u@h/d") == "postgresql+psycopg://u@h/d"


def test_migrations_dir_override(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Docker image installs api/ without migrations and points at them by env var."""
    import shutil

    copy = tmp_path / "elsewhere"
    shutil.copytree(migrate.REPO_MIGRATIONS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("TWIN_MIGRATIONS_DIR", str(copy))
    assert migrate.migrations_dir() == copy
    url = f"sqlite:///{tmp_path / 'x.db'}"
    migrate.upgrade(url)
    assert migrate.is_up_to_date(url)
    monkeypatch.setenv("TWIN_MIGRATIONS_DIR", str(tmp_path / "missing"))
    with pytest.raises(Exception, match="missing"):
        migrate.upgrade(url)


def test_0003_backfills_loop_history_and_downgrades_without_losing_rows(empty_db_url: str) -> None:
    """Loops stored before the registry get their first activation; going back to 0002
    drops the new columns without touching the rows (no table rebuild on SQLite)."""
    from sqlalchemy import text

    migrate.upgrade(empty_db_url, "0002")
    engine = make_engine(empty_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO processes (id, name, spec, created_at) "
                    "VALUES (1, 'cstr', '{}', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO models (id, process_id, name, version, checkpoint, sha256, "
                    "size_bytes, config, metrics, created_at) VALUES (1, 1, 'jepa', 1, :blob, "
                    "'x', 1, '{}', '{}', CURRENT_TIMESTAMP)"
                ),
                {"blob": b"w"},
            )
            for run_id, kind in ((1, "control"), (2, "train")):
                conn.execute(
                    text(
                        "INSERT INTO runs (id, kind, status, process_id, model_id, controller, "
                        "config, metrics, started_at) VALUES (:id, :kind, 'running', 1, 1, 'c', "
                        "'{}', '{}', CURRENT_TIMESTAMP)"
                    ),
                    {"id": run_id, "kind": kind},
                )
        migrate.upgrade(empty_db_url)
        with engine.connect() as conn:
            history = conn.execute(
                text("SELECT run_id, model_id, previous_model_id FROM model_activations")
            ).all()
            assert [tuple(row) for row in history] == [(1, 1, None)]  # the loop, not training
            assert conn.execute(text("SELECT dataset_sha256 FROM models")).scalar() is None
        migrate.downgrade(empty_db_url, "0002")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 2
            assert conn.execute(text("SELECT count(*) FROM models")).scalar() == 1
        assert "model_activations" not in _tables(empty_db_url)
        columns = {c["name"] for c in inspect(engine).get_columns("models")}
        assert "dataset_sha256" not in columns and "sha256" in columns
    finally:
        engine.dispose()
