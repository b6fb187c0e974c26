"""Training jobs: queued here, run by `twin worker` (never inside a request).

Reading needs the viewer role; queueing and cancelling the engineer role.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.contract import API_ERRORS, RunIdPath, StrictJSONRoute, error_responses
from api.deps import EngineerDep, SessionDep, SettingsDep, require
from api.job_schemas import JobOut, TrainJobCreate
from api.orm import Role, RunStatus
from api.services import jobs

router = APIRouter(
    prefix="/api/jobs",
    tags=["jobs"],
    dependencies=[require(Role.VIEWER)],
    route_class=StrictJSONRoute,
    responses=error_responses(*API_ERRORS),
)


@router.post("/train", response_model=JobOut, status_code=201)
def enqueue_training(body: TrainJobCreate, session: SessionDep, actor: EngineerDep) -> JobOut:
    """Queue a training job; poll GET /api/jobs/{id} for its progress."""
    config = body.model_dump(exclude={"process"})
    return JobOut.of(jobs.enqueue_training(session, body.process, config, actor=actor))


@router.get("", response_model=list[JobOut])
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[JobOut]:
    runs = jobs.list_jobs(
        session, status=status, limit=min(limit, settings.max_list_limit), offset=offset
    )
    return [JobOut.of(r) for r in runs]


@router.get("/{run_id}", response_model=JobOut)
def get_job(run_id: RunIdPath, session: SessionDep) -> JobOut:
    return JobOut.of(jobs.get_job(session, run_id))


@router.post("/{run_id}/cancel", response_model=JobOut)
def cancel_job(run_id: RunIdPath, session: SessionDep, actor: EngineerDep) -> JobOut:
    """Queued: stopped at once. Running: stopped by its worker after the current epoch."""
    return JobOut.of(jobs.cancel_job(session, run_id, actor=actor))
