"""The models list (`/models`) and the page of a training run (`/runs/{id}` of kind train).

The list: every registered twin, newest version first per process and name, with what a
plant engineer chooses by: when it was trained, how long and whether the time budget cut
it short, its held-out errors, its size, the loops it drives now, and its training run.

A training run's page: its loss curves per epoch, what it was trained on (the data's
provenance: source, sha256, rows, time span), how training ended, and the model it made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import SessionDep
from api.errors import NotFound
from api.orm import Run, RunKind, TwinModel
from api.services import models as models_service
from api.services import processes as processes_service
from dashboards.humanise import human_bytes, human_seconds, metric_rows, value_text
from dashboards.model_figures import training_figure
from twin.errors import InvalidInput

templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
router = APIRouter(include_in_schema=False)
_CONFIG = {"displaylogo": False, "responsive": True}


def _training_runs(session: Session, model_ids: list[int]) -> dict[int, int]:
    """model id -> id of the training run that made it (the first, if several)."""
    if not model_ids:
        return {}
    rows = session.execute(
        select(Run.model_id, Run.id)
        .where(Run.kind == RunKind.TRAIN, Run.model_id.in_(model_ids))
        .order_by(Run.id.desc())
    )
    return {model_id: run_id for model_id, run_id in rows}


def _training_text(metrics: dict[str, Any]) -> str:
    if "epochs" not in metrics:
        return "—"
    asked = metrics.get("epochs_asked")
    done = metrics.get("epochs_done", metrics["epochs"])
    text = f"{value_text(done)} of {asked} epochs" if asked else f"{metrics['epochs']} epochs"
    seconds = metrics.get("train_seconds")
    if isinstance(seconds, int | float):
        text += f" in {human_seconds(float(seconds))}"
    if metrics.get("stopped_by_budget"):
        text += " (cut by the time budget)"
    return text


def model_row(model: TwinModel, train_run: int | None, loops: list[int]) -> dict[str, Any]:
    metrics = model.metrics or {}
    return {
        "id": model.id,
        "process": model.process.name,
        "name": model.name,
        "version": model.version,
        "registered": model.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        "training": _training_text(metrics),
        "cut": bool(metrics.get("stopped_by_budget")),
        "prediction": value_text(metrics["holdout_prediction"])
        if "holdout_prediction" in metrics
        else "—",
        "size": human_bytes(model.size_bytes),
        "train_run": train_run,
        "loops": loops,
        "data": model.data_source or "—",
    }


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, session: SessionDep) -> HTMLResponse:
    models = models_service.list_models(session)
    ids = [m.id for m in models]
    runs, loops = _training_runs(session, ids), models_service.active_loops(session, ids)
    rows = [model_row(m, runs.get(m.id), loops.get(m.id, [])) for m in models]
    return templates.TemplateResponse(
        request, "models.html", {"models": rows, "nav_active": "models"}
    )


def _provenance(model: TwinModel | None, config: dict[str, Any]) -> dict[str, str]:
    data = config.get("data") or {}
    out: dict[str, str] = {}
    source = (model.data_source if model else None) or data.get("path")
    if source:
        out["source"] = str(source)
    sha = (model.dataset_sha256 if model else None) or data.get("sha256")
    if sha:
        out["sha256"] = str(sha)
    rows = (model.dataset_rows if model else None) or data.get("rows")
    if rows:
        out["rows"] = value_text(int(rows))
    start = model.data_start_s if model else None
    end = model.data_end_s if model else None
    if start is None and isinstance(data.get("time_s"), list) and len(data["time_s"]) == 2:
        start, end = data["time_s"]
    if start is not None and end is not None:
        out["time span"] = (
            f"{value_text(float(start))} s to {value_text(float(end))} s "
            f"({human_seconds(float(end) - float(start))})"
        )
    for key in ("process", "hours", "seed"):
        if key in data:
            out[key] = value_text(data[key])
    return out


def _sensor_scales(session: Session, model: TwinModel | None) -> tuple[int, dict[str, float]]:
    """The twin's width and each sensor's training std (readout curves are drawn in it)."""
    from twin.twin_model import Twin  # late: torch loads only when a training page is asked

    if model is None:
        return 0, {}
    try:
        twin = Twin.from_bytes(models_service.load_model_bytes(session, model.id))
    except InvalidInput:
        return 0, {}
    return twin.config.embed_dim, {
        t: float(twin.norm.std[twin.norm.index(t)]) for t in twin.layout.sensors
    }


def training_run_page(
    request: Request, session: Session, run: Run, run_row: dict[str, Any]
) -> HTMLResponse:
    """The page of a training run: curves, provenance, how it ended, its model."""
    model = None
    if run.model_id is not None:
        try:
            model = models_service.get_model(session, run.model_id)
        except NotFound:
            model = None
    metrics = dict(run.metrics or {})
    history = metrics.get("history") or (model.metrics.get("history") if model else None) or []
    embed_dim, scales = _sensor_scales(session, model)
    figure = training_figure(history, embed_dim, scales)
    spec_units = {t.name: t.unit for t in processes_service.spec_of(run.process).tags}
    context = {
        "run": run_row,
        "model": model_row(model, run.id, []) if model else None,
        "rows": metric_rows(metrics, units=spec_units),
        "training": _training_text(metrics),
        "budget_note": metrics.get("budget_note"),
        "provenance": _provenance(model, run.config or {}),
        "figure_html": figure
        if isinstance(figure, str)
        else figure.to_html(include_plotlyjs=False, full_html=False, config=_CONFIG),
        "figure_is_note": isinstance(figure, str),
        "train_config": (run.config or {}).get("train"),
        "nav_active": "runs",
    }
    return templates.TemplateResponse(request, "train_run.html", context)
