"""Pydantic models at the HTTP edge: what requests may carry and what responses contain.

Floats in requests are `FiniteFloat`: Python's json module accepts `NaN` and
`Infinity` literals, so without this a NaN would reach the controller.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from api.contract import UtcDatetime
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
    Alarm,
    AlarmEvent,
    ApiKey,
    AuditEntry,
    Process,
    Role,
    Run,
    RunEvent,
    RunStep,
    TwinModel,
)
from api.replay_schemas import ReplaySpec
from api.services.jobs import TrainJobSpec
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
        return cls(id=process.id, name=process.name, created_at=process.created_at,
                   spec=ProcessSpec.model_validate(process.spec))


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
                    "null for a model registered without it")
    active_loops: list[int] = Field(
        description="ids of the running control loops this model drives now")

    @classmethod
    def of(cls, model: TwinModel, active_loops: list[int] | None = None) -> ModelOut:
        return cls(id=model.id, process=model.process.name, name=model.name,
                   version=model.version, sha256=model.sha256, size_bytes=model.size_bytes,
                   config=model.config, metrics=model.metrics, created_at=model.created_at,
                   provenance=DataProvenance.of_model(model),
                   active_loops=active_loops or [])


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
        return cls(id=run.id, kind=run.kind, status=run.status, process=run.process.name,
                   model_id=run.model_id, controller=run.controller, config=run.config,
                   metrics=run.metrics, started_at=run.started_at,
                   finished_at=run.finished_at, n_steps=n_steps)


class SeriesOut(BaseModel):
    run_id: int
    steps: list[int]
    time_s: list[float]
    stride: int = Field(description="steps between returned points: every stride-th step "
                        "(method stride), or half a min/max bucket (method minmax); 1: all")
    method: Literal["stride", "minmax"] = Field(
        default="stride", description="how points were picked when the range had more "
        "steps than max_points: minmax keeps each bucket's minimum and maximum (spikes)")
    series: dict[str, dict[str, list[float | None]]] = Field(
        description="channel -> tag -> values aligned with time_s (null where not recorded)")


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
    def of(cls, row: RunStep, events: list[RunEvent],
           values: dict[str, dict[str, float]]) -> StepDetailOut:
        return cls(run_id=row.run_id, step=row.step, time_s=row.time_s, status=row.status,
                   solve_ms=row.solve_ms, plan=row.plan, values=values,
                   events=[EventOut.of(e) for e in events])


# ---------------------------------------------------------------- training jobs


class TrainJobCreate(TrainJobSpec):
    """A training job: which process, which data, how to train, what to call the model.

    The worker (`twin worker`) runs it; a csv `path` is read on the worker's machine."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "process": "cstr", "data": {"source": "simulator", "hours": 24, "seed": 1},
        "train": {"epochs": 30, "seed": 0}, "model_name": "jepa"}]})


class JobOut(BaseModel):
    id: int
    status: str = Field(description="queued, running, succeeded, failed or stopped")
    process: str
    model_name: str
    model_id: int | None = Field(description="the registered model, once succeeded")
    cancel_requested: bool
    progress: dict[str, Any] | None = Field(
        description="latest epoch: {epoch, of, train_loss, ...}; null before the first")
    error: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    started_at: UtcDatetime = Field(description="when it was queued, until a worker starts it")
    finished_at: UtcDatetime | None

    @classmethod
    def of(cls, run: Run) -> JobOut:
        metrics = run.metrics or {}
        return cls(id=run.id, status=run.status, process=run.process.name,
                   model_name=str(run.config.get("model_name", "")), model_id=run.model_id,
                   cancel_requested=bool(run.config.get("cancel_requested")),
                   progress=metrics.get("progress"), error=metrics.get("error"),
                   config=run.config, metrics=metrics, started_at=run.started_at,
                   finished_at=run.finished_at)


# ---------------------------------------------------------------- replays


