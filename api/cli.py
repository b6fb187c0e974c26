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

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from api.cli_edge import connect_app
from twin.errors import InvalidInput
from twin.logs import read_log, write_log
from twin.spec import ProcessSpec, SpecError

if TYPE_CHECKING:  # the API loads only for the commands that use it
    from api.services.models import DataProvenance

app = typer.Typer(help="Process-control digital twin: data, training, control, serving.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
data_app = typer.Typer(help="Training data.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of the HTTP API (roles: viewer < operator < engineer "
                            "< admin).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(data_app, name="data")
app.add_typer(keys_app, name="keys")
app.add_typer(connect_app, name="connect")
console = Console()
F = TypeVar("F", bound=Callable[..., Any])

PatientOption = Annotated[str | None, typer.Option(
    help="glucose: the virtual patient, e.g. adult#006 (default adult#001)")]
UrlOption = Annotated[str | None, typer.Option(
    "--database-url", envvar="DATABASE_URL",
    help="SQLAlchemy URL; default sqlite:///./twin.db")]


def friendly_errors(fn: F) -> F:
    """Turn the errors a user can act on into one red line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from api.errors import ServiceError
        from api.migrate import DatabaseNotMigrated

        try:
            return fn(*args, **kwargs)
        except (InvalidInput, SpecError, ServiceError, DatabaseNotMigrated,
                FileNotFoundError, ValueError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _url(url: str | None) -> str:
    from api.settings import Settings

    return url or Settings().database_url


# -- db ----------------------------------------------------------------------------------
@db_app.command("upgrade")
@friendly_errors
def db_upgrade(database_url: UrlOption = None,
               revision: Annotated[str, typer.Option(help="target revision")] = "head") -> None:
    """Migrate the database to the latest schema (creates a SQLite file if needed)."""
    from api import migrate

    url = _url(database_url)
    migrate.upgrade(url, revision)
    console.print(f"database at [bold]{url}[/] is at revision {migrate.current_revision(url)}")


@db_app.command("downgrade")
@friendly_errors
def db_downgrade(revision: Annotated[str, typer.Argument(help="target revision, e.g. base")],
                 database_url: UrlOption = None) -> None:
    """Migrate the database down to REVISION."""
    from api import migrate

    url = _url(database_url)
    migrate.downgrade(url, revision)
    console.print(f"database at [bold]{url}[/] is at revision {migrate.current_revision(url)}")


@db_app.command("current")
@friendly_errors
def db_current(database_url: UrlOption = None) -> None:
    """Show the database's revision and whether it is up to date."""
    from api import migrate

    url = _url(database_url)
    state = "up to date" if migrate.is_up_to_date(url) else "NOT up to date: run twin db upgrade"
    console.print(f"{url}: revision {migrate.current_revision(url)} ({state})")


# -- keys --------------------------------------------------------------------------------
# Whoever can reach the database may manage keys (that is how the first admin key is
# made); these changes are audited with the actor "cli:<os user>".
@keys_app.command("create")
@friendly_errors
def keys_create(
    role: Annotated[str, typer.Option(help="viewer, operator, engineer or admin")],
    name: Annotated[str, typer.Option(help="who or what uses it, e.g. alice")],
    database_url: UrlOption = None,
) -> None:
    """Create an API key and print its token, once: only its hash is stored."""
    from api.db import open_session
    from api.services import auth

    with open_session(_url(database_url)) as session:
        key, token = auth.create_key(session, name, role, auth.cli_actor())
        console.print(f"created API key [bold]{key.id}[/] '{escape(key.name)}' with the {key.role} "
                      "role; its token is shown only now, store it:")
    # Plain echo: no rich wrapping or markup in the one line people copy.
    typer.echo(token)


@keys_app.command("list")
@friendly_errors
def keys_list(database_url: UrlOption = None) -> None:
    """List the keys (never their tokens), revoked ones too."""
    from api.db import open_session
    from api.services import auth

    table = Table(title="API keys")
    for column in ("id", "name", "role", "prefix", "created", "by", "revoked"):
        table.add_column(column)
    with open_session(_url(database_url)) as session:
        for key in auth.list_keys(session):
            revoked = f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else ""
            table.add_row(str(key.id), escape(key.name), key.role, key.prefix,
                          f"{key.created_at:%Y-%m-%d %H:%M}", escape(key.created_by), revoked)
    console.print(table)


@keys_app.command("revoke")
@friendly_errors
def keys_revoke(key_id: Annotated[int, typer.Argument(help="the key's id (twin keys list)")],
                database_url: UrlOption = None) -> None:
    """Revoke a key; requests with it are refused (401) from now on."""
    from api.db import open_session
    from api.services import auth

    with open_session(_url(database_url)) as session:
        key = auth.revoke_key(session, key_id, auth.cli_actor())
        console.print(f"API key {key.id} '{escape(key.name)}' ({key.role}) is revoked")


# -- data --------------------------------------------------------------------------------
@data_app.command("generate")
@friendly_errors
def data_generate(
    out: Annotated[Path, typer.Option(help="output .csv or .parquet")],
    process: Annotated[str, typer.Option(help="process name")] = "cstr",
    hours: Annotated[float, typer.Option(min=0.05, max=10_000, help="plant hours to log")] = 6.0,
    seed: Annotated[int, typer.Option(help="random seed (data is reproducible by seed)")] = 1,
    patient: PatientOption = None,
) -> None:
    """Log excitation data from a process simulator (within every actuator limit)."""
    from processes import get_process, get_spec

    module = get_process(process)
    get_spec(process, patient)  # an unknown patient, or one for a process without, is refused
    variant = {} if patient is None else {"patient": patient}
    with console.status(f"simulating {hours:g} h of {process}..."):
        df = module.generate_training_log(hours, seed, **variant)
    write_log(df, out)
    console.print(f"wrote {len(df)} samples ({hours:g} h at {module.SPEC.sample_period_s:g} s) "
                  f"to [bold]{out}[/]")


# -- train -------------------------------------------------------------------------------
def _spec_for(process: str | None, spec_file: Path | None,
              patient: str | None = None) -> ProcessSpec:
    if spec_file is not None:
        if patient is not None:
            raise InvalidInput("--patient chooses a built-in process's variant: give it "
                               "with --process, not --spec")
        return ProcessSpec.load(spec_file)
    if process is None:
        raise InvalidInput("give --process NAME or --spec FILE")
    from processes import get_spec

    return get_spec(process, patient)


@app.command()
@friendly_errors
def train(
    data: Annotated[Path, typer.Option(help="training log, .csv or .parquet")],
    out: Annotated[Path, typer.Option(help="checkpoint file to write")],
    process: Annotated[str | None, typer.Option(help="built-in process name")] = None,
    spec: Annotated[Path | None, typer.Option(help="tag spec .yaml/.json instead")] = None,
    epochs: Annotated[int, typer.Option(min=1, max=10_000)] = 30,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    max_minutes: Annotated[float, typer.Option(min=0.1, help="stop after this long")] = 5.0,
    name: Annotated[str, typer.Option(help="model name in the registry")] = "jepa",
    register: Annotated[bool, typer.Option(help="store the model and a train run")] = True,
    patient: PatientOption = None,
    database_url: UrlOption = None,
) -> None:
    """Train a JEPA twin on a log; save the checkpoint and register it in the database.

    A glucose twin is of one patient (--patient, default adult#001): its spec carries that
    patient's limits, and its loops fall back to that patient's basal and bolus wizard."""
    from processes import train_config_for
    from twin.simc import with_simc_gains  # late, like torch: scipy loads when training
    from twin.train import train_twin

    process_spec = _spec_for(process, spec, patient)
    if register and spec is not None:  # refuse changed tags before training, not after
        _check_spec_change(database_url, process_spec)
    df = read_log(data)
    process_spec = with_simc_gains(process_spec, df)  # a PI pairing without gains: SIMC
    config = train_config_for(process if spec is None else None, epochs=epochs, seed=seed,
                              max_seconds=max_minutes * 60.0)
    _fit_threads_to_load()
    twin, history = train_twin(df, process_spec, config, show_progress=True)
    sha = twin.save(out)
    _print_training(twin.metrics, process_spec)
    console.print(f"checkpoint [bold]{out}[/] sha256 {sha[:16]}...")
    if register:
        from api.services.models import log_provenance

        provenance = log_provenance(df, process_spec, source=f"file:{data.resolve()}",
                                    path=data)
        data_config = {"path": str(data), "sha256": provenance.sha256,
                       "rows": provenance.rows, "time_s": [provenance.start_s, provenance.end_s]}
        model_id = _register(database_url, process_spec, name, out, twin.metrics,
                             {"train": config.to_dict(), "data": data_config}, provenance,
                             from_file=spec is not None)
        console.print(f"registered as model [bold]{model_id}[/]")


def _check_spec_change(url: str | None, spec: ProcessSpec) -> None:
    from api.db import open_session
    from api.services.processes import check_spec_change

    with open_session(_url(url)) as session:
        check_spec_change(session, spec)


@app.command()
@friendly_errors
def register(
    model: Annotated[Path, typer.Option(help="checkpoint file of a twin trained elsewhere")],
    data: Annotated[Path, typer.Option(help="the log it was trained on, .csv or .parquet")],
    name: Annotated[str, typer.Option(help="model name in the registry")] = "jepa",
    database_url: UrlOption = None,
) -> None:
    """Register a checkpoint made by `twin train` elsewhere (e.g. the demo's shipped twin),
    with a training run carrying its stored curves and the data's provenance."""
    from api.services.models import log_provenance
    from twin.twin_model import Twin

    twin_model = Twin.load(model)
    df = read_log(data)
    provenance = log_provenance(df, twin_model.spec, source=f"file:{data.resolve()}",
                                path=data)
    data_config = {"path": str(data), "sha256": provenance.sha256, "rows": provenance.rows,
                   "time_s": [provenance.start_s, provenance.end_s]}
    config = {"train": twin_model.train_config, "data": data_config, "registered_from": str(model)}
    model_id = _register(database_url, twin_model.spec, name, model, twin_model.metrics, config,
                         provenance)
    console.print(f"registered [bold]{model}[/] as model [bold]{model_id}[/]")


def _fit_threads_to_load() -> None:
    """One torch thread on a machine already busier than its cores: there, two threads
    spin against each other and a batch took 8-12 s instead of 1.1 s (CSTR recipe, 2
    cores at load ~20). OMP_NUM_THREADS, when set, decides instead."""
    import os

    import torch

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if "OMP_NUM_THREADS" in os.environ or cores < 2 or load < cores:
        return
    torch.set_num_threads(1)
    console.print(f"busy machine (load {load:.1f} on {cores} cores): training on one thread "
                  "(set OMP_NUM_THREADS to choose)")


def _register(url: str | None, spec: ProcessSpec, name: str, checkpoint: Path,
              metrics: dict[str, Any], config: dict[str, Any],
              provenance: DataProvenance, from_file: bool = False) -> int:
    from api import services
    from api.db import open_session
    from api.services.processes import store_spec

    with open_session(_url(url)) as session:
        if from_file:  # a tag file is versioned as POST /api/processes versions it
            stored = store_spec(session, spec)
            what = ("new" if stored.created else
                    f"changed: {', '.join(stored.changed)}" if stored.changed else "unchanged")
            console.print(f"process [bold]{spec.name}[/] spec version {stored.version} "
                          f"({what})")
        else:
            services.ensure_process(session, spec)
        model = services.register_model(session, spec.name, name, checkpoint.read_bytes(),
                                        config, metrics, provenance=provenance)
        run = services.create_run(session, kind="train", process=spec.name, controller="jepa",
                                  config=config, model_id=model.id)
        summary = {k: v for k, v in metrics.items() if k != "history"}
        summary["history"] = metrics.get("history", [])
        services.finish_run(session, run.id, "succeeded", summary)
        return int(model.id)


def _print_training(metrics: dict[str, Any], spec: ProcessSpec) -> None:
    units = {t.name: t.unit for t in spec.tags}
    table = Table(title="twin after training (held-out windows)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("epochs", str(metrics["epochs"]))
    table.add_row("training time", f"{metrics['train_seconds']:.1f} s")
    table.add_row("embedding prediction error (MSE)", f"{metrics['holdout_prediction']:.4f}")
    table.add_row("effective rank", f"{metrics['effective_rank']:.2f}")
    table.add_row("min per-dimension std", f"{metrics['dim_std_min']:.3f}")
    for tag, rmse in metrics["readout_rmse"].items():
        table.add_row(f"readout RMSE {tag}", f"{rmse:.4g} {units[tag]}")
    console.print(table)


# -- control -----------------------------------------------------------------------------
@app.command()
@friendly_errors
def control(
    model: Annotated[Path | None, typer.Option(
        help="checkpoint file of a trained twin (not with --controller baseline)")] = None,
    plant: Annotated[str | None, typer.Option(
        "--plant", "--process",
        help="built-in simulator to drive (default: the twin's own process)")] = None,
    planner: Annotated[str, typer.Option(
        help="casadi (default), casadi-ipopt, casadi-fatrop, cem or mppi")] = "casadi",
    controller_kind: Annotated[str, typer.Option(
        "--controller", help="twin (the twin's MPC) or baseline (the process's classical "
                             "controller, e.g. the CSTR's PI)")] = "twin",
    seed: Annotated[int, typer.Option(help="plant noise seed")] = 7,
    store: Annotated[bool, typer.Option(help="store the episode as a run")] = True,
    database_url: UrlOption = None,
) -> None:
    """Run a process's standard closed-loop episode with the twin's MPC and store it.

    A twin of a process known only from its tag file can drive a built-in simulator whose
    tags it shares (--plant): the simulator stands in for the real plant, and the
    controller knows nothing but what the twin learned from the files. With --controller
    baseline the same episode (same scenario and seed) runs under the process's classical
    controller instead, to compare the twin against.
    """
    from processes import get_process, plant_parts
    from twin.assembly import build_controller
    from twin.planner_names import PLANNER_NAMES as PLANNERS
    from twin.twin_model import Twin

    if controller_kind not in ("twin", "baseline"):
        raise InvalidInput(f"unknown controller '{controller_kind}' (twin or baseline)")
    if controller_kind == "baseline":
        _control_baseline(plant, model, seed, store, database_url)
        return
    if model is None:
        raise InvalidInput("give --model CHECKPOINT (or --controller baseline --process NAME)")
    if planner not in PLANNERS:
        raise InvalidInput(f"unknown planner '{planner}' (one of: {', '.join(PLANNERS)})")
    twin_model = Twin.load(model)
    name = plant or twin_model.spec.name
    module = get_process(name)
    _check_plant_tags(twin_model.spec, module.SPEC)
    parts = plant_parts(twin_model.spec)  # bound to the twin's variant (glucose: patient)
    controller = build_controller(twin_model, planner, parts=parts)
    variant = {"patient": parts.variant} if parts.variant is not None and plant is None else {}
    episode = module.run_episode(module.twin_policy(controller), f"twin+{planner}", seed=seed,
                                 config={"planner": planner, "checkpoint": str(model)},
                                 show_progress=True, **variant)
    episode.process = twin_model.spec.name
    _print_episode(episode.metrics, module.EPISODE_SUMMARY)
    if store:
        run_id = _store_episode(database_url, episode, model, twin_model.spec)
        console.print(f"stored as run [bold]{run_id}[/]; with `twin serve` running, open "
                      f"http://127.0.0.1:8000/runs/{run_id}")


def _control_baseline(process: str | None, model: Path | None, seed: int, store: bool,
                      database_url: str | None) -> None:
    """The standard episode under the process's classical controller, stored as a run."""
    from processes import get_process

    if model is not None:
        raise InvalidInput("--controller baseline takes no --model")
    if process is None:
        raise InvalidInput("give --process NAME with --controller baseline")
    module = get_process(process)
    episode = module.run_episode(module.baseline_policy(), "baseline", seed=seed,
                                 config={"controller": "baseline"}, show_progress=True)
    _print_episode(episode.metrics, module.EPISODE_SUMMARY)
    if store:
        run_id = _store_episode(database_url, episode, None, module.SPEC)
        console.print(f"stored as run [bold]{run_id}[/]")


def _check_plant_tags(twin_spec: ProcessSpec, plant_spec: ProcessSpec) -> None:
    if twin_spec.name == plant_spec.name:
        return
    plant_tags = {t.name: t for t in plant_spec.tags}
    problems = []
    for tag in twin_spec.tags:
        other = plant_tags.get(tag.name)
        if other is None:
            problems.append(f"'{tag.name}' is not a tag of {plant_spec.name}")
        elif other.role != tag.role or other.unit != tag.unit:
            problems.append(f"'{tag.name}' is a {tag.role} in {tag.unit} for the twin but a "
                            f"{other.role} in {other.unit} on {plant_spec.name}")
    if problems:
        raise InvalidInput(f"twin of '{twin_spec.name}' cannot drive {plant_spec.name}: "
                           + "; ".join(problems))


def _store_episode(url: str | None, episode: Any, checkpoint: Path | None,
                   spec: ProcessSpec, kind: str = "control") -> int:
    from api import services
    from api.db import open_session
    from api.orm import TwinModel

    with open_session(_url(url)) as session:
        services.ensure_process(session, spec)
        model_id = None
        if checkpoint is not None:
            sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
            model = session.query(TwinModel).filter_by(sha256=sha).order_by(
                TwinModel.id.desc()).first()
            model_id = model.id if model else None
        run = services.store_episode(session, episode, kind=kind, model_id=model_id)
        return int(run.id)


def _print_episode(metrics: dict[str, Any], rows: Any, title: str = "closed-loop episode "
                   "(true plant state)") -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in rows:
        value = metrics.get(row.key)
        if value is None:
            continue
        text = format(int(value), "d") if row.fmt == "d" else format(float(value), row.fmt)
        table.add_row(row.label, f"{text} {row.unit}".strip())
    console.print(table)


# -- replay ------------------------------------------------------------------------------
def _parse_setpoints(items: list[str] | None) -> dict[str, float] | None:
    if not items:
        return None
    out = {}
    for item in items:
        tag, sep, value = item.partition("=")
        try:
            out[tag.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not tag.strip():
            raise InvalidInput(f"setpoint '{item}' must look like TAG=VALUE, e.g. T=360")
    return out


@app.command()
@friendly_errors
def replay(
    model: Annotated[Path, typer.Option(help="checkpoint file of a trained twin")],
    data: Annotated[Path, typer.Option(help="logged data, .csv or .parquet")],
    mode: Annotated[str, typer.Option(help="open-loop, shadow or logged")] = "open-loop",
    horizon: Annotated[int, typer.Option(min=1, max=500, help="open-loop steps ahead")] = 20,
    stride: Annotated[int, typer.Option(min=1, help="open loop: predict from every n-th "
                                                    "sample")] = 1,
    setpoint: Annotated[list[str] | None, typer.Option(
        help="shadow: TAG=VALUE (repeat); default: each controlled tag's median")] = None,
    planner: Annotated[str, typer.Option(
        help="shadow: casadi, casadi-ipopt, casadi-fatrop, cem or mppi")] = "casadi",
    store: Annotated[bool, typer.Option(help="store the replay as a run")] = True,
    database_url: UrlOption = None,
) -> None:
    """Replay a log through a twin: open-loop predictions, shadow control, or the log itself."""
    from processes import plant_parts
    from processes.base import SummaryRow
    from twin import replay as replays
    from twin.assembly import build_controller
    from twin.twin_model import Twin

    if mode not in ("open-loop", "shadow", "logged"):
        raise InvalidInput(f"unknown mode '{mode}' (choose open-loop, shadow or logged)")
    twin_model = Twin.load(model)
    spec = twin_model.spec
    df = read_log(data)
    if mode == "open-loop":
        episode = replays.open_loop(twin_model, df, horizon, stride, show_progress=True)
        rows = [SummaryRow("samples", "predictions", "", "d")] + [
            SummaryRow(f"nrmse_h{h}", f"{h}-step RMSE / range", "", ".4f")
            for h in sorted({*[h for h in replays.REPORT_HORIZONS if h <= horizon], horizon})]
        for tag in twin_model.layout.sensors:
            rows.append(SummaryRow(f"rmse_{tag}_h{horizon}", f"{horizon}-step RMSE {tag}",
                                   spec.tag(tag).unit, ".4g"))
    elif mode == "shadow":
        controller = build_controller(twin_model, planner, parts=plant_parts(spec))
        episode = replays.shadow(controller, df, _parse_setpoints(setpoint), show_progress=True)
        rows = [SummaryRow("samples", "samples", "", "d"),
                SummaryRow("fallbacks", "fallback steps", "", "d"),
                SummaryRow("plan_ms_median", "planning median", "ms", ".1f")] + [
            SummaryRow(f"mean_abs_diff_{a}", f"mean |twin - logged| {a}", spec.tag(a).unit)
            for a in twin_model.layout.actions]
    else:
        episode = replays.as_logged(df, spec)
        rows = [SummaryRow("samples", "samples", "", "d"),
                SummaryRow("violations", "samples beyond a hard limit", "", "d")]
    episode.config["data"] = str(data)
    _print_episode(episode.metrics, rows, title=f"replay ({mode}) of {data.name}")
    if store:
        run_id = _store_episode(database_url, episode, model, spec, kind="replay")
        console.print(f"stored as run [bold]{run_id}[/]")


# -- serving and workers -----------------------------------------------------------------
@app.command()
@friendly_errors
def serve(
    host: Annotated[str, typer.Option(envvar="TWIN_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="TWIN_PORT", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="API worker processes")] = 1,
    migrate_first: Annotated[bool, typer.Option(
        "--migrate/--no-migrate", help="upgrade the database before serving")] = False,
    database_url: UrlOption = None,
) -> None:
    """Serve the API (/docs) and the dashboards (/)."""
    import os

    import uvicorn

    from api import migrate

    url = _url(database_url)
    os.environ["DATABASE_URL"] = url
    missing = _missing_sqlite_file(url)
    if missing is not None and not migrate_first:  # checking would create an empty file
        raise migrate.DatabaseNotMigrated(
            f"no database at {missing}: run `twin db upgrade` (or `twin serve --migrate`)")
    if migrate_first:
        migrate.upgrade(url)
    elif not migrate.is_up_to_date(url):
        raise migrate.DatabaseNotMigrated(
            f"database at {url} is not migrated to the latest schema: run `twin db upgrade`")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    console.print(f"dashboards: [bold]http://{shown}:{port}/[/]   "
                  f"API docs: [bold]http://{shown}:{port}/docs[/]   (Ctrl+C to stop)")
    compared = _twin_and_baseline(url)
    if compared is not None:
        console.print(f"twin against baseline, same scenario: [bold]http://{shown}:{port}"
                      f"/compare?runs={compared[0]}&runs={compared[1]}[/]")
    latest = _latest_control_run(url)
    if latest is not None:
        console.print(f"latest closed-loop run: [bold]http://{shown}:{port}/runs/{latest}[/]")
    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="info")


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
    from api import services
    from api.db import open_session

    with open_session(url) as session:
        runs = services.list_runs(session, kind="control", limit=200)
        twin = next((r for r in runs if r.controller != "baseline"), None)
        if twin is None:
            return None
        seed = (twin.config or {}).get("seed")
        base = next((r for r in runs if r.controller == "baseline"
                     and r.process_id == twin.process_id
                     and (r.config or {}).get("seed") == seed), None)
        return None if base is None else (int(twin.id), int(base.id))


def _latest_control_run(url: str) -> int | None:
    from api import services
    from api.db import open_session

    with open_session(url) as session:
        runs = services.list_runs(session, kind="control", limit=1)
        return int(runs[0].id) if runs else None


@app.command()
@friendly_errors
def worker(
    poll_seconds: Annotated[float, typer.Option(min=0.1)] = 2.0,
    once: Annotated[bool, typer.Option(help="process what is queued, then exit")] = False,
    database_url: UrlOption = None,
) -> None:
    """Run queued training jobs (POST /api/jobs/train) outside the API process."""
    from api.worker import run_worker

    count = run_worker(_url(database_url), poll_seconds=poll_seconds, once=once)
    console.print(f"worker processed {count} job(s)")


if __name__ == "__main__":
    app()
