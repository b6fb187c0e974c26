"""`twin db ...` (migrations) and `twin keys ...` (API keys).

Commands import what they need inside their bodies (late imports): `twin --help` and the
light commands must not pay seconds for torch, CasADi, the simulators or the database layer.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from api.cli_common import UrlOption, console, friendly_errors, resolve_url, shown_url


@friendly_errors
def db_upgrade(
    database_url: UrlOption = None,
    revision: Annotated[str, typer.Option(help="target revision")] = "head",
) -> None:
    """Migrate the database to the latest schema (creates a SQLite file if needed)."""
    from api import migrate

    url = resolve_url(database_url)
    migrate.upgrade(url, revision)
    revision_now = migrate.current_revision(url)
    console.print(f"database at [bold]{shown_url(url)}[/] is at revision {revision_now}")


@friendly_errors
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="target revision, e.g. base")],
    database_url: UrlOption = None,
) -> None:
    """Migrate the database down to REVISION."""
    from api import migrate

    url = resolve_url(database_url)
    migrate.downgrade(url, revision)
    revision_now = migrate.current_revision(url)
    console.print(f"database at [bold]{shown_url(url)}[/] is at revision {revision_now}")


@friendly_errors
def db_current(database_url: UrlOption = None) -> None:
    """Show the database's revision and whether it is up to date."""
    from api import migrate

    url = resolve_url(database_url)
    state = "up to date" if migrate.is_up_to_date(url) else "NOT up to date: run twin db upgrade"
    console.print(f"{shown_url(url)}: revision {migrate.current_revision(url)} ({state})")


# Whoever can reach the database may manage keys (that is how the first admin key is
# made); these changes are audited with the actor "cli:<os user>".
@friendly_errors
def keys_create(
    role: Annotated[str, typer.Option(help="viewer, operator, engineer or admin")],
    name: Annotated[str, typer.Option(help="who or what uses it, e.g. alice")],
    database_url: UrlOption = None,
) -> None:
    """Create an API key and print its token, once: only its hash is stored."""
    from api.db import open_session
    from api.services import auth

    with open_session(resolve_url(database_url)) as session:
        key, token = auth.create_key(session, name, role, auth.cli_actor())
        console.print(
            f"created API key [bold]{key.id}[/] '{escape(key.name)}' with the {key.role} "
            "role; its token is shown only now, store it:"
        )
    # Plain echo: no rich wrapping or markup in the one line people copy.
    typer.echo(token)


@friendly_errors
def keys_list(database_url: UrlOption = None) -> None:
    """List the keys (never their tokens), revoked ones too."""
    from api.db import open_session
    from api.services import auth

    table = Table(title="API keys")
    for column in ("id", "name", "role", "prefix", "created", "by", "revoked"):
        table.add_column(column)
    with open_session(resolve_url(database_url)) as session:
        for key in auth.list_keys(session):
            revoked = f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else ""
            table.add_row(
                str(key.id),
                escape(key.name),
                key.role,
                key.prefix,
                f"{key.created_at:%Y-%m-%d %H:%M}",
                escape(key.created_by),
                revoked,
            )
    console.print(table)


@friendly_errors
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="the key's id (twin keys list)")],
    database_url: UrlOption = None,
) -> None:
    """Revoke a key; requests with it are refused (401) from now on."""
    from api.db import open_session
    from api.services import auth

    with open_session(resolve_url(database_url)) as session:
        key = auth.revoke_key(session, key_id, auth.cli_actor())
        console.print(f"API key {key.id} '{escape(key.name)}' ({key.role}) is revoked")
