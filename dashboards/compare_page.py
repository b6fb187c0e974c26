"""The comparison page: runs of one process overlaid, with their summary metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import FiniteFloat
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep
from api.errors import Invalid, ServiceError
from api.orm import Run
from api.services import processes as processes_service
from api.services import runs as runs_service
from api.services.jsonsafe import json_safe
from dashboards import figures
from dashboards.page_common import (
    TagsQuery,
    chosen_tags,
    error_page,
    run_row,
    templates,
    window_series,
)

MAX_COMPARED_RUNS = len(figures.RUN_COLORS)

router = APIRouter(include_in_schema=False)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    runs: Annotated[list[int] | None, Query()] = None,
    tags: TagsQuery = None,
) -> Response:
    if not runs:  # nothing chosen yet: offer the runs to choose from
        recent = runs_service.list_runs(session, limit=settings.max_list_limit)
        counts = runs_service.step_counts(session, [r.id for r in recent])
        return templates.TemplateResponse(
            request, "compare.html", {"choices": [run_row(r, counts.get(r.id, 0)) for r in recent]}
        )
    try:
        compared = _compared_runs(session, runs or [])
        spec = processes_service.spec_of(compared[0].process)
        chosen = chosen_tags(spec, tags)
    except ServiceError as exc:
        return error_page(request, exc)
    series = [_compared(session, run, settings.dashboard_points, chosen) for run in compared]
    counts = runs_service.step_counts(session, [r.id for r in compared])
    table = figures.summary_table({r.id: r.metrics for r in compared})
    context = {
        "process": compared[0].process.name,
        "runs": [
            {
                **run_row(r, counts.get(r.id, 0)),
                "color": figures.RUN_COLORS[i],
                "label": s.label,
                "cells": table["rows"][r.id],
            }
            for i, (r, s) in enumerate(zip(compared, series, strict=True))
        ],
        "columns": table["columns"],
        "figure_json": figures.to_json(figures.compare_figure(spec, series, chosen)),
        "page": {
            "runIds": [r.id for r in compared],
            "maxPoints": settings.dashboard_points,
            "windowUrl": "/dash/api/compare/window",
            "tags": chosen,
        },
    }
    return templates.TemplateResponse(request, "compare.html", context)


@router.get("/dash/api/compare/window")
def compare_window(
    session: SessionDep,
    settings: SettingsDep,
    runs: Annotated[list[int] | None, Query()] = None,
    start_s: FiniteFloat | None = None,
    end_s: FiniteFloat | None = None,
    max_points: Annotated[int | None, Query(ge=10)] = None,
    tags: TagsQuery = None,
) -> JSONResponse:
    compared = _compared_runs(session, runs or [])
    spec = processes_service.spec_of(compared[0].process)
    chosen = chosen_tags(spec, tags)
    points = min(max_points or settings.dashboard_points, settings.max_series_points)
    traces: figures.TraceData = {}
    for run in compared:
        series = window_series(session, run.id, start_s, end_s, points, chosen)
        traces.update(figures.series_traces(spec, series, f"run{run.id}/", chosen))
    return JSONResponse(json_safe({"traces": traces}))


def _compared_runs(session: Session, run_ids: Sequence[int]) -> list[Run]:
    """Two or more distinct runs of one process, or a 4xx saying what is wrong."""
    ids = list(dict.fromkeys(run_ids))
    if len(ids) < 2:
        raise Invalid("compare needs at least two different runs: /compare?runs=1&runs=2")
    if len(ids) > MAX_COMPARED_RUNS:
        raise Invalid(f"compare at most {MAX_COMPARED_RUNS} runs at once ({len(ids)} given)")
    compared = [runs_service.get_run(session, run_id) for run_id in ids]
    processes = {r.process.name for r in compared}
    if len(processes) > 1:
        which = ", ".join(f"run {r.id}: {r.process.name}" for r in compared)
        raise Invalid(f"runs of different processes cannot be overlaid ({which})")
    return compared


def _compared(
    session: Session, run: Run, max_points: int, tags: Sequence[str]
) -> figures.ComparedRun:
    label = f"run {run.id} · {run.kind} · {run.controller}"
    return figures.ComparedRun(
        run.id, label, window_series(session, run.id, None, None, max_points, tags)
    )
