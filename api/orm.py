"""Tables. The Alembic migrations in `migrations/versions` create exactly these.

Run time series are stored in long format (`run_values`: one row per step, channel
and tag) so a process with any set of tags fits without schema changes, and the
composite index (run_id, channel, tag, step) serves the dashboards' only query.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# JSONB on PostgreSQL (indexable, compact); plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# run_values grows by (steps x tags) per run: 64-bit keys on PostgreSQL. SQLite only
# auto-increments a column declared exactly INTEGER PRIMARY KEY (which is 64-bit there).
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunKind(StrEnum):
    TRAIN = "train"
    CONTROL = "control"
    REPLAY = "replay"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


class Channel(StrEnum):
    SENSOR = "sensor"
    DISTURBANCE = "disturbance"
    ACTUATOR = "actuator"
    SETPOINT = "setpoint"
    PREDICTION = "prediction"
    MARGIN = "margin"


class Role(StrEnum):
    """API key roles, weakest first; each includes every role before it (see api.services.auth)."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ENGINEER = "engineer"
    ADMIN = "admin"


def _in(column: str, enum: type[StrEnum]) -> str:
    values = ", ".join(f"'{m.value}'" for m in enum)
    return f"{column} IN ({values})"


class Base(DeclarativeBase):
    type_annotation_map = {
        dict[str, Any]: JSONType,
        datetime: DateTime(timezone=True),
    }


