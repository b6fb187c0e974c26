"""`twin control` and `twin replay`: closed-loop episodes and replays of a log, from the
command line, stored as runs on request.

Commands import what they need inside their bodies (late imports): `twin --help` and the
light commands must not pay seconds for torch, CasADi, the simulators or the database layer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from api.cli_common import (
    UrlOption,
    console,
    friendly_errors,
    resolve_url,
)
from twin.errors import InvalidInput
from twin.logs import read_log
from twin.spec import ProcessSpec


@friendly_errors
def control(
    model: Annotated[
        Path | None,
        typer.Option(help="checkpoint file of a trained twin (not with --controller baseline)"),
    ] = None,
    plant: Annotated[
        str | None,
        typer.Option(
            "--plant",
            "--process",
            help="built-in simulator to drive (default: the twin's own process)",
        ),
    ] = None,
    planner: Annotated[
        str, typer.Option(help="casadi (default), casadi-ipopt, casadi-fatrop, cem or mppi")
    ] = "casadi",
    controller_kind: Annotated[
        str,
        typer.Option(
            "--controller",
            help="twin (the twin's MPC) or baseline (the process's classical "
            "controller, e.g. the CSTR's PI)",
        ),
    ] = "twin",
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
    controller = _planner_that_keeps_up(controller, planner, parts)
    variant = {"patient": parts.variant} if parts.variant is not None and plant is None else {}
    episode = module.run_episode(
        module.twin_policy(controller),
        f"twin+{planner}",
        seed=seed,
        config={"planner": planner, "checkpoint": str(model)},
        show_progress=True,
        **variant,
    )
    episode.process = twin_model.spec.name
    _print_episode(episode.metrics, module.EPISODE_SUMMARY)
    if store:
        run_id = _store_episode(database_url, episode, model, twin_model.spec)
        console.print(
            f"stored as run [bold]{run_id}[/]; with `twin serve` running, open "
            f"http://127.0.0.1:8000/runs/{run_id}"
        )


def _planner_that_keeps_up(controller: Any, name: str, parts: Any) -> Any:
    """The controller with a planner that keeps up with the sample period on this twin,
    timed before the episode: a sampling planner (cem, mppi) over its budget is rebuilt
    with fewer samples and iterations; one that still cannot keep up is refused before
    anything runs or is stored (a plan over its deadline is discarded, and the episode
    would be the baseline's)."""
    from twin.assembly import build_controller
    from twin.planning.timing import planner_that_fits, time_planner

    timing = time_planner(controller.planner, controller.twin)
    if timing.fits:
        console.print(timing.summary())
        return controller
    fitted, timing = planner_that_fits(name, controller.twin)
    if not timing.fits:
        raise InvalidInput(
            f"{timing.summary()}; nothing was run. --planner casadi keeps up on every "
            "built-in process"
        )
    if hasattr(fitted, "samples"):
        console.print(
            f"{timing.summary()}, with {fitted.samples} samples x {fitted.iterations} "
            "iterations (fewer than its defaults, so that it keeps up)"
        )
    else:
        console.print(timing.summary())
    return build_controller(controller.twin, fitted, parts=parts)


def _control_baseline(
    process: str | None, model: Path | None, seed: int, store: bool, database_url: str | None
) -> None:
    """The standard episode under the process's classical controller, stored as a run."""
    from processes import get_process

    if model is not None:
        raise InvalidInput("--controller baseline takes no --model")
    if process is None:
        raise InvalidInput("give --process NAME with --controller baseline")
    module = get_process(process)
    episode = module.run_episode(
        module.baseline_policy(),
        "baseline",
        seed=seed,
        config={"controller": "baseline"},
        show_progress=True,
    )
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
            problems.append(
                f"'{tag.name}' is a {tag.role} in {tag.unit} for the twin but a "
                f"{other.role} in {other.unit} on {plant_spec.name}"
            )
    if problems:
        raise InvalidInput(
            f"twin of '{twin_spec.name}' cannot drive {plant_spec.name}: " + "; ".join(problems)
        )


def _store_episode(
    url: str | None, episode: Any, checkpoint: Path | None, spec: ProcessSpec, kind: str = "control"
) -> int:
    from api.db import open_session
    from api.orm import TwinModel
    from api.services import processes as processes_service
    from api.services import runs as runs_service

    with open_session(resolve_url(url)) as session:
        processes_service.ensure_process(session, spec)
        model_id = None
        if checkpoint is not None:
            sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
            model = (
                session.query(TwinModel).filter_by(sha256=sha).order_by(TwinModel.id.desc()).first()
            )
            model_id = model.id if model else None
        run = runs_service.store_episode(session, episode, kind=kind, model_id=model_id)
        return int(run.id)


def _print_episode(
    metrics: dict[str, Any], rows: Any, title: str = "closed-loop episode (true plant state)"
) -> None:
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


@friendly_errors
def replay(
    model: Annotated[Path, typer.Option(help="checkpoint file of a trained twin")],
    data: Annotated[Path, typer.Option(help="logged data, .csv or .parquet")],
    mode: Annotated[str, typer.Option(help="open-loop, shadow or logged")] = "open-loop",
    horizon: Annotated[int, typer.Option(min=1, max=500, help="open-loop steps ahead")] = 20,
    stride: Annotated[
        int, typer.Option(min=1, help="open loop: predict from every n-th sample")
    ] = 1,
    setpoint: Annotated[
        list[str] | None,
        typer.Option(help="shadow: TAG=VALUE (repeat); default: each controlled tag's median"),
    ] = None,
    planner: Annotated[
        str, typer.Option(help="shadow: casadi, casadi-ipopt, casadi-fatrop, cem or mppi")
    ] = "casadi",
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
            for h in sorted({*[h for h in replays.REPORT_HORIZONS if h <= horizon], horizon})
        ]
        for tag in twin_model.layout.sensors:
            rows.append(
                SummaryRow(
                    f"rmse_{tag}_h{horizon}",
                    f"{horizon}-step RMSE {tag}",
                    spec.tag(tag).unit,
                    ".4g",
                )
            )
    elif mode == "shadow":
        controller = build_controller(twin_model, planner, parts=plant_parts(spec))
        episode = replays.shadow(controller, df, _parse_setpoints(setpoint), show_progress=True)
        rows = [
            SummaryRow("samples", "samples", "", "d"),
            SummaryRow("fallbacks", "fallback steps", "", "d"),
            SummaryRow("plan_ms_median", "planning median", "ms", ".1f"),
        ] + [
            SummaryRow(f"mean_abs_diff_{a}", f"mean |twin - logged| {a}", spec.tag(a).unit)
            for a in twin_model.layout.actions
        ]
    else:
        episode = replays.as_logged(df, spec)
        rows = [
            SummaryRow("samples", "samples", "", "d"),
            SummaryRow("violations", "samples beyond a hard limit", "", "d"),
        ]
    episode.config["data"] = str(data)
    _print_episode(episode.metrics, rows, title=f"replay ({mode}) of {data.name}")
    if store:
        run_id = _store_episode(database_url, episode, model, spec, kind="replay")
        console.print(f"stored as run [bold]{run_id}[/]")
