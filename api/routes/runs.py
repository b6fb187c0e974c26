"""Stored runs and their time series: read-only, viewer role (exports included)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import FiniteFloat

from api.contract import API_ERRORS, RunIdPath, StepPath, StrictJSONRoute, error_responses
from api.deps import SessionDep, SettingsDep, require
from api.orm import Channel, Role, RunKind, RunStatus
from api.schemas import RunOut, SeriesOut, StepDetailOut
from api.services import replays
from api.services import runs as runs_service

router = APIRouter(
    prefix="/api/runs",
    tags=["runs"],
    dependencies=[require(Role.VIEWER)],
    route_class=StrictJSONRoute,
    responses=error_responses(*API_ERRORS),
)


@router.get("", response_model=list[RunOut])
def list_runs(
    session: SessionDep,
    settings: SettingsDep,
    kind: RunKind | None = None,
    process: str | None = None,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[RunOut]:
    runs = runs_service.list_runs(
        session,
        kind=kind,
        process=process,
        status=status,
        limit=min(limit, settings.max_list_limit),
        offset=offset,
    )
    counts = runs_service.step_counts(session, [r.id for r in runs])
    return [RunOut.of(r, counts.get(r.id, 0)) for r in runs]


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: RunIdPath, session: SessionDep) -> RunOut:
    run = runs_service.get_run(session, run_id)
    return RunOut.of(run, runs_service.step_counts(session, [run_id]).get(run_id, 0))


@router.get("/{run_id}/series", response_model=SeriesOut)
def get_series(
    run_id: RunIdPath,
    session: SessionDep,
    settings: SettingsDep,
    channels: Annotated[list[Channel] | None, Query()] = None,
    tags: Annotated[list[str] | None, Query()] = None,
    max_points: Annotated[int | None, Query(ge=1)] = None,
    start_s: Annotated[
        FiniteFloat | None, Query(description="first time (s, the run's time_s) to include")
    ] = None,
    end_s: Annotated[
        FiniteFloat | None, Query(description="last time (s) to include; not before start_s")
    ] = None,
    method: Annotated[
        Literal["minmax", "stride"],
        Query(
            description="minmax: each bucket's minimum and maximum (spikes survive); "
            "stride: every n-th step"
        ),
    ] = "minmax",
) -> SeriesOut:
    """Channels and tags repeat (`?channels=sensor&channels=actuator&tags=T`).

    At most `max_points` points per tag (capped by the server's limit) over the steps
    whose time is in [start_s, end_s]; a range with more steps is downsampled in the
    database by `method`. A range that ends before it starts, or a time that is not a
    finite number, is refused (422); a range without steps gives empty lists."""
    limit = min(max_points or settings.max_series_points, settings.max_series_points)
    data = runs_service.get_series(
        session,
        run_id,
        channels=channels,
        tags=tags,
        max_points=limit,
        start_s=start_s,
        end_s=end_s,
        method=method,
    )
    return SeriesOut(**data)


@router.get("/{run_id}/steps/{step}", response_model=StepDetailOut)
def get_step(run_id: RunIdPath, step: StepPath, session: SessionDep) -> StepDetailOut:
    row = runs_service.get_step(session, run_id, step)
    return StepDetailOut.of(
        row,
        runs_service.list_events(session, run_id, step),
        runs_service.step_values(session, run_id, step),
    )


@router.get(
    "/{run_id}/export",
    response_class=Response,
    responses={
        200: {
            "description": "the run's series in its process's log shape",
            "content": {media.split(";")[0]: {} for media in replays.EXPORT_MEDIA_TYPES.values()},
        }
    },
)
def export_run(
    run_id: RunIdPath,
    session: SessionDep,
    fmt: Annotated[Literal["csv", "parquet"], Query(alias="format")] = "csv",
    start_s: FiniteFloat | None = None,
    end_s: FiniteFloat | None = None,
) -> Response:
    """The run as a log file: the timestamp column and every tag (as `twin.logs.read_log`
    reads it), then `<tag>.setpoint`, `<tag>.prediction` and `status` columns. Times
    are the run's own `time_s`; [start_s, end_s] keeps part of it. Large ranges are
    refused (413): narrow them."""
    export = replays.export_run(session, run_id, fmt, start_s, end_s)
    return Response(
        export.content,
        media_type=export.media_type,
        headers={"Content-Disposition": f'attachment; filename="{export.filename}"'},
    )
