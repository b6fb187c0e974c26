"""The model registry: trained twins, versioned per process, with the provenance of
their training data and the loops each one drives. Viewer role.

Models are registered by training (`POST /api/jobs/train`, `twin train`); a loop's
model is switched through `PUT /api/loops/{id}/model`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.contract import API_ERRORS, ModelIdPath, StrictJSONRoute, error_responses
from api.deps import SessionDep, require
from api.orm import Role
from api.schemas import ModelOut
from api.services import models as models_service

router = APIRouter(
    prefix="/api/models",
    tags=["models"],
    dependencies=[require(Role.VIEWER)],
    route_class=StrictJSONRoute,
    responses=error_responses(*API_ERRORS),
)


@router.get("", response_model=list[ModelOut])
def list_models(
    session: SessionDep,
    process: Annotated[str | None, Query(description="one process only")] = None,
    dataset_sha256: Annotated[
        str | None,
        Query(pattern=r"^[0-9a-fA-F]{64}$", description="only models trained on this dataset"),
    ] = None,
) -> list[ModelOut]:
    """Versions per process and name, newest version first."""
    models = models_service.list_models(session, process, dataset_sha256=dataset_sha256)
    active = models_service.active_loops(session, [m.id for m in models])
    return [ModelOut.of(m, active.get(m.id)) for m in models]


@router.get("/{model_id}", response_model=ModelOut)
def get_model(model_id: ModelIdPath, session: SessionDep) -> ModelOut:
    model = models_service.get_model(session, model_id)
    return ModelOut.of(model, models_service.active_loops(session, [model.id]).get(model.id))
