"""`twin`: the command line for every step of the demo, and for operators.

    twin db upgrade                 migrate the database (DATABASE_URL, default ./twin.db)
    twin data generate ...          log excitation data from a process simulator
    twin train ...                  train a JEPA twin on a log, save and register it
    twin control ...                run a closed-loop episode and store it as a run
    twin serve                      serve the API and dashboards
    twin worker                     run queued training jobs
    twin keys create --role admin --name NAME   an API key (prints its token once)

Errors a user can fix (bad input, missing files, an un-migrated database) are printed as
one clear message with exit status 2, never as a traceback.
"""

from __future__ import annotations

import typer

from api.cli_admin import (
    db_current,
    db_downgrade,
    db_upgrade,
    keys_create,
    keys_list,
    keys_revoke,
)
from api.cli_control import control, replay
from api.cli_edge import connect_app
from api.cli_serve import serve, worker
from api.cli_train import data_generate, register, train

app = typer.Typer(
    help="Process-control digital twin: data, training, control, serving.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
data_app = typer.Typer(help="Training data.", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys of the HTTP API (roles: viewer < operator < engineer < admin).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
app.add_typer(data_app, name="data")
app.add_typer(keys_app, name="keys")
app.add_typer(connect_app, name="connect")

# Registered in the order `twin --help` lists them.
db_app.command("upgrade")(db_upgrade)
db_app.command("downgrade")(db_downgrade)
db_app.command("current")(db_current)
keys_app.command("create")(keys_create)
keys_app.command("list")(keys_list)
keys_app.command("revoke")(keys_revoke)
data_app.command("generate")(data_generate)
app.command()(train)
app.command()(register)
app.command()(control)
app.command()(replay)
app.command()(serve)
app.command()(worker)


if __name__ == "__main__":
    app()
