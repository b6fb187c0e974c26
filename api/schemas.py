"""Pydantic models at the HTTP edge: what requests may carry and what responses contain.

Floats in requests are `FiniteFloat`: Python's json module accepts `NaN` and
`Infinity` literals, so without this a NaN would reach the controller.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.alarm_schemas import (  # noqa: F401 (re-exported: the alarm schemas live there)
    AlarmDetailOut,
    AlarmEventOut,
    AlarmOut,
    ShelveIn,
)
from api.contract import UtcDatetime
from api.job_schemas import (  # noqa: F401 (re-exported: the job schemas live there)
    JobOut,
    ReplayCreate,
    ReplayOut,
    TrainJobCreate,
)
from api.loop_schemas import (  # re-exported: the loop's schemas live there
    ActivationOut as ActivationOut,
)
from api.loop_schemas import (
    EventOut as EventOut,
)
from api.loop_schemas import (
    LoopCreate as LoopCreate,
)
from api.loop_schemas import (
    LoopOut as LoopOut,
)
from api.loop_schemas import (
    ModelRef as ModelRef,
)
from api.loop_schemas import (
    ModelSwitch as ModelSwitch,
)
from api.loop_schemas import (
    SetpointOut as SetpointOut,
)
from api.loop_schemas import (
    StepIn as StepIn,
)
from api.loop_schemas import (
    StepOut as StepOut,
)
from api.orm import (
    ApiKey,
    AuditEntry,
    Process,
    Role,
    Run,
    RunEvent,
    RunStep,
    TwinModel,
)
from api.services.models import DataProvenance
from twin.spec import ProcessSpec


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    database: str
    revision: str | None


class ProcessOut(BaseModel):
    id: int
    name: str
    created_at: UtcDatetime
    spec: ProcessSpec

    @classmethod
    def of(cls, process: Process) -> ProcessOut:
        return cls(
            id=process.id,
            name=process.name,
            created_at=process.created_at,
            spec=ProcessSpec.model_validate(process.spec),
        )


class ModelOut(BaseModel):
    """A trained twin, without its checkpoint bytes (fetch those through the CLI)."""

    id: int
    process: str
    name: str
    version: int
    sha256: str = Field(description="of the checkpoint; verified every time it is loaded")
    size_bytes: int
    config: dict[str, Any] = Field(description="training config and data source")
    metrics: dict[str, Any]
    created_at: UtcDatetime
    provenance: DataProvenance | None = Field(
        description="the training data: sha256, rows, first/last timestamp (s), source; "
        "null for a model registered without it"
    )
    active_loops: list[int] = Field(
        description="ids of the running control loops this model drives now"
    )

    @classmethod
    def of(cls, model: TwinModel, active_loops: list[int] | None = None) -> ModelOut:
        return cls(
            id=model.id,
            process=model.process.name,
            name=model.name,
            version=model.version,
            sha256=model.sha256,
            size_bytes=model.size_bytes,
            config=model.config,
            metrics=model.metrics,
            created_at=model.created_at,
            provenance=DataProvenance.of_model(model),
            active_loops=active_loops or [],
        )


class RunOut(BaseModel):
    id: int
    kind: str
    status: str
    process: str
    model_id: int | None
    controller: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    started_at: UtcDatetime
    finished_at: UtcDatetime | None
    n_steps: int

    @classmethod
    def of(cls, run: Run, n_steps: int) -> RunOut:
        return cls(
            id=run.id,
            kind=run.kind,
            status=run.status,
            process=run.process.name,
            model_id=run.model_id,
            controller=run.controller,
            config=run.config,
            metrics=run.metrics,
            started_at=run.started_at,
            finished_at=run.finished_at,
            n_steps=n_steps,
        )


class SeriesOut(BaseModel):
    run_id: int
    steps: list[int]
    time_s: list[float]
    stride: int = Field(
        description="steps between returned points: every stride-th step "
        "(method stride), or half a min/max bucket (method minmax); 1: all"
    )
    method: Literal["stride", "minmax"] = Field(
        default="stride",
        description="how points were picked when the range had more "
        "steps than max_points: minmax keeps each bucket's minimum and maximum (spikes)",
    )
    series: dict[str, dict[str, list[float | None]]] = Field(
        description="channel -> tag -> values aligned with time_s (null where not recorded)"
    )


class StepDetailOut(BaseModel):
    run_id: int
    step: int
    time_s: float
    status: str
    solve_ms: float
    plan: dict[str, Any] | None
    events: list[EventOut]
    values: dict[str, dict[str, float]] = Field(description="channel -> tag -> value")

    @classmethod
    def of(
        cls, row: RunStep, events: list[RunEvent], values: dict[str, dict[str, float]]
    ) -> StepDetailOut:
        return cls(
            run_id=row.run_id,
            step=row.step,
            time_s=row.time_s,
            status=row.status,
            solve_ms=row.solve_ms,
            plan=row.plan,
            values=values,
            events=[EventOut.of(e) for e in events],
        )


# ---------------------------------------------------------------- keys and audit


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=100,
        description="who or what uses the key: 'alice', 'historian-bridge'",
    )
    role: Role = Field(
        description="viewer < operator < engineer < admin; each includes the ones before it"
    )


class KeyOut(BaseModel):
    """A key as listed: never its token nor its hash; the prefix tells keys apart."""

    id: int
    name: str
    role: str
    prefix: str = Field(description="the public part of the token: twin_<prefix>_...")
    created_at: UtcDatetime
    created_by: str
    revoked_at: UtcDatetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(
            id=key.id,
            name=key.name,
            role=key.role,
            prefix=key.prefix,
            created_at=key.created_at,
            created_by=key.created_by,
            revoked_at=key.revoked_at,
        )


class KeyCreated(KeyOut):
    token: str = Field(
        description="the key to send as 'Authorization: Bearer <token>'; "
        "shown only in this response, never stored"
    )

    @classmethod
    def with_token(cls, key: ApiKey, token: str) -> KeyCreated:
        return cls(**KeyOut.of(key).model_dump(), token=token)


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: UtcDatetime
    key_id: int | None = Field(description="null: no key (the CLI, or auth not required)")
    actor: str
    action: str = Field(description="e.g. loop.start, job.enqueue, process.define, key.create")
    target: str = Field(description="what changed: run:12, process:my_reactor, key:3")
    detail: dict[str, Any]

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditOut:
        return cls.model_validate(entry)
