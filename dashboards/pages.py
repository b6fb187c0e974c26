"""HTML pages and the small JSON endpoints their scripts poll (`/dash/api/...`).

Data comes from `api.services` (the same queries as the JSON API); figures from
`dashboards.figures`. plotly.js is served from the installed plotly package: plants are
often offline, so no page loads anything from a CDN.

Pages:

* `/`: the plant overview: every process and loop with its status, active model,
  latest setpoints and open alarms; the page polls `/dash/api/overview`.
* `/runs/{id}`: one run (a live loop or a stored episode): trends with limits, the
  current plan ahead of "now", a time-range picker; a running loop appends new points
  from `/dash/api/runs/{id}/tail`, and zooming re-queries `/dash/api/runs/{id}/window`
  for a finer, downsampled window (so a month of 1 s data stays a few thousand points).
* `/compare?runs=1&runs=2`: runs of one process overlaid, with their summary metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import plotly
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import FiniteFloat
from sqlalchemy.orm import Session

from api import services
from api.deps import LoopsDep, SessionDep, SettingsDep
from api.errors import Invalid, NotFound, ServiceError
from api.orm import AlarmState, Run, RunKind, RunStatus
from api.services import alarms as alarm_service
from api.services import trend_reads as reads
from api.services.jsonsafe import json_safe
from api.services.loops import LoopManager, LoopView
from api.settings import Settings
from dashboards import figures
from dashboards.health import health_cards
from dashboards.health import recent as _recent
from dashboards.humanise import human_bytes, metric_label, metric_rows, summary_of
from dashboards.models_page import training_run_page
from twin.spec import ProcessSpec

PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
PLOTLY_JS_URL = "/static/plotly.min.js"
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"dash.js": "text/javascript", "dash.css": "text/css"}
LIVE_REFRESH_S = 5
REFRESH_CHOICES_S = (0, 5, 10, 30, 60)
# `?refresh=N` (seconds, 0: off) picks another period, as Grafana's `&refresh=` does.
RefreshQuery = Annotated[int | None, Query(ge=0, le=3_600, description="seconds; 0: off")]
TagsQuery = Annotated[list[str] | None, Query(description="tags to plot (repeat the "
                                                           "parameter); default: all of a "
                                                           "small process, the watched "
                                                           "ones of a large one")]
# Relative ranges of the picker (Grafana's habit), in seconds of the run's own time.
RANGES_S: dict[str, float | None] = {"15m": 900.0, "1h": 3_600.0, "1d": 86_400.0,
                                     "all": None}
RANGE_LABELS = {"15m": "Last 15 min", "1h": "Last 1 h", "1d": "Last 1 day", "all": "All"}
# A tail request that finds more new steps than this answers "reload the window" instead.
MAX_TAIL_STEPS = 2_000
# Status bands are drawn only for windows of at most this many steps (reading every
# step's status is what they cost); zooming in brings them back.
MAX_SPAN_STEPS = 50_000
OVERVIEW_STOPPED_LOOPS = 10
OVERVIEW_RUNNING_LOOPS = 1_000
OPEN_ALARM_STATES = (AlarmState.UNACKNOWLEDGED, AlarmState.ACKNOWLEDGED,
                     AlarmState.RTN_UNACKNOWLEDGED)
MAX_ALARMS_READ = 1_000
MAX_COMPARED_RUNS = len(figures.RUN_COLORS)
UNIX_SECONDS_FLOOR = 946_684_800.0  # 2000-01-01: run times above it are Unix seconds

templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
templates.env.filters["bytes"] = human_bytes
router = APIRouter(include_in_schema=False)


@router.get(PLOTLY_JS_URL)
def plotly_js() -> FileResponse:
    return FileResponse(PLOTLY_JS, media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/dash/static/{name}")
def static_file(name: str) -> FileResponse:
    if name not in STATIC_FILES:  # a fixed list: no path from the URL reaches the disk
        raise NotFound(f"no static file '{name}'")
    return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------- errors


def _refresh(seconds: int) -> dict[str, Any]:
    """The auto-refresh selector: its choices (with `seconds` among them) and its value."""
    return {"refresh_s": seconds,
            "refresh_choices": sorted(set(REFRESH_CHOICES_S) | {seconds})}


def _error_page(request: Request, exc: ServiceError) -> HTMLResponse:
    """A page's 4xx as a page a person can read (the JSON API keeps its JSON errors)."""
    return templates.TemplateResponse(
        request, "error.html", {"status": exc.status_code, "message": str(exc)},
        status_code=exc.status_code)


