"""What the dashboard pages share: templates, static files, the refresh selector, the
error page, tag choice, the run row of lists and the downsampled window of a run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import plotly
from fastapi import Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from api.errors import Invalid, ServiceError
from api.orm import Run
from api.services import runs as runs_service
from dashboards import figures
from dashboards.humanise import human_bytes, metric_label
from twin.spec import ProcessSpec

PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
PLOTLY_JS_URL = "/static/plotly.min.js"
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"dash.js": "text/javascript", "dash.css": "text/css"}
LIVE_REFRESH_S = 5
REFRESH_CHOICES_S = (0, 5, 10, 30, 60)
# `?refresh=N` (seconds, 0: off) picks another period, as Grafana's `&refresh=` does.
RefreshQuery = Annotated[int | None, Query(ge=0, le=3_600, description="seconds; 0: off")]
TagsQuery = Annotated[
    list[str] | None,
    Query(
        description="tags to plot (repeat the "
        "parameter); default: all of a "
        "small process, the watched "
        "ones of a large one"
    ),
]

templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
templates.env.filters["bytes"] = human_bytes


def refresh_choices(seconds: int) -> dict[str, Any]:
    """The auto-refresh selector: its choices (with `seconds` among them) and its value."""
    return {"refresh_s": seconds, "refresh_choices": sorted(set(REFRESH_CHOICES_S) | {seconds})}


def error_page(request: Request, exc: ServiceError) -> HTMLResponse:
    """A page's 4xx as a page a person can read (the JSON API keeps its JSON errors)."""
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": exc.status_code, "message": str(exc)},
        status_code=exc.status_code,
    )


def chosen_tags(spec: ProcessSpec, tags: Sequence[str] | None) -> list[str]:
    """The tags a page plots: those asked for (each must exist), else the focus ones."""
    if not tags:
        return figures.focus_tags(spec)
    known = [t.name for t in spec.tags]
    unknown = sorted(set(tags) - set(known))
    if unknown:
        raise Invalid(
            f"unknown tag(s) {', '.join(unknown)} for process '{spec.name}' "
            f"(known: {', '.join(known)})"
        )
    return [name for name in known if name in set(tags)]


def run_row(run: Run, n_steps: int | None) -> dict[str, Any]:
    return {
        "id": run.id,
        "kind": run.kind,
        "status": run.status,
        "process": run.process.name,
        "controller": run.controller,
        "model_id": run.model_id,
        "n_steps": n_steps,
        "started": run.started_at.strftime("%Y-%m-%d %H:%M:%S"),
        "metrics": _key_metrics(run.metrics),
    }


def _key_metrics(metrics: dict[str, Any], count: int = 4) -> str:
    shown = [
        (k, v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    ][:count]
    return ", ".join(f"{metric_label(k)} {v:.4g}" for k, v in shown)


def window_series(
    session: Session,
    run_id: int,
    start_s: float | None,
    end_s: float | None,
    max_points: int,
    tags: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The window at `max_points` per tag: each bucket's minimum and maximum (read from
    the stored rollups), so a month of 1 s data stays a few thousand points and no spike
    is lost between two plotted points."""
    return runs_service.get_series(
        session,
        run_id,
        tags=tags,
        max_points=max_points,
        start_s=start_s,
        end_s=end_s,
        method="minmax",
    )
