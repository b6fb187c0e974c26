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
    """A trained twin; the checkpoint bytes are loaded only when asked for (deferred)."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("process_id", "name", "version", name="uq_models_version"),)

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

    process: Mapped[Process] = relationship(lazy="joined")


class RunStep(Base):
    __tablename__ = "run_steps"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_run_steps_run_step"),)

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
