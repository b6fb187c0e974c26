"""One run's page (a live loop or a stored episode): trends with limits, the plan ahead of
"now", a time-range picker, and the JSON a live page polls (`window`, `tail`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import FiniteFloat
from sqlalchemy.orm import Session

from api.deps import LoopsDep, SessionDep, SettingsDep
from api.errors import Invalid, NotFound, ServiceError
from api.orm import Run, RunKind, RunStatus
from api.services import processes as processes_service
from api.services import runs as runs_service
from api.services import trend_reads as reads
from api.services.jsonsafe import json_safe
from api.services.loops import LoopManager
from api.settings import Settings
from dashboards import figures, operator_panel
from dashboards.health import health_cards
from dashboards.health import recent as _recent
from dashboards.humanise import metric_rows, summary_of
from dashboards.models_page import training_run_page
from dashboards.page_common import (
    LIVE_REFRESH_S,
    RefreshQuery,
    TagsQuery,
    chosen_tags,
    error_page,
    refresh_choices,
    run_row,
    templates,
    window_series,
)
from twin.spec import ProcessSpec

# Relative ranges of the picker (Grafana's habit), in seconds of the run's own time.
RANGES_S: dict[str, float | None] = {"15m": 900.0, "1h": 3_600.0, "1d": 86_400.0, "all": None}
RANGE_LABELS = {"15m": "Last 15 min", "1h": "Last 1 h", "1d": "Last 1 day", "all": "All"}
# A tail request that finds more new steps than this answers "reload the window" instead.
MAX_TAIL_STEPS = 2_000
# Status bands are drawn only for windows of at most this many steps (reading every
# step's status is what they cost); zooming in brings them back.
MAX_SPAN_STEPS = 50_000
UNIX_SECONDS_FLOOR = 946_684_800.0  # 2000-01-01: run times above it are Unix seconds

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Window:
    """The time range shown, in the run's own seconds; `key` is the picker's choice."""

    key: str
    start_s: float | None
    end_s: float | None


def resolve_window(
    key: str | None,
    start_s: float | None,
    end_s: float | None,
    first_s: float | None,
    last_s: float | None,
    default: str,
) -> Window:
    """A custom range wins over a relative one; relative ranges count back from the last
    step (the run's "now"). Bad input is a clear 422."""
    if start_s is not None or end_s is not None:
        if start_s is not None and end_s is not None and start_s >= end_s:
            raise Invalid(f"start_s ({start_s:g} s) must be before end_s ({end_s:g} s)")
        return Window("custom", start_s, end_s)
    key = key or default
    if key not in RANGES_S:
        raise Invalid(
            f"unknown range '{key}' (one of: {', '.join(RANGES_S)}, or give start_s and end_s)"
        )
    width = RANGES_S[key]
    if width is None or last_s is None:
        return Window(key, None, None)
    start = last_s - width
    return Window(key, None if first_s is not None and start <= first_s else start, None)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(
    request: Request,
    run_id: int,
    session: SessionDep,
    settings: SettingsDep,
    loops: LoopsDep,
    step: Annotated[int | None, Query()] = None,
    range_key: Annotated[str | None, Query(alias="range")] = None,
    start_s: FiniteFloat | None = None,
    end_s: FiniteFloat | None = None,
    refresh: RefreshQuery = None,
    tags: TagsQuery = None,
) -> Response:
    try:
        return _run_page(
            request,
            run_id,
            session,
            settings,
            loops,
            step,
            RunView(range_key, start_s, end_s, refresh, tags),
        )
    except ServiceError as exc:
        return error_page(request, exc)


@dataclass(frozen=True)
class RunView:
    """What the run page's URL asks for: a range, a refresh period, the tags to plot."""

    range_key: str | None
    start_s: float | None
    end_s: float | None
    refresh: int | None
    tags: list[str] | None


def _run_page(
    request: Request,
    run_id: int,
    session: Session,
    settings: Settings,
    loops: LoopManager,
    step: int | None,
    asked: RunView,
) -> HTMLResponse:
    run = runs_service.get_run(session, run_id)
    if run.kind == RunKind.TRAIN:  # curves and provenance, not control trends
        return training_run_page(request, session, run, run_row(run, None))
    spec = processes_service.spec_of(run.process)
    tags = chosen_tags(spec, asked.tags)
    live = run.status in (RunStatus.RUNNING, RunStatus.QUEUED)
    ends = reads.run_ends(session, run_id)
    window = resolve_window(
        asked.range_key,
        asked.start_s,
        asked.end_s,
        ends.first_s if ends else None,
        ends.last_s if ends else None,
        default="1h" if live else "all",
    )
    series = window_series(
        session, run_id, window.start_s, window.end_s, settings.dashboard_points, tags
    )
    step_range = (ends.first_step, ends.last_step) if ends else None
    plan_at = _plan_at(session, run_id, step_range, step, latest=live)
    events = reads.events_in_window(session, run_id, window.start_s, window.end_s)
    spans = _spans(session, run_id, spec, series)
    figure = figures.run_figure(
        spec,
        series,
        events,
        plan_at,
        spans=spans or (),
        live=live,
        x_range=_x_range(series, window, plan_at),
        only=tags,
    )
    status = _loop_status(session, loops, run)
    context = {
        "run": run_row(run, None),
        "config": run.config,
        "live": live,
        "metrics": metric_rows(
            run.metrics or {}, summary_of(run.process.name), {t.name: t.unit for t in spec.tags}
        ),
        "loop_status": status,
        "operator": operator_panel.panel(request, run, spec),
        "health": health_cards(spec, _recent(session, run_id, spec), status),
        "step_range": step_range,
        "step": plan_at["step"] if plan_at else None,
        "figure_json": figures.to_json(figure),
        "events": events[-50:][::-1],
        "window": window,
        "ranges": RANGE_LABELS,
        **refresh_choices(
            0 if not live else LIVE_REFRESH_S if asked.refresh is None else asked.refresh
        ),
        "all_tags": [t.name for t in spec.tags],
        "tags": tags,
        "page": {
            "runId": run_id,
            "live": live,
            "sampleS": spec.sample_period_s,
            "clockOriginMs": clock_origin_ms(run, ends.first_s if ends else None),
            "range": asdict(window),
            "firstS": ends.first_s if ends else None,
            "lastS": ends.last_s if ends else None,
            "lastStep": step_range[1] if step_range else None,
            "stride": series.get("stride", 1),
            "points": len(series.get("time_s", [])),
            "maxPoints": settings.dashboard_points,
            "tags": tags,
            "spans": [s.to_dict() for s in spans or ()],
            "spanColors": figures.SPAN_COLORS,
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
def run_window(
    run_id: int,
    session: SessionDep,
    settings: SettingsDep,
    start_s: FiniteFloat | None = None,
    end_s: FiniteFloat | None = None,
    max_points: Annotated[int | None, Query(ge=10)] = None,
    tags: TagsQuery = None,
) -> JSONResponse:
    """Every trace of the run page for [start_s, end_s], downsampled to `max_points`."""
    run = runs_service.get_run(session, run_id)
    spec = processes_service.spec_of(run.process)
    chosen = chosen_tags(spec, tags)
    if start_s is not None and end_s is not None and start_s >= end_s:
        raise Invalid(f"start_s ({start_s:g} s) must be before end_s ({end_s:g} s)")
    points = min(max_points or settings.dashboard_points, settings.max_series_points)
    series = window_series(session, run_id, start_s, end_s, points, chosen)
    spans = _spans(session, run_id, spec, series)
    ends = reads.run_ends(session, run_id)
    return JSONResponse(
        json_safe(
            {
                "traces": figures.series_traces(spec, series, only=chosen),
                "stride": series.get("stride", 1),
                "points": len(series.get("time_s", [])),
                "spans": None if spans is None else [s.to_dict() for s in spans],
                # Where a live page's tail goes on from after a reload.
                "last_step": ends.last_step if ends else -1,
                "last_s": ends.last_s if ends else None,
            }
        )
    )


@router.get("/dash/api/runs/{run_id}/tail")
def run_tail(
    run_id: int,
    session: SessionDep,
    loops: LoopsDep,
    after_step: Annotated[int, Query(ge=-1)] = -1,
    tags: TagsQuery = None,
) -> JSONResponse:
    """Steps after `after_step`, for a live page to append, with the latest plan, new
    events, the health cards and the loop's status."""
    run = runs_service.get_run(session, run_id)
    spec = processes_service.spec_of(run.process)
    chosen = chosen_tags(spec, tags)
    rows = reads.step_rows_between(session, run_id, after_step + 1, None, limit=MAX_TAIL_STEPS + 1)
    status = _loop_status(session, loops, run)
    body: dict[str, Any] = {
        "run_status": run.status,
        "loop_status": status,
        "live": run.status in (RunStatus.RUNNING, RunStatus.QUEUED),
        "health": [asdict(c) for c in health_cards(spec, _recent(session, run_id, spec), status)],
        "reload": len(rows) > MAX_TAIL_STEPS,
        "traces": {},
        "plan": {},
        "events": {},
        "spans": [],
        "first_s": None,
        "last_step": after_step,
        "last_s": None,
        "now": None,
    }
    if rows and not body["reload"]:
        series = _series_of_steps(session, run_id, chosen, rows)
        plotted = figures.plotted_tags(spec, series, chosen)
        new_events = reads.events_after(session, run_id, after_step)
        plan_at = _plan_at(
            session, run_id, (rows[0].step, rows[-1].step), rows[-1].step, latest=True
        )
        body.update(
            {
                "traces": figures.series_traces(spec, series, only=chosen),
                "plan": figures.plan_traces(spec, plan_at),
                "events": figures.event_traces(plotted, series, new_events) if plotted else {},
                "spans": [
                    s.to_dict()
                    for s in figures.status_spans(
                        [r.time_s for r in rows], [r.status for r in rows], spec.sample_period_s
                    )
                ],
                "first_s": rows[0].time_s,
                "last_step": rows[-1].step,
                "last_s": rows[-1].time_s,
                "now": None
                if plan_at is None
                else {"time_s": plan_at["time_s"], "step": plan_at["step"]},
            }
        )
    return JSONResponse(json_safe(body))


def _series_of_steps(
    session: Session, run_id: int, tags: Sequence[str], rows: Sequence[Any]
) -> dict[str, Any]:
    """Every value of the given (consecutive, few) steps, shaped like `get_series`."""
    column = {r.step: i for i, r in enumerate(rows)}
    series: dict[str, dict[str, list[float | None]]] = {}
    channels = ["sensor", "disturbance", "actuator", "setpoint"]
    values = reads.values_of_tags(session, run_id, channels, tags, rows[0].step, rows[-1].step)
    for channel, tag, step, value in values:
        if step in column:
            series.setdefault(channel, {}).setdefault(tag, [None] * len(rows))[column[step]] = value
    return {
        "run_id": run_id,
        "steps": [r.step for r in rows],
        "time_s": [r.time_s for r in rows],
        "stride": 1,
        "series": series,
    }


def _x_range(
    series: dict[str, Any], window: Window, plan_at: dict[str, Any] | None
) -> tuple[float, float] | None:
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


def _plan_at(
    session: Session,
    run_id: int,
    step_range: tuple[int, int] | None,
    step: int | None,
    latest: bool = False,
) -> dict[str, Any] | None:
    """The chosen step (default: the latest for a live run, else the middle one) with its
    stored plan."""
    if step_range is None:
        return None
    low, high = step_range
    default = high if latest else (low + high) // 2
    chosen = default if step is None else min(max(step, low), high)
    try:
        row = runs_service.get_step(session, run_id, chosen)
    except NotFound:  # a gap in the steps: draw without a plan
        return None
    return {"step": row.step, "time_s": row.time_s, "plan": row.plan}


def _spans(
    session: Session, run_id: int, spec: ProcessSpec, series: dict[str, Any]
) -> list[figures.Span] | None:
    """Fallback/stale bands over the steps a series covers; None when they are too many
    to read (the page keeps what it has; zooming in brings them back)."""
    steps = series.get("steps") or []
    if not steps:
        return []
    if steps[-1] - steps[0] + 1 > MAX_SPAN_STEPS:
        return None
    rows = reads.step_rows_between(session, run_id, steps[0], steps[-1])
    return figures.status_spans(
        [r.time_s for r in rows], [r.status for r in rows], spec.sample_period_s
    )