class ReplayCreate(ReplaySpec):
    """A replay of a stored run (or a log file on the worker) through a twin or a simulator.

    The worker (`twin worker`) runs it; the replay's id is also the id of its result run."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"mode": "open_loop", "source": {"run_id": 12, "start_s": 0, "end_s": 1200},
         "model_id": 3, "horizon": 20},
        {"mode": "shadow", "source": {"run_id": 12}, "model_id": 3, "planner": "casadi"},
        {"mode": "counterfactual", "source": {"run_id": 12}, "controller": "baseline"},
    ]})


class ReplayOut(BaseModel):
    id: int = Field(description="the replay, and the run that holds its result")
    status: str = Field(description="queued, running, succeeded, failed or stopped")
    process: str
    mode: str
    source: dict[str, Any] = Field(description="{run_id | path, start_s, end_s}")
    model_id: int | None
    controller: str
    result_run_id: int | None = Field(
        description="the run with the replay's steps, once succeeded (the same id)")
    n_steps: int
    cancel_requested: bool
    progress: dict[str, Any] | None = Field(
        description="{step, of, phase}; null before the worker starts it")
    error: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    started_at: UtcDatetime = Field(description="when it was queued, until a worker starts it")
    finished_at: UtcDatetime | None

    @classmethod
    def of(cls, run: Run, n_steps: int = 0) -> ReplayOut:
        metrics, config = run.metrics or {}, run.config or {}
        done = run.status == "succeeded"
        return cls(id=run.id, status=run.status, process=run.process.name,
                   mode=str(config.get("mode", "")), source=config.get("source") or {},
                   model_id=run.model_id, controller=run.controller,
                   result_run_id=run.id if done else None, n_steps=n_steps,
                   cancel_requested=bool(config.get("cancel_requested")),
                   progress=metrics.get("progress"), error=metrics.get("error"),
                   config=config, metrics=metrics, started_at=run.started_at,
                   finished_at=run.finished_at)


# ---------------------------------------------------------------- keys and audit


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100,
                      description="who or what uses the key: 'alice', 'historian-bridge'")
    role: Role = Field(description="viewer < operator < engineer < admin; each includes "
                                   "the ones before it")


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
        return cls(id=key.id, name=key.name, role=key.role, prefix=key.prefix,
                   created_at=key.created_at, created_by=key.created_by,
                   revoked_at=key.revoked_at)


class KeyCreated(KeyOut):
    token: str = Field(description="the key to send as 'Authorization: Bearer <token>'; "
                                   "shown only in this response, never stored")

    @classmethod
    def with_token(cls, key: ApiKey, token: str) -> KeyCreated:
        return cls(**KeyOut.of(key).model_dump(), token=token)


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: UtcDatetime
    key_id: int | None = Field(description="null: no key (the CLI, or auth not required)")
    actor: str
    action: str = Field(description="e.g. loop.start, job.enqueue, process.define, "
                                    "key.create")
    target: str = Field(description="what changed: run:12, process:my_reactor, key:3")
    detail: dict[str, Any]

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditOut:
        return cls.model_validate(entry)


# ---------------------------------------------------------------- alarms (ISA-18.2)


class AlarmOut(BaseModel):
    """An alarm point of a control loop and its ISA-18.2 state."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    loop: int = Field(description="the control loop (run id)")
    process: str
    tag: str = Field(description="the sensor; empty for a point of the whole loop")
    kind: str = Field(description="limit_approach, limit_violation, fallback or stale_data")
    priority: str = Field(description="critical, high, medium or low")
    state: str = Field(description="normal, unacknowledged, acknowledged, "
                                   "rtn_unacknowledged (returned to normal, not yet "
                                   "acknowledged) or shelved")
    active: bool = Field(description="whether the condition is present now")
    message: str
    value: float | None = Field(description="when last raised, in `unit`")
    worst_value: float | None = Field(description="most severe while active, in `unit`")
    unit: str
    step: int = Field(description="loop step when last raised")
    time_s: float = Field(description="loop time when last raised, s")
    raised_at: UtcDatetime
    cleared_at: UtcDatetime | None
    acknowledged_at: UtcDatetime | None
    acknowledged_by: str | None
    shelved_at: UtcDatetime | None
    shelved_by: str | None
    shelved_until: UtcDatetime | None
    shelve_reason: str | None
    updated_at: UtcDatetime

    @classmethod
    def of(cls, alarm: Alarm, process: str) -> AlarmOut:
        fields = {name: getattr(alarm, name) for name in cls.model_fields
                  if name not in ("loop", "process")}
        return cls(**fields, loop=alarm.run_id, process=process)


class AlarmEventOut(BaseModel):
    """One transition of an alarm; `actor` is null for the alarm system itself."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: UtcDatetime
    action: str = Field(description="raised, cleared, acknowledged, shelved, unshelved or "
                                    "shelve_expired")
    from_state: str
    to_state: str
    step: int | None
    value: float | None
    actor: str | None
    note: str

    @classmethod
    def of(cls, event: AlarmEvent) -> AlarmEventOut:
        return cls.model_validate(event)


class AlarmDetailOut(AlarmOut):
    history: list[AlarmEventOut]


class ShelveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    minutes: FiniteFloat = Field(gt=0, le=24 * 60, description="how long, at most 24 h")
    reason: str = Field(min_length=1, max_length=500, pattern=r"\S",
                        description="why, for the next shift")