# ---------------------------------------------------------------- overview


@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: SessionDep, settings: SettingsDep,
          loops: LoopsDep, refresh: RefreshQuery = None) -> HTMLResponse:
    runs = services.list_runs(session, limit=settings.max_list_limit)
    counts = services.step_counts(session, [r.id for r in runs])
    context = {
        "overview": overview_data(session, loops),
        "runs": [_run_row(r, counts.get(r.id, 0)) for r in runs],
        "models": services.list_models(session),
        **_refresh(LIVE_REFRESH_S if refresh is None else refresh),
    }
    return templates.TemplateResponse(request, "index.html", context)


@router.get("/dash/api/overview")
def overview_json(session: SessionDep, loops: LoopsDep) -> JSONResponse:
    return JSONResponse(json_safe(overview_data(session, loops)))


def overview_data(session: Session, loops: LoopManager) -> dict[str, Any]:
    """Every process with its loops: running ones, then the latest stopped ones."""
    views = loops.list_loops(session, running=True, limit=OVERVIEW_RUNNING_LOOPS)
    views += loops.list_loops(session, running=False, limit=OVERVIEW_STOPPED_LOOPS)
    open_alarms = _open_alarms(session)
    rows = [_loop_row(session, view, open_alarms.get(view.run.id, [])) for view in views]
    processes = []
    for process in services.list_processes(session):
        own = [r for r in rows if r["process"] == process.name]
        processes.append({
            "name": process.name, "description": process.spec.get("description", ""),
            "sample_period_s": process.spec.get("sample_period_s"),
            "loops": own, "status": _worst_status(own),
        })
    return {"generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "processes": processes,
            "open_alarms": sum(len(a) for a in open_alarms.values())}


def _open_alarms(session: Session) -> dict[int, list[dict[str, Any]]]:
    """Open alarms (active or not yet acknowledged) of every loop, most urgent first."""
    by_run: dict[int, list[dict[str, Any]]] = {}
    for alarm in alarm_service.list_alarms(session, limit=MAX_ALARMS_READ):
        if alarm.state in OPEN_ALARM_STATES:
            by_run.setdefault(alarm.run_id, []).append(
                {"id": alarm.id, "priority": alarm.priority, "state": alarm.state,
                 "kind": alarm.kind, "message": alarm.message})
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    for found in by_run.values():
        found.sort(key=lambda a: order.get(a["priority"], 9))
    return by_run


def _loop_row(session: Session, view: LoopView, open_alarms: list[dict[str, Any]]
              ) -> dict[str, Any]:
    run = view.run
    spec = services.spec_of(run.process)
    model = view.model
    recent = _recent(session, run.id, spec)
    return {
        "run_id": run.id, "process": run.process.name, "status": view.status,
        "run_status": run.status, "controller": run.controller,
        "age_s": view.age_s, "stale_after_s": view.stale_after_s,
        "last_step": view.last.step if view.last else None,
        "last_time_s": view.last.time_s if view.last else None,
        "model": None if model is None else {"id": model.id, "name": model.name,
                                             "version": model.version},
        "setpoints": _readings(spec, view.setpoints),
        "actuators": _readings(spec, view.actuators),
        "alarms": open_alarms,
        "health": [asdict(card) for card in health_cards(spec, recent, view.status)],
    }


def _readings(spec: ProcessSpec, values: dict[str, float]) -> list[dict[str, Any]]:
    units = {t.name: t.unit for t in spec.tags}
    return [{"tag": tag, "value": value, "unit": units.get(tag, "")}
            for tag, value in sorted(values.items())]


def _worst_status(rows: Sequence[dict[str, Any]]) -> str:
    statuses = {r["status"] for r in rows if r["run_status"] == RunStatus.RUNNING}
    for status in ("stale", "fallback", "ok"):
        if status in statuses:
            return status
    return "idle"


# ---------------------------------------------------------------- one run (live)


@dataclass(frozen=True)
class Window:
    """The time range shown, in the run's own seconds; `key` is the picker's choice."""

    key: str
    start_s: float | None
    end_s: float | None


