"""Writing steps: StepRecords become rows of the three time-series tables, sent in one
batch on the caller's transaction (PostgreSQL: COPY, SQLite: executemany), and the value
rollups are merged in (api.series.rollups)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.errors import Invalid
from api.jsonsafe import json_safe
from api.orm import Channel, RunEvent, RunStep, RunValue
from api.series.rollups import upsert_rollups, value_rollups
from twin.records import StepRecord
from twin.spec import ProcessSpec, SpecError, TagRole

_CHANNEL_OF_ROLE = {TagRole.SENSOR: Channel.SENSOR, TagRole.DISTURBANCE: Channel.DISTURBANCE}

STEP_COLUMNS = ("run_id", "step", "time_s", "status", "solve_ms", "plan")
VALUE_COLUMNS = ("run_id", "step", "channel", "tag", "value")
EVENT_COLUMNS = ("run_id", "step", "time_s", "kind", "message", "tag")


@dataclass
class StepRows:
    """What StepRecords become in the three time-series tables: tuples in the order of
    STEP_COLUMNS, VALUE_COLUMNS and EVENT_COLUMNS (`plan` already JSON text)."""

    steps: list[tuple[Any, ...]] = field(default_factory=list)
    values: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)

    def tables(self) -> Iterator[tuple[str, tuple[str, ...], list[tuple[Any, ...]]]]:
        # Steps first: values and events are meaningless without them.
        yield RunStep.__tablename__, STEP_COLUMNS, self.steps
        yield RunValue.__tablename__, VALUE_COLUMNS, self.values
        yield RunEvent.__tablename__, EVENT_COLUMNS, self.events


def write_steps(
    session: Session, run_id: int, spec: ProcessSpec, records: Iterable[tuple[int, StepRecord]]
) -> None:
    """Insert steps, their values, events and value rollups without committing.

    The caller owns the transaction: when anything fails (an unknown tag, a step stored
    twice) the caller rolls back and nothing of the batch remains. On PostgreSQL the rows
    go through COPY on the session's own connection, so inside that same transaction.
    """
    rows = step_rows(run_id, spec, records)
    if not rows.steps:
        return
    session.flush()  # the run (and anything else pending) before the rows that point at it
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        _copy(connection, rows)
    else:
        _executemany(connection, rows)
    upsert_rollups(connection, run_id, value_rollups(rows.values))


def step_rows(
    run_id: int, spec: ProcessSpec, records: Iterable[tuple[int, StepRecord]]
) -> StepRows:
    """Validate and flatten records into table rows (an unknown tag raises Invalid)."""
    rows = StepRows()
    channel_of = {t.name: _CHANNEL_OF_ROLE.get(t.role) for t in spec.tags}
    for step, record in records:
        _add_step_rows(rows, run_id, spec, channel_of, int(step), record)
    return rows


def _add_step_rows(
    rows: StepRows,
    run_id: int,
    spec: ProcessSpec,
    channel_of: dict[str, Channel | None],
    step: int,
    record: StepRecord,
) -> None:
    time_s = float(record.time_s)
    plan = json.dumps(json_safe(record.plan.to_dict())) if record.plan is not None else None
    rows.steps.append((run_id, step, time_s, str(record.status), _finite_or(record.solve_ms), plan))
    rows.values.extend(_value_rows(run_id, spec, channel_of, step, record))
    rows.events.extend((run_id, step, time_s, ev.kind, ev.message, ev.tag) for ev in record.events)


def _value_rows(
    run_id: int,
    spec: ProcessSpec,
    channel_of: dict[str, Channel | None],
    step: int,
    record: StepRecord,
) -> Iterator[tuple[Any, ...]]:
    by_channel: list[tuple[Channel, dict[str, float]]] = [
        (Channel.ACTUATOR, record.actuators),
        (Channel.SETPOINT, record.setpoints),
        (Channel.MARGIN, record.margins),
    ]
    measured: dict[Channel, dict[str, float]] = {c: {} for c in _CHANNEL_OF_ROLE.values()}
    for tag, value in record.measurements.items():
        if tag not in channel_of:
            _role(spec, tag)  # raises Invalid naming the tag and the known ones
        # An actuator read back among measurements is dropped: `actuators` is what was applied.
        channel = channel_of[tag]
        if channel is not None:
            measured[channel][tag] = value
    by_channel.extend(measured.items())
    if record.plan is not None:
        # One-step-ahead prediction, kept at the step it was made (plan.time_s[0] later).
        by_channel.append(
            (
                Channel.PREDICTION,
                {tag: vals[0] for tag, vals in record.plan.sensors.items() if vals},
            )
        )
    for channel, values in by_channel:
        name = channel.value
        for tag, value in values.items():
            # Missing samples stay missing: NaN is not stored (and PostgreSQL JSON refuses it).
            if value is not None and math.isfinite(value):
                yield run_id, step, name, tag, float(value)


def _copy(connection: Connection, rows: StepRows) -> None:
    """COPY each table's rows (text format) on the session's psycopg connection."""
    cursor = connection.connection.driver_connection.cursor()
    for table, columns, batch in rows.tables():
        if not batch:
            continue
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        try:
            with cursor.copy(statement) as copy:
                for row in batch:
                    copy.write_row(row)
        except psycopg.Error as exc:
            # The same exception classes as every other query (IntegrityError is a 409).
            raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc


def _executemany(connection: Connection, rows: StepRows) -> None:
    """One executemany per table with plain tuples (SQLite: the only other database)."""
    for table, columns, batch in rows.tables():
        if batch:
            marks = ", ".join("?" * len(columns))
            connection.exec_driver_sql(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", batch
            )


def _role(spec: ProcessSpec, tag: str) -> TagRole:
    try:
        return spec.tag(tag).role
    except SpecError as exc:
        raise Invalid(str(exc)) from None


def _finite_or(value: float, default: float = 0.0) -> float:
    return float(value) if value is not None and math.isfinite(value) else default
