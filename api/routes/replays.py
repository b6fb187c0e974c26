"""Scenario replays: queued here, run by `twin worker` (shadow mode plans at every sample,
which takes minutes: never inside a request).

Reading needs the viewer role; queueing and cancelling the engineer role. A replay's id
is the id of the run holding its result: compare it with its source through /api/runs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.contract import API_ERRORS, RunIdPath, StrictJSONRoute, error_responses
from api.deps import EngineerDep, SessionDep, SettingsDep, require
from api.job_schemas import ReplayCreate, ReplayOut
from api.orm import Role, RunStatus
from api.services import replays
from api.services import runs as runs_service

router = APIRouter(
    prefix="/api/replays",
    tags=["replays"],
    dependencies=[require(Role.VIEWER)],
    route_class=StrictJSONRoute,
    responses=error_responses(*API_ERRORS),
)


@router.post("", response_model=ReplayOut, status_code=201)
def enqueue_replay(body: ReplayCreate, session: SessionDep, actor: EngineerDep) -> ReplayOut:
    """Validate and queue a replay; poll GET /api/replays/{id} for its progress."""
    config = body.model_dump(exclude_unset=True)
    return ReplayOut.of(replays.enqueue_replay(session, config, actor=actor))


@router.get("", response_model=list[ReplayOut])
def list_replays(
    session: SessionDep,
    settings: SettingsDep,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[ReplayOut]:
    runs = replays.list_replays(
        session, status=status, limit=min(limit, settings.max_list_limit), offset=offset
    )
    counts = runs_service.step_counts(session, [r.id for r in runs])
    return [ReplayOut.of(r, counts.get(r.id, 0)) for r in runs]


@router.get("/{run_id}", response_model=ReplayOut)
def get_replay(run_id: RunIdPath, session: SessionDep) -> ReplayOut:
    run = replays.get_replay(session, run_id)
    return ReplayOut.of(run, runs_service.step_counts(session, [run_id]).get(run_id, 0))


@router.post("/{run_id}/cancel", response_model=ReplayOut)
def cancel_replay(run_id: RunIdPath, session: SessionDep, actor: EngineerDep) -> ReplayOut:
    """Queued: stopped at once. Running: stopped by its worker within about a second."""
    return ReplayOut.of(replays.cancel_replay(session, run_id, actor=actor))