def resolve_window(key: str | None, start_s: float | None, end_s: float | None,
                   first_s: float | None, last_s: float | None, default: str) -> Window:
    """A custom range wins over a relative one; relative ranges count back from the last
    step (the run's "now"). Bad input is a clear 422."""
    if start_s is not None or end_s is not None:
        if start_s is not None and end_s is not None and start_s >= end_s:
            raise Invalid(f"start_s ({start_s:g} s) must be before end_s ({end_s:g} s)")
        return Window("custom", start_s, end_s)
    key = key or default
    if key not in RANGES_S:
        raise Invalid(f"unknown range '{key}' (one of: {', '.join(RANGES_S)}, or give "
                      "start_s and end_s)")
    width = RANGES_S[key]
    if width is None or last_s is None:
        return Window(key, None, None)
    start = last_s - width
    return Window(key, None if first_s is not None and start <= first_s else start, None)


def chosen_tags(spec: ProcessSpec, tags: Sequence[str] | None) -> list[str]:
    """The tags a page plots: those asked for (each must exist), else the focus ones."""
    if not tags:
        return figures.focus_tags(spec)
    known = [t.name for t in spec.tags]
    unknown = sorted(set(tags) - set(known))
    if unknown:
        raise Invalid(f"unknown tag(s) {', '.join(unknown)} for process '{spec.name}' "
                      f"(known: {', '.join(known)})")
    return [name for name in known if name in set(tags)]


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: int, session: SessionDep, settings: SettingsDep,
             loops: LoopsDep, step: Annotated[int | None, Query()] = None,
             range_key: Annotated[str | None, Query(alias="range")] = None,
             start_s: FiniteFloat | None = None,
             end_s: FiniteFloat | None = None, refresh: RefreshQuery = None,
             tags: TagsQuery = None) -> Response:
    try:
        return _run_page(request, run_id, session, settings, loops, step,
                         RunView(range_key, start_s, end_s, refresh, tags))
    except ServiceError as exc:
        return _error_page(request, exc)


@dataclass(frozen=True)
class RunView:
    """What the run page's URL asks for: a range, a refresh period, the tags to plot."""

    range_key: str | None
    start_s: float | None
    end_s: float | None
    refresh: int | None
    tags: list[str] | None


def _run_page(request: Request, run_id: int, session: Session, settings: Settings,
              loops: LoopManager, step: int | None, asked: RunView) -> HTMLResponse:
    run = services.get_run(session, run_id)
    if run.kind == RunKind.TRAIN:  # curves and provenance, not control trends
        return training_run_page(request, session, run, _run_row(run, None))
    spec = services.spec_of(run.process)
    tags = chosen_tags(spec, asked.tags)
    live = run.status in (RunStatus.RUNNING, RunStatus.QUEUED)
    ends = reads.run_ends(session, run_id)
    window = resolve_window(asked.range_key, asked.start_s, asked.end_s,
                            ends.first_s if ends else None, ends.last_s if ends else None,
                            default="1h" if live else "all")
    series = _series(session, run_id, window.start_s, window.end_s,
                     settings.dashboard_points, tags)
    step_range = (ends.first_step, ends.last_step) if ends else None
    plan_at = _plan_at(session, run_id, step_range, step, latest=live)
    events = reads.events_in_window(session, run_id, window.start_s, window.end_s)
    spans = _spans(session, run_id, spec, series)
    figure = figures.run_figure(spec, series, events, plan_at, spans=spans or (), live=live,
                                x_range=_x_range(series, window, plan_at), only=tags)
    status = _loop_status(session, loops, run)
    context = {
        "run": _run_row(run, None),
        "config": run.config, "live": live,
        "metrics": metric_rows(run.metrics or {}, summary_of(run.process.name),
                               {t.name: t.unit for t in spec.tags}),
        "loop_status": status,
        "health": health_cards(spec, _recent(session, run_id, spec), status),
        "step_range": step_range, "step": plan_at["step"] if plan_at else None,
        "figure_json": figures.to_json(figure),
        "events": events[-50:][::-1],
        "window": window, "ranges": RANGE_LABELS,
        **_refresh(0 if not live else LIVE_REFRESH_S if asked.refresh is None
                   else asked.refresh),
        "all_tags": [t.name for t in spec.tags], "tags": tags,
        "page": {
            "runId": run_id, "live": live, "sampleS": spec.sample_period_s,
            "clockOriginMs": clock_origin_ms(run, ends.first_s if ends else None),
            "range": asdict(window), "firstS": ends.first_s if ends else None,
            "lastS": ends.last_s if ends else None,
            "lastStep": step_range[1] if step_range else None,
            "stride": series.get("stride", 1), "points": len(series.get("time_s", [])),
            "maxPoints": settings.dashboard_points, "tags": tags,
            "spans": [s.to_dict() for s in spans or ()], "spanColors": figures.SPAN_COLORS,
            "windowUrl": f"/dash/api/runs/{run_id}/window",
            "tailUrl": f"/dash/api/runs/{run_id}/tail",
        },
    }
    return templates.TemplateResponse(request, "run.html", context)


