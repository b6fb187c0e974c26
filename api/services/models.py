"""Trained twins: checkpoints stored in the database with a sha256 that is checked on load."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.errors import ChecksumMismatch, Invalid, NotFound
from api.orm import Process, TwinModel
from api.services.jsonsafe import json_safe
from api.services.processes import process_or_builtin


def register_model(session: Session, process_name: str, name: str, checkpoint: bytes,
                   config: dict[str, Any], metrics: dict[str, Any], *,
                   commit: bool = True) -> TwinModel:
    """Store a checkpoint as the next version of (process, name); versions start at 1."""
    if not checkpoint:
        raise Invalid("checkpoint is empty")
    process = process_or_builtin(session, process_name)
    model = TwinModel(
        process_id=process.id,
        name=name,
        version=_next_version(session, process.id, name),
        checkpoint=checkpoint,
        sha256=hashlib.sha256(checkpoint).hexdigest(),
        size_bytes=len(checkpoint),
        config=json_safe(config),
        metrics=json_safe(metrics),
    )
    session.add(model)
    session.flush()
    if commit:
        session.commit()
    return model


def _next_version(session: Session, process_id: int, name: str) -> int:
    latest = session.scalar(
        select(func.max(TwinModel.version))
        .where(TwinModel.process_id == process_id, TwinModel.name == name))
    return (latest or 0) + 1


def get_model(session: Session, model_id: int) -> TwinModel:
    model = session.get(TwinModel, model_id)
    if model is None:
        raise NotFound(f"unknown model id {model_id}")
    return model


def list_models(session: Session, process: str | None = None) -> list[TwinModel]:
    query = select(TwinModel).join(TwinModel.process).order_by(TwinModel.id.desc())
    if process is not None:
        query = query.where(Process.name == process)
    return list(session.scalars(query))


def load_model_bytes(session: Session, model_id: int) -> bytes:
    """The checkpoint, verified: a corrupted blob must never reach torch.load."""
    model = get_model(session, model_id)
    data = model.checkpoint
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256 or len(data) != model.size_bytes:
        raise ChecksumMismatch(
            f"checkpoint of model {model_id} ('{model.name}' v{model.version}) is corrupted: "
            f"sha256 {digest} ({len(data)} bytes) != stored {model.sha256} "
            f"({model.size_bytes} bytes); register the model again")
    return data
