"""`twin serve` (the API and dashboards) and `twin worker` (queued jobs).

Commands import what they need inside their bodies (late imports): `twin --help` and the
light commands must not pay seconds for torch, CasADi, the simulators or the database layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from api.cli_common import UrlOption, console, friendly_errors, resolve_url, shown_url


@friendly_errors
def serve(
    host: Annotated[str, typer.Option(envvar="TWIN_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="TWIN_PORT", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="API worker processes")] = 1,
    migrate_first: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="upgrade the database before serving")
    ] = False,
    database_url: UrlOption = None,
) -> None:
    """Serve the API (/docs) and the dashboards (/)."""
    import os

    import uvicorn

    from api import migrate

    url = resolve_url(database_url)
    os.environ["DATABASE_URL"] = url
    missing = _missing_sqlite_file(url)
    if missing is not None and not migrate_first:  # checking would create an empty file
        raise migrate.DatabaseNotMigrated(
            f"no database at {missing}: run `twin db upgrade` (or `twin serve --migrate`)"
        )
    if migrate_first:
        migrate.upgrade(url)
    elif not migrate.is_up_to_date(url):
        raise migrate.DatabaseNotMigrated(
            f"database at {shown_url(url)} is not migrated to the latest schema: "
            "run `twin db upgrade`"
        )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    console.print(
        f"dashboards: [bold]http://{shown}:{port}/[/]   "
        f"API docs: [bold]http://{shown}:{port}/docs[/]   (Ctrl+C to stop)"
    )
    compared = _twin_and_baseline(url)
    if compared is not None:
        console.print(
            f"twin against baseline, same scenario: [bold]http://{shown}:{port}"
            f"/compare?runs={compared[0]}&runs={compared[1]}[/]"
        )
    latest = _latest_control_run(url)
    if latest is not None:
        console.print(f"latest closed-loop run: [bold]http://{shown}:{port}/runs/{latest}[/]")
    uvicorn.run(
        "api.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="info"
    )


def _missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist (None for any other database)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def _twin_and_baseline(url: str) -> tuple[int, int] | None:
    """The latest twin-controlled run and the latest baseline run of its process and seed."""
    from api.db import open_session
    from api.services import runs as runs_service

    with open_session(url) as session:
        runs = runs_service.list_runs(session, kind="control", limit=200)
        twin = next((r for r in runs if r.controller != "baseline"), None)
        if twin is None:
            return None
        seed = (twin.config or {}).get("seed")
        base = next(
            (
                r
                for r in runs
                if r.controller == "baseline"
                and r.process_id == twin.process_id
                and (r.config or {}).get("seed") == seed
            ),
            None,
        )
        return None if base is None else (int(twin.id), int(base.id))


def _latest_control_run(url: str) -> int | None:
    from api.db import open_session
    from api.services import runs as runs_service

    with open_session(url) as session:
        runs = runs_service.list_runs(session, kind="control", limit=1)
        return int(runs[0].id) if runs else None


@friendly_errors
def worker(
    poll_seconds: Annotated[float, typer.Option(min=0.1)] = 2.0,
    once: Annotated[bool, typer.Option(help="process what is queued, then exit")] = False,
    database_url: UrlOption = None,
) -> None:
    """Run queued training jobs (POST /api/jobs/train) outside the API process."""
    from api.worker import run_worker

    count = run_worker(resolve_url(database_url), poll_seconds=poll_seconds, once=once)
    console.print(f"worker processed {count} job(s)")