def clock_origin_ms(run: Run, first_s: float | None) -> float:
    """The UTC clock time (ms since 1970) of the run's second 0, for the trends' ticks.

    Times that already are Unix seconds (a loop fed by a historian) are their own clock;
    otherwise (a simulated episode, a loop counting from its start) the first step is
    taken as the moment the run started."""
    if first_s is not None and first_s > UNIX_SECONDS_FLOOR:
        return 0.0
    started = run.started_at.replace(tzinfo=run.started_at.tzinfo or UTC)
    return started.timestamp() * 1000.0 - (first_s or 0.0) * 1000.0


def _loop_status(session: Session, loops: LoopManager, run: Run) -> str | None:
    """ok / fallback / stale / stopped for a control loop; None for other runs."""
    if run.kind != RunKind.CONTROL:
        return None
    if run.status != RunStatus.RUNNING:
        return "stopped"
    return loops.view(session, run.id).status


@router.get("/dash/api/runs/{run_id}/window")
def run_window(run_id: int, session: SessionDep, settings: SettingsDep,
               start_s: FiniteFloat | None = None, end_s: FiniteFloat | None = None,
               max_points: Annotated[int | None, Query(ge=10)] = None,
               tags: TagsQuery = None) -> JSONResponse:
    """Every trace of the run page for [start_s, end_s], downsampled to `max_points`."""
    run = services.get_run(session, run_id)
    spec = services.spec_of(run.process)
    chosen = chosen_tags(spec, tags)
    if start_s is not None and end_s is not None and start_s >= end_s:
        raise Invalid(f"start_s ({start_s:g} s) must be before end_s ({end_s:g} s)")
    points = min(max_points or settings.dashboard_points, settings.max_series_points)
    series = _series(session, run_id, start_s, end_s, points, chosen)
    spans = _spans(session, run_id, spec, series)
    ends = reads.run_ends(session, run_id)
    return JSONResponse(json_safe({
        "traces": figures.series_traces(spec, series, only=chosen),
        "stride": series.get("stride", 1),
        "points": len(series.get("time_s", [])),
        "spans": None if spans is None else [s.to_dict() for s in spans],
        # Where a live page's tail goes on from after a reload.
        "last_step": ends.last_step if ends else -1, "last_s": ends.last_s if ends else None,
    }))


@router.get("/dash/api/runs/{run_id}/tail")
def run_tail(run_id: int, session: SessionDep, loops: LoopsDep,
             after_step: Annotated[int, Query(ge=-1)] = -1,
             tags: TagsQuery = None) -> JSONResponse:
    """Steps after `after_step`, for a live page to append, with the latest plan, new
    events, the health cards and the loop's status."""
    run = services.get_run(session, run_id)
    spec = services.spec_of(run.process)
    chosen = chosen_tags(spec, tags)
    rows = reads.step_rows_between(session, run_id, after_step + 1, None, limit=MAX_TAIL_STEPS + 1)
    status = _loop_status(session, loops, run)
    body: dict[str, Any] = {
        "run_status": run.status, "loop_status": status,
        "live": run.status in (RunStatus.RUNNING, RunStatus.QUEUED),
        "health": [asdict(c) for c in health_cards(spec, _recent(session, run_id, spec),
                                                   status)],
        "reload": len(rows) > MAX_TAIL_STEPS, "traces": {}, "plan": {}, "events": {},
        "spans": [], "first_s": None, "last_step": after_step, "last_s": None,
        "now": None,
    }
    if rows and not body["reload"]:
        series = _series_of_steps(session, run_id, chosen, rows)
        plotted = figures.plotted_tags(spec, series, chosen)
        new_events = reads.events_after(session, run_id, after_step)
        plan_at = _plan_at(session, run_id, (rows[0].step, rows[-1].step), rows[-1].step,
                           latest=True)
        body.update({
            "traces": figures.series_traces(spec, series, only=chosen),
            "plan": figures.plan_traces(spec, plan_at),
            "events": figures.event_traces(plotted, series, new_events) if plotted else {},
            "spans": [s.to_dict() for s in figures.status_spans(
                [r.time_s for r in rows], [r.status for r in rows], spec.sample_period_s)],
            "first_s": rows[0].time_s, "last_step": rows[-1].step, "last_s": rows[-1].time_s,
            "now": None if plan_at is None else {"time_s": plan_at["time_s"],
                                                 "step": plan_at["step"]},
        })
    return JSONResponse(json_safe(body))


