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
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from sqlalchemy.orm import Session

from api.deps import LoopsDep, SessionDep, SettingsDep
from api.errors import NotFound
from api.orm import AlarmState, RunStatus
from api.services import alarms as alarm_service
from api.services import models as models_service
from api.services import processes as processes_service
from api.services import runs as runs_service
from api.services.jsonsafe import json_safe
from api.services.loops import LoopManager, LoopView
from dashboards import compare_page, operator_panel, run_pages
from dashboards.health import health_cards
from dashboards.health import recent as _recent
from dashboards.page_common import (
    LIVE_REFRESH_S,
    PLOTLY_JS,
    PLOTLY_JS_URL,
    STATIC_DIR,
    STATIC_FILES,
    RefreshQuery,
    refresh_choices,
    run_row,
    templates,
)

# Re-exported: the run page's names tests and scripts reach through this module.
from dashboards.run_pages import RANGES_S, Window, clock_origin_ms, resolve_window  # noqa: F401
from twin.spec import ProcessSpec

OVERVIEW_STOPPED_LOOPS = 10
OVERVIEW_RUNNING_LOOPS = 1_000
OPEN_ALARM_STATES = (
    AlarmState.UNACKNOWLEDGED,
    AlarmState.ACKNOWLEDGED,
    AlarmState.RTN_UNACKNOWLEDGED,
)
MAX_ALARMS_READ = 1_000

router = APIRouter(include_in_schema=False)


@router.get(PLOTLY_JS_URL)
def plotly_js() -> FileResponse:
    return FileResponse(
        PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
    )


@router.get("/dash/static/{name}")
def static_file(name: str) -> FileResponse:
    if name not in STATIC_FILES:  # a fixed list: no path from the URL reaches the disk
        raise NotFound(f"no static file '{name}'")
    return FileResponse(
        STATIC_DIR / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"}
    )


# ---------------------------------------------------------------- overview


@router.get("/", response_class=HTMLResponse)
def index(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    loops: LoopsDep,
    refresh: RefreshQuery = None,
) -> HTMLResponse:
    runs = runs_service.list_runs(session, limit=settings.max_list_limit)
    counts = runs_service.step_counts(session, [r.id for r in runs])
    context = {
        "overview": overview_data(session, loops),
        "runs": [run_row(r, counts.get(r.id, 0)) for r in runs],
        "models": models_service.list_models(session),
        **refresh_choices(LIVE_REFRESH_S if refresh is None else refresh),
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
    for process in processes_service.list_processes(session):
        own = [r for r in rows if r["process"] == process.name]
        processes.append(
            {
                "name": process.name,
                "description": process.spec.get("description", ""),
                "sample_period_s": process.spec.get("sample_period_s"),
                "loops": own,
                "status": _worst_status(own),
            }
        )
    return {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "processes": processes,
        "open_alarms": sum(len(a) for a in open_alarms.values()),
    }


def _open_alarms(session: Session) -> dict[int, list[dict[str, Any]]]:
    """Open alarms (active or not yet acknowledged) of every loop, most urgent first."""
    by_run: dict[int, list[dict[str, Any]]] = {}
    for alarm in alarm_service.list_alarms(session, limit=MAX_ALARMS_READ):
        if alarm.state in OPEN_ALARM_STATES:
            by_run.setdefault(alarm.run_id, []).append(
                {
                    "id": alarm.id,
                    "priority": alarm.priority,
                    "state": alarm.state,
                    "kind": alarm.kind,
                    "message": alarm.message,
                }
            )
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    for found in by_run.values():
        found.sort(key=lambda a: order.get(a["priority"], 9))
    return by_run


def _loop_row(
    session: Session, view: LoopView, open_alarms: list[dict[str, Any]]
) -> dict[str, Any]:
    run = view.run
    spec = processes_service.spec_of(run.process)
    model = view.model
    recent = _recent(session, run.id, spec)
    return {
        "run_id": run.id,
        "process": run.process.name,
        "status": view.status,
        "run_status": run.status,
        "controller": run.controller,
        "age_s": view.age_s,
        "stale_after_s": view.stale_after_s,
        "last_step": view.last.step if view.last else None,
        "last_time_s": view.last.time_s if view.last else None,
        "model": None
        if model is None
        else {"id": model.id, "name": model.name, "version": model.version},
        "setpoints": _readings(spec, view.setpoints),
        "actuators": _readings(spec, view.actuators),
        "alarms": open_alarms,
        "health": [asdict(card) for card in health_cards(spec, recent, view.status)],
    }


def _readings(spec: ProcessSpec, values: dict[str, float]) -> list[dict[str, Any]]:
    units = {t.name: t.unit for t in spec.tags}
    return [
        {"tag": tag, "value": value, "unit": units.get(tag, "")}
        for tag, value in sorted(values.items())
    ]


def _worst_status(rows: Sequence[dict[str, Any]]) -> str:
    statuses = {r["status"] for r in rows if r["run_status"] == RunStatus.RUNNING}
    for status in ("stale", "fallback", "ok"):
        if status in statuses:
            return status
    return "idle"


# After this module's own routes, in the order they always had.
router.include_router(run_pages.router)
router.include_router(operator_panel.router)
router.include_router(compare_page.router)
