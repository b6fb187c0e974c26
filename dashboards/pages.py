"""HTML pages. Data comes from `api.services` (the same queries as the JSON API);
figures from `dashboards.figures`. plotly.js is served from the installed plotly
package: plants are often offline, so no page loads anything from a CDN."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import plotly
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from api import services
from api.deps import SessionDep, SettingsDep
from api.errors import NotFound
from api.orm import Run, RunStatus
from api.schemas import EventOut
from dashboards import figures

PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
PLOTLY_JS_URL = "/static/plotly.min.js"
# Beyond this, events would bury the trends; the JSON API still has them all.
MAX_EVENTS_DRAWN = 2_000
LIVE_REFRESH_S = 5

templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
router = APIRouter(include_in_schema=False)


@router.get(PLOTLY_JS_URL)
def plotly_js() -> FileResponse:
    return FileResponse(PLOTLY_JS, media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    runs = services.list_runs(session, limit=settings.max_list_limit)
    counts = services.step_counts(session, [r.id for r in runs])
    context = {
        "runs": [_run_row(r, counts.get(r.id, 0)) for r in runs],
        "processes": services.list_processes(session),
        "models": services.list_models(session),
    }
    return templates.TemplateResponse(request, "index.html", context)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: int, session: SessionDep, settings: SettingsDep,
             step: Annotated[int | None, Query()] = None) -> HTMLResponse:
    run = services.get_run(session, run_id)
    spec = services.spec_of(run.process)
    series = services.get_series(session, run_id, max_points=settings.dashboard_points)
    events = [EventOut.of(e).model_dump()
              for e in services.list_events(session, run_id, limit=MAX_EVENTS_DRAWN)]
    step_range = services.step_range(session, run_id)
    plan_at = _plan_at(session, run_id, step_range, step)
    figure = figures.run_figure(spec, series, events, plan_at)
    context = {
        "run": _run_row(run, services.step_counts(session, [run_id]).get(run_id, 0)),
        "config": run.config,
        "metrics": run.metrics,
        "step_range": step_range,
        "step": plan_at["step"] if plan_at else None,
        "plot": figure.to_html(include_plotlyjs=False, full_html=False,
                               config={"displaylogo": False, "responsive": True}),
        "events": events[-50:],
        "refresh_s": LIVE_REFRESH_S if run.status == RunStatus.RUNNING else None,
    }
    return templates.TemplateResponse(request, "run.html", context)


def _plan_at(session: Session, run_id: int, step_range: tuple[int, int] | None,
             step: int | None) -> dict[str, Any] | None:
    """The chosen step (default: the middle one) with its stored plan."""
    if step_range is None:
        return None
    low, high = step_range
    chosen = (low + high) // 2 if step is None else min(max(step, low), high)
    try:
        row = services.get_step(session, run_id, chosen)
    except NotFound:  # a gap in the steps: draw without a plan
        return None
    return {"step": row.step, "time_s": row.time_s, "plan": row.plan}


def _run_row(run: Run, n_steps: int) -> dict[str, Any]:
    return {
        "id": run.id, "kind": run.kind, "status": run.status, "process": run.process.name,
        "controller": run.controller, "model_id": run.model_id, "n_steps": n_steps,
        "started": run.started_at.strftime("%Y-%m-%d %H:%M:%S"),
        "metrics": _key_metrics(run.metrics),
    }


def _key_metrics(metrics: dict[str, Any], count: int = 4) -> str:
    shown = [(k, v) for k, v in metrics.items() if isinstance(v, int | float)][:count]
    return ", ".join(f"{k}={v:.4g}" for k, v in shown)