def _series(session: Session, run_id: int, start_s: float | None, end_s: float | None,
            max_points: int, tags: Sequence[str] | None = None) -> dict[str, Any]:
    """The window at `max_points` per tag: each bucket's minimum and maximum (read from
    the stored rollups), so a month of 1 s data stays a few thousand points and no spike
    is lost between two plotted points."""
    return services.get_series(session, run_id, tags=tags, max_points=max_points,
                               start_s=start_s, end_s=end_s, method="minmax")


def _series_of_steps(session: Session, run_id: int, tags: Sequence[str],
                     rows: Sequence[Any]) -> dict[str, Any]:
    """Every value of the given (consecutive, few) steps, shaped like `get_series`."""
    column = {r.step: i for i, r in enumerate(rows)}
    series: dict[str, dict[str, list[float | None]]] = {}
    channels = ["sensor", "disturbance", "actuator", "setpoint"]
    values = reads.values_of_tags(session, run_id, channels, tags, rows[0].step, rows[-1].step)
    for channel, tag, step, value in values:
        if step in column:
            series.setdefault(channel, {}).setdefault(tag, [None] * len(rows))[
                column[step]] = value
    return {"run_id": run_id, "steps": [r.step for r in rows],
            "time_s": [r.time_s for r in rows], "stride": 1, "series": series}


def _x_range(series: dict[str, Any], window: Window,
             plan_at: dict[str, Any] | None) -> tuple[float, float] | None:
    """The window, widened on the right to show the plan ahead of "now"."""
    times = series.get("time_s") or []
    if not times:
        return None
    start = window.start_s if window.start_s is not None else times[0]
    end = window.end_s if window.end_s is not None else times[-1]
    plan = (plan_at or {}).get("plan") or {}
    horizon = list(plan.get("time_s") or [])
    if plan_at is not None and horizon and window.end_s is None:
        end = max(end, plan_at["time_s"] + horizon[-1])
    return (start, end) if end > start else None


def _plan_at(session: Session, run_id: int, step_range: tuple[int, int] | None,
             step: int | None, latest: bool = False) -> dict[str, Any] | None:
    """The chosen step (default: the latest for a live run, else the middle one) with its
    stored plan."""
    if step_range is None:
        return None
    low, high = step_range
    default = high if latest else (low + high) // 2
    chosen = default if step is None else min(max(step, low), high)
    try:
        row = services.get_step(session, run_id, chosen)
    except NotFound:  # a gap in the steps: draw without a plan
        return None
    return {"step": row.step, "time_s": row.time_s, "plan": row.plan}


def _spans(session: Session, run_id: int, spec: ProcessSpec,
           series: dict[str, Any]) -> list[figures.Span] | None:
    """Fallback/stale bands over the steps a series covers; None when they are too many
    to read (the page keeps what it has; zooming in brings them back)."""
    steps = series.get("steps") or []
    if not steps:
        return []
    if steps[-1] - steps[0] + 1 > MAX_SPAN_STEPS:
        return None
    rows = reads.step_rows_between(session, run_id, steps[0], steps[-1])
    return figures.status_spans([r.time_s for r in rows], [r.status for r in rows],
                                spec.sample_period_s)


# Reads by step number that `api.services.runs` has no function for (its reads filter on
# time or on a channel alone, which scan a long run): the first and last steps, a range
# of steps, and the values of given tags. Each is an index range scan.


