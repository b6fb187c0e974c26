"""Health and processes (trained models: api.routes.models).

Health is public (load balancers and docker-compose's healthcheck carry no key; it
tells only the database kind and schema revision); everything else needs a key.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.contract import API_ERRORS, StrictJSONRoute, error_responses
from api.deps import EngineerDep, SessionDep, require
from api.migrate import revision_of
from api.orm import Role
from api.schemas import Health, ProcessOut
from api.services import processes as processes_service
from twin.spec import ProcessSpec

public_router = APIRouter(prefix="/api", route_class=StrictJSONRoute)
router = APIRouter(
    prefix="/api",
    dependencies=[require(Role.VIEWER)],
    route_class=StrictJSONRoute,
    responses=error_responses(*API_ERRORS),
)


@public_router.get("/health", response_model=Health, tags=["health"])
def health(session: SessionDep) -> Health:
    # Touches the database, so a health check fails when the database is unreachable.
    revision = revision_of(session.connection())
    return Health(database=session.get_bind().dialect.name, revision=revision)


@router.get("/processes", response_model=list[ProcessOut], tags=["processes"])
def list_processes(session: SessionDep) -> list[ProcessOut]:
    """Built-in processes (stored on first listing) and those defined by a tag file."""
    return [ProcessOut.of(p) for p in processes_service.list_processes(session, with_builtins=True)]


@router.post("/processes", response_model=ProcessOut, status_code=201, tags=["processes"])
def define_process(spec: ProcessSpec, session: SessionDep, actor: EngineerDep) -> ProcessOut:
    """Register a process of your own from its tag file (the YAML as JSON). Engineer role.

    Then queue a training job on its logged data (POST /api/jobs/train with a csv data
    source) and start control loops or replays with the model it produces.
    """
    return ProcessOut.of(processes_service.define_process(session, spec, actor=actor))


@router.get("/processes/{name}", response_model=ProcessOut, tags=["processes"])
def get_process(name: str, session: SessionDep) -> ProcessOut:
    return ProcessOut.of(processes_service.process_or_builtin(session, name, commit=True))