class Process(Base):
    __tablename__ = "processes"
    __table_args__ = (UniqueConstraint("name", name="uq_processes_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    models: Mapped[list[TwinModel]] = relationship(back_populates="process")


class TwinModel(Base):
    """A trained twin; the checkpoint bytes are loaded only when asked for (deferred).

    Provenance of the training data (`dataset_*`, `data_*`) is null only for models
    registered before the registry recorded it, or registered without data (tests)."""

    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("process_id", "name", "version", name="uq_models_version"),
        Index("ix_models_dataset_sha256", "dataset_sha256"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    process_id: Mapped[int] = mapped_column(ForeignKey("processes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    checkpoint: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # sha256 of the training log file (or of the generated log written as CSV), its row
    # count, its first and last timestamps (s) and where it came from.
    dataset_sha256: Mapped[str | None] = mapped_column(String(64))
    dataset_rows: Mapped[int | None] = mapped_column(Integer)
    data_start_s: Mapped[float | None] = mapped_column(Float)
    data_end_s: Mapped[float | None] = mapped_column(Float)
    data_source: Mapped[str | None] = mapped_column(String(1000))

    process: Mapped[Process] = relationship(back_populates="models", lazy="joined")


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_in("kind", RunKind), name="ck_runs_kind"),
        CheckConstraint(_in("status", RunStatus), name="ck_runs_status"),
        Index("ix_runs_kind_started", "kind", "started_at"),
        Index("ix_runs_process_id", "process_id"),
        Index("ix_runs_model_id", "model_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    process_id: Mapped[int] = mapped_column(ForeignKey("processes.id", ondelete="CASCADE"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    controller: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # A control loop: server time its latest step was stored (staleness is judged on it).
    last_step_at: Mapped[datetime | None]

    process: Mapped[Process] = relationship(lazy="joined")


class ModelActivation(Base):
    """One model made active on a control loop: at its start, then at every switch.

    The loop's current model is `runs.model_id`; this table is its history."""

    __tablename__ = "model_activations"
    __table_args__ = (
        Index("ix_model_activations_run", "run_id", "activated_at"),
        Index("ix_model_activations_model_id", "model_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    previous_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL")
    )
    activated_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(500))

    model: Mapped[TwinModel] = relationship(foreign_keys=[model_id], lazy="joined")


class RunStep(Base):
    __tablename__ = "run_steps"
    __table_args__ = (
        UniqueConstraint("run_id", "step", name="uq_run_steps_run_step"),
        # Time-range reads (plots, exports, replays) find their steps without a run scan.
        Index("ix_run_steps_run_time", "run_id", "time_s", "step"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    time_s: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    solve_ms: Mapped[float] = mapped_column(Float)
    plan: Mapped[dict[str, Any] | None]


class RunValue(Base):
    __tablename__ = "run_values"
    __table_args__ = (
        CheckConstraint(_in("channel", Channel), name="ck_run_values_channel"),
        Index("ix_run_values_lookup", "run_id", "channel", "tag", "step"),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(16))
    tag: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)


class RunValueRollup(Base):
    """Count, minimum and maximum (with the step of each) of one tag's values over bucket
    `bucket` = step // width_steps, for widths 16, 64, ... 65536 steps; kept up to date by
    `write_steps`, so a plot of a long range reads a few rows per point (no raw scan)."""

    __tablename__ = "run_value_rollups"
    __table_args__ = (
        CheckConstraint(_in("channel", Channel), name="ck_run_value_rollups_channel"),
    )

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    width_steps: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    tag: Mapped[str] = mapped_column(String(200), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    n_values: Mapped[int] = mapped_column(Integer)
    min_value: Mapped[float] = mapped_column(Float)
    min_step: Mapped[int] = mapped_column(Integer)
    max_value: Mapped[float] = mapped_column(Float)
    max_step: Mapped[int] = mapped_column(Integer)


class RunEvent(Base):
    __tablename__ = "run_events"
    __table_args__ = (Index("ix_run_events_run_step", "run_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    time_s: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    tag: Mapped[str | None] = mapped_column(String(200))


class ApiKey(Base):
    """An API key. The token itself is never stored: only its public `prefix` (to find the
    row and to tell keys apart in listings) and the sha256 of the whole token."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(_in("role", Role), name="ck_api_keys_role"),
        UniqueConstraint("prefix", name="uq_api_keys_prefix"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None]


class AuditEntry(Base):
    """One successful change: who (key and name at the time), what action, on what target.

    `key_id` is null for changes made without a key (the CLI, or the API while
    auth is not required); `actor` says which."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_key_id", "key_id"),
        Index("ix_audit_log_target", "target"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]]


class AlarmState(StrEnum):
    """ISA-18.2 alarm states (A-D and F of its state diagram)."""

    NORMAL = "normal"  # condition absent, nothing to acknowledge
    UNACKNOWLEDGED = "unacknowledged"  # condition present, not yet acknowledged
    ACKNOWLEDGED = "acknowledged"  # condition present, acknowledged
    RTN_UNACKNOWLEDGED = "rtn_unacknowledged"  # returned to normal before it was acknowledged
    SHELVED = "shelved"  # hidden by an operator until `shelved_until`


class AlarmKind(StrEnum):
    LIMIT_APPROACH = "limit_approach"
    LIMIT_VIOLATION = "limit_violation"
    FALLBACK = "fallback"
    STALE_DATA = "stale_data"


class AlarmPriority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class Alarm(Base):
    """One alarm point of a control loop: (loop, tag, kind), with its ISA-18.2 state.

    A point is raised again (not duplicated) each time its condition returns; its
    transitions are kept in `alarm_events`. `tag` is "" for a point of the whole loop
    (fallback, stale data). Values are in `unit` (the tag's unit, or s for stale data)."""

    __tablename__ = "alarms"
    __table_args__ = (
        CheckConstraint(_in("state", AlarmState), name="ck_alarms_state"),
        CheckConstraint(_in("kind", AlarmKind), name="ck_alarms_kind"),
        CheckConstraint(_in("priority", AlarmPriority), name="ck_alarms_priority"),
        UniqueConstraint("run_id", "tag", "kind", name="uq_alarms_point"),
        Index("ix_alarms_state", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    tag: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    priority: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(24))
    active: Mapped[bool] = mapped_column(Boolean)
    message: Mapped[str] = mapped_column(Text)
    unit: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float)  # when last raised
    worst_value: Mapped[float | None] = mapped_column(Float)  # most severe while active
    step: Mapped[int] = mapped_column(Integer)  # loop step and time when last raised
    time_s: Mapped[float] = mapped_column(Float)
    raised_at: Mapped[datetime] = mapped_column(default=utcnow)
    cleared_at: Mapped[datetime | None]
    clear_streak: Mapped[int] = mapped_column(Integer, default=0)  # steps without condition
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    shelved_at: Mapped[datetime | None]
    shelved_by: Mapped[str | None] = mapped_column(String(200))
    shelved_until: Mapped[datetime | None]
    shelve_reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlarmEvent(Base):
    """One transition of an alarm point: raised, cleared, acknowledged, shelved..."""

    __tablename__ = "alarm_events"
    __table_args__ = (Index("ix_alarm_events_alarm", "alarm_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    alarm_id: Mapped[int] = mapped_column(ForeignKey("alarms.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    action: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str] = mapped_column(String(24))
    to_state: Mapped[str] = mapped_column(String(24))
    step: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    actor: Mapped[str | None] = mapped_column(String(200))  # null: the alarm system itself
    note: Mapped[str] = mapped_column(Text)


class AlarmCursor(Base):
    """How far the alarms of a control loop have been evaluated, and when its newest
    step was first seen (server time; a running loop silent for longer is stale)."""

    __tablename__ = "alarm_cursors"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    last_step: Mapped[int] = mapped_column(Integer)  # -1: no step evaluated yet
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed: Mapped[bool] = mapped_column(Boolean, default=False)  # loop ended, all evaluated