# ---------------------------------------------------------------- comparison


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep, settings: SettingsDep,
                 runs: Annotated[list[int] | None, Query()] = None,
                 tags: TagsQuery = None) -> Response:
    if not runs:  # nothing chosen yet: offer the runs to choose from
        recent = services.list_runs(session, limit=settings.max_list_limit)
        counts = services.step_counts(session, [r.id for r in recent])
        return templates.TemplateResponse(request, "compare.html", {
            "choices": [_run_row(r, counts.get(r.id, 0)) for r in recent]})
    try:
        compared = _compared_runs(session, runs or [])
        spec = services.spec_of(compared[0].process)
        chosen = chosen_tags(spec, tags)
    except ServiceError as exc:
        return _error_page(request, exc)
    series = [_compared(session, run, settings.dashboard_points, chosen) for run in compared]
    counts = services.step_counts(session, [r.id for r in compared])
    table = figures.summary_table({r.id: r.metrics for r in compared})
    context = {
        "process": compared[0].process.name,
        "runs": [{**_run_row(r, counts.get(r.id, 0)), "color": figures.RUN_COLORS[i],
                  "label": s.label, "cells": table["rows"][r.id]}
                 for i, (r, s) in enumerate(zip(compared, series, strict=True))],
        "columns": table["columns"],
        "figure_json": figures.to_json(figures.compare_figure(spec, series, chosen)),
        "page": {"runIds": [r.id for r in compared], "maxPoints": settings.dashboard_points,
                 "windowUrl": "/dash/api/compare/window", "tags": chosen},
    }
    return templates.TemplateResponse(request, "compare.html", context)


@router.get("/dash/api/compare/window")
def compare_window(session: SessionDep, settings: SettingsDep,
                   runs: Annotated[list[int] | None, Query()] = None,
                   start_s: FiniteFloat | None = None, end_s: FiniteFloat | None = None,
                   max_points: Annotated[int | None, Query(ge=10)] = None,
                   tags: TagsQuery = None) -> JSONResponse:
    compared = _compared_runs(session, runs or [])
    spec = services.spec_of(compared[0].process)
    chosen = chosen_tags(spec, tags)
    points = min(max_points or settings.dashboard_points, settings.max_series_points)
    traces: figures.TraceData = {}
    for run in compared:
        series = _series(session, run.id, start_s, end_s, points, chosen)
        traces.update(figures.series_traces(spec, series, f"run{run.id}/", chosen))
    return JSONResponse(json_safe({"traces": traces}))


def _compared_runs(session: Session, run_ids: Sequence[int]) -> list[Run]:
    """Two or more distinct runs of one process, or a 4xx saying what is wrong."""
    ids = list(dict.fromkeys(run_ids))
    if len(ids) < 2:
        raise Invalid("compare needs at least two different runs: /compare?runs=1&runs=2")
    if len(ids) > MAX_COMPARED_RUNS:
        raise Invalid(f"compare at most {MAX_COMPARED_RUNS} runs at once ({len(ids)} given)")
    compared = [services.get_run(session, run_id) for run_id in ids]
    processes = {r.process.name for r in compared}
    if len(processes) > 1:
        which = ", ".join(f"run {r.id}: {r.process.name}" for r in compared)
        raise Invalid(f"runs of different processes cannot be overlaid ({which})")
    return compared


def _compared(session: Session, run: Run, max_points: int,
              tags: Sequence[str]) -> figures.ComparedRun:
    label = f"run {run.id} · {run.kind} · {run.controller}"
    return figures.ComparedRun(run.id, label,
                               _series(session, run.id, None, None, max_points, tags))


# ---------------------------------------------------------------- shared


def _run_row(run: Run, n_steps: int | None) -> dict[str, Any]:
    return {
        "id": run.id, "kind": run.kind, "status": run.status, "process": run.process.name,
        "controller": run.controller, "model_id": run.model_id, "n_steps": n_steps,
        "started": run.started_at.strftime("%Y-%m-%d %H:%M:%S"),
        "metrics": _key_metrics(run.metrics),
    }


def _key_metrics(metrics: dict[str, Any], count: int = 4) -> str:
    shown = [(k, v) for k, v in metrics.items()
             if isinstance(v, int | float) and not isinstance(v, bool)][:count]
    return ", ".join(f"{metric_label(k)} {v:.4g}" for k, v in shown)
