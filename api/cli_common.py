"""What every `twin` command shares: the console, the error handling that turns a user's
mistake into one red line, and the common options.

Commands import what they need inside their bodies (late imports): `twin --help` and the
light commands must not pay seconds for torch, CasADi, the simulators or the database layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from twin.errors import InvalidInput
from twin.spec import ProcessSpec, SpecError

console = Console()
F = TypeVar("F", bound=Callable[..., Any])

PatientOption = Annotated[
    str | None,
    typer.Option(help="glucose: the virtual patient, e.g. adult#006 (default adult#001)"),
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url", envvar="DATABASE_URL", help="SQLAlchemy URL; default sqlite:///./twin.db"
    ),
]


def friendly_errors(fn: F) -> F:
    """Turn the errors a user can act on into one red line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from api.errors import ServiceError
        from api.migrate import DatabaseNotMigrated

        try:
            return fn(*args, **kwargs)
        except (
            InvalidInput,
            SpecError,
            ServiceError,
            DatabaseNotMigrated,
            FileNotFoundError,
            ValueError,
        ) as exc:
            console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)  # one line, however long
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def resolve_url(url: str | None) -> str:
    from api.settings import Settings

    return url or Settings().database_url


def shown_url(url: str) -> str:
    """The database URL as printed: its password masked, since container logs keep it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def spec_for(
    process: str | None, spec_file: Path | None, patient: str | None = None
) -> ProcessSpec:
    if spec_file is not None:
        if patient is not None:
            raise InvalidInput(
                "--patient chooses a built-in process's variant: give it with --process, not --spec"
            )
        return ProcessSpec.load(spec_file)
    if process is None:
        raise InvalidInput("give --process NAME or --spec FILE")
    from processes import get_spec

    return get_spec(process, patient)
