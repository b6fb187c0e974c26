"""Runs and their time series: every query the API and the dashboards make lives here.

An episode or a control step is written in one transaction (the caller's): a run never
shows half a step. Writes are batched: PostgreSQL gets COPY, SQLite an executemany.

Besides the raw values, `write_steps` keeps `run_value_rollups`: count, minimum and
maximum of every tag over aligned buckets of 16, 64, ... 65536 steps. A plot of a long
range (`get_series(method="minmax")`) then reads a few rollup rows per point instead of
every stored value, and still shows every spike: each point pair is a bucket's minimum
and maximum, not a sample that may fall between spikes.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Select,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.errors import Invalid, NotFound
from api.orm import (
    Channel,
    Process,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
    RunStep,
    RunValue,
    RunValueRollup,
    utcnow,
)
from api.services.jsonsafe import json_safe
from api.services.models import get_model
from api.services.processes import process_or_builtin, spec_of
from twin.records import EpisodeResult, StepRecord
from twin.spec import ProcessSpec, SpecError, TagRole

# Rows fetched per batch when a long range is streamed (values_between).
INSERT_CHUNK = 5_000

# Rollup bucket widths in steps, each 4x the previous one. A plot reads the widest one
# that fits its bucket, so at most a few rollup rows per plotted point; both ends of a
# range that do not fill a whole bucket come from the next narrower width, down to raw.
ROLLUP_WIDTHS_STEPS = (16, 64, 256, 1024, 4096, 16384, 65536)
# A min/max bucket is a whole number of rollup buckets. Rounding it up may cost points:
# a width is used only if at least 1/1.5 = 2/3 of the points asked for remain.
MAX_BUCKET_GROWTH = 1.5
# Step numbers per `IN (...)` list: far below SQLite's and PostgreSQL's parameter limits.
IN_CHUNK = 1_000

SERIES_METHODS: tuple[str, ...] = ("stride", "minmax")

_CHANNEL_OF_ROLE = {TagRole.SENSOR: Channel.SENSOR, TagRole.DISTURBANCE: Channel.DISTURBANCE}

STEP_COLUMNS = ("run_id", "step", "time_s", "status", "solve_ms", "plan")
VALUE_COLUMNS = ("run_id", "step", "channel", "tag", "value")
EVENT_COLUMNS = ("run_id", "step", "time_s", "kind", "message", "tag")
ROLLUP_KEY = ("run_id", "width_steps", "channel", "tag", "bucket")


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


# ---------------------------------------------------------------- writing


def create_run(session: Session, *, kind: str, process: str, controller: str,
               config: dict[str, Any], model_id: int | None = None,
               status: str = RunStatus.RUNNING, commit: bool = True) -> Run:
    _check_choice("kind", kind, RunKind)
    _check_choice("status", status, RunStatus)
    proc = process_or_builtin(session, process)
    if model_id is not None and get_model(session, model_id).process_id != proc.id:
        raise Invalid(f"model {model_id} was not trained for process '{process}'")
    run = Run(kind=str(kind), status=str(status), process_id=proc.id, model_id=model_id,
              controller=controller, config=json_safe(config), metrics={})
    session.add(run)
    session.flush()
    if commit:
        session.commit()
    return run


def finish_run(session: Session, run_id: int, status: str,
               metrics: dict[str, Any] | None = None, *, commit: bool = True) -> Run:
    _check_choice("status", status, RunStatus)
    run = get_run(session, run_id)
    run.status = str(status)
    run.finished_at = utcnow()
    if metrics is not None:
        run.metrics = json_safe(metrics)
    if commit:
        session.commit()
    return run


def store_episode(session: Session, episode: EpisodeResult, kind: str = "control",
                  model_id: int | None = None) -> Run:
    """Store a finished episode (run, steps, values, events) in one transaction."""
    try:
        run = create_run(session, kind=kind, process=episode.process,
                         controller=episode.controller, config=episode.config,
                         model_id=model_id, status=RunStatus.SUCCEEDED, commit=False)
        spec = spec_of(run.process)
        _check_unique_steps(episode.steps)
        write_steps(session, run.id, spec, ((rec.step, rec) for rec in episode.steps))
        run.metrics = json_safe(episode.metrics)
        run.finished_at = utcnow()
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run


def write_steps(session: Session, run_id: int, spec: ProcessSpec,
                records: Iterable[tuple[int, StepRecord]]) -> None:
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
    _upsert_rollups(connection, run_id, value_rollups(rows.values))


def step_rows(run_id: int, spec: ProcessSpec,
              records: Iterable[tuple[int, StepRecord]]) -> StepRows:
    """Validate and flatten records into table rows (an unknown tag raises Invalid)."""
    rows = StepRows()
    channel_of = {t.name: _CHANNEL_OF_ROLE.get(t.role) for t in spec.tags}
    for step, record in records:
        _add_step_rows(rows, run_id, spec, channel_of, int(step), record)
    return rows


def _add_step_rows(rows: StepRows, run_id: int, spec: ProcessSpec,
                   channel_of: dict[str, Channel | None], step: int,
                   record: StepRecord) -> None:
    time_s = float(record.time_s)
    plan = (json.dumps(json_safe(record.plan.to_dict()))
            if record.plan is not None else None)
    rows.steps.append((run_id, step, time_s, str(record.status),
                       _finite_or(record.solve_ms), plan))
    rows.values.extend(_value_rows(run_id, spec, channel_of, step, record))
    rows.events.extend((run_id, step, time_s, ev.kind, ev.message, ev.tag)
                       for ev in record.events)


def _value_rows(run_id: int, spec: ProcessSpec, channel_of: dict[str, Channel | None],
                step: int, record: StepRecord) -> Iterator[tuple[Any, ...]]:
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
        by_channel.append((Channel.PREDICTION, {tag: vals[0] for tag, vals
                                                in record.plan.sensors.items() if vals}))
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
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", batch)


# ---------------------------------------------------------------- extremes and rollups


@dataclass(frozen=True)
class Extremes:
    """Count, minimum and maximum (and the step of each) of groups of one tag's values.

    One entry per group, sorted by `key` (an index into a list of (channel, tag) pairs),
    then by `start`, the first step the group may cover. A single value is a group of one.
    """

    key: np.ndarray
    start: np.ndarray
    count: np.ndarray
    low: np.ndarray
    low_step: np.ndarray
    high: np.ndarray
    high_step: np.ndarray

    @classmethod
    def build(cls, key: Sequence[int], start: Sequence[int], count: Sequence[int],
              low: Sequence[float], low_step: Sequence[int], high: Sequence[float],
              high_step: Sequence[int]) -> Extremes:
        """From unsorted columns (raw values: count 1, low = high, steps = start)."""
        key_array, start_array = np.asarray(key, np.int64), np.asarray(start, np.int64)
        order = np.lexsort((start_array, key_array))
        return cls(key_array[order], start_array[order], np.asarray(count, np.int64)[order],
                   np.asarray(low, np.float64)[order], np.asarray(low_step, np.int64)[order],
                   np.asarray(high, np.float64)[order], np.asarray(high_step, np.int64)[order])

    @classmethod
    def of_values(cls, key: Sequence[int], step: Sequence[int],
                  value: Sequence[float]) -> Extremes:
        return cls.build(key, step, np.ones(len(key), np.int64), value, step, value, step)

    def __len__(self) -> int:
        return len(self.key)

    def concat(self, other: Extremes) -> Extremes:
        """Both sets of groups, re-sorted by key then start."""
        columns = [np.concatenate([getattr(self, f), getattr(other, f)])
                   for f in ("key", "start", "count", "low", "low_step", "high", "high_step")]
        return Extremes.build(*columns)

    def bucketed(self, width: int, origin: int = 0) -> tuple[Extremes, np.ndarray]:
        """Groups merged per bucket of `width` steps counted from `origin` (floor division,
        so buckets stay aligned for negative steps too), and each merged group's bucket.

        Ties keep the earliest step: groups are ordered by start within a key."""
        if len(self) == 0:
            return self, np.zeros(0, np.int64)
        bucket = np.floor_divide(self.start - origin, width)
        new = np.ones(len(self), bool)
        new[1:] = (self.key[1:] != self.key[:-1]) | (bucket[1:] != bucket[:-1])
        first = np.flatnonzero(new)
        sizes = np.diff(np.append(first, len(self)))
        low = np.minimum.reduceat(self.low, first)
        high = np.maximum.reduceat(self.high, first)
        at_low = _first_true(self.low == np.repeat(low, sizes), first)
        at_high = _first_true(self.high == np.repeat(high, sizes), first)
        merged = Extremes(self.key[first], origin + bucket[first] * width,
                          np.add.reduceat(self.count, first), low, self.low_step[at_low],
                          high, self.high_step[at_high])
        return merged, bucket[first]


def _first_true(mask: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Index of the first True of each segment of `mask` starting at `first` (every
    segment has one: it holds its own minimum or maximum)."""
    index = np.where(mask, np.arange(len(mask)), len(mask))
    return np.minimum.reduceat(index, first)


@dataclass(frozen=True)
class Rollups:
    """Rollup rows of one batch: per width, the merged extremes and their bucket numbers."""

    keys: list[tuple[str, str]]
    levels: list[tuple[int, Extremes, np.ndarray]]

    def columns(self) -> dict[str, list[Any]]:
        """Column lists for the upsert (without run_id)."""
        out: dict[str, list[Any]] = {name: [] for name in (
            "width_steps", "channel", "tag", "bucket", "n_values", "min_value", "min_step",
            "max_value", "max_step")}
        for width, extremes, bucket in self.levels:
            out["width_steps"].extend([width] * len(extremes))
            out["channel"].extend(self.keys[k][0] for k in extremes.key.tolist())
            out["tag"].extend(self.keys[k][1] for k in extremes.key.tolist())
            out["bucket"].extend(bucket.tolist())
            out["n_values"].extend(extremes.count.tolist())
            out["min_value"].extend(extremes.low.tolist())
            out["min_step"].extend(extremes.low_step.tolist())
            out["max_value"].extend(extremes.high.tolist())
            out["max_step"].extend(extremes.high_step.tolist())
        return out


def value_rollups(values: Sequence[tuple[Any, ...]]) -> Rollups:
    """Rollups of value rows (VALUE_COLUMNS), every width, each built from the previous."""
    keys: dict[tuple[str, str], int] = {}
    key = [keys.setdefault((row[2], row[3]), len(keys)) for row in values]
    extremes = Extremes.of_values(key, [row[1] for row in values], [row[4] for row in values])
    levels = []
    for width in ROLLUP_WIDTHS_STEPS:
        extremes, bucket = extremes.bucketed(width)
        levels.append((width, extremes, bucket))
    return Rollups(list(keys), levels)


def _merge_rollup(old: Any, new: Any) -> dict[str, ColumnElement[Any]]:
    """SET clause merging an incoming rollup row (`new`) into the stored one (`old`)."""
    new_low = or_(new.min_value < old.min_value,
                  and_(new.min_value == old.min_value, new.min_step < old.min_step))
    new_high = or_(new.max_value > old.max_value,
                   and_(new.max_value == old.max_value, new.max_step < old.max_step))
    return {
        "n_values": old.n_values + new.n_values,
        "min_value": case((new_low, new.min_value), else_=old.min_value),
        "min_step": case((new_low, new.min_step), else_=old.min_step),
        "max_value": case((new_high, new.max_value), else_=old.max_value),
        "max_step": case((new_high, new.max_step), else_=old.max_step),
    }


def _upsert_rollups(connection: Connection, run_id: int, rollups: Rollups) -> None:
    columns = rollups.columns()
    if not columns["bucket"]:
        return
    statement = _rollup_upsert(connection.dialect.name)
    if connection.dialect.name == "postgresql":
        connection.execute(statement, {"run_id": run_id, **columns})
        return
    names = list(columns)
    connection.execute(statement, [{"run_id": run_id, **dict(zip(names, row, strict=True))}
                                   for row in zip(*columns.values(), strict=True)])


@functools.cache
def _rollup_upsert(dialect: str) -> Any:
    """The upsert statement, built once (a live loop runs it at every step)."""
    table = RunValueRollup.__table__
    names = [c.name for c in table.columns if c.name != "run_id"]
    if dialect == "postgresql":
        # One statement for the whole batch: the columns travel as arrays and unnest.
        arrays = func.unnest(*(bindparam(name, type_=postgresql.ARRAY(table.c[name].type))
                               for name in names)).table_valued(*names).render_derived()
        pg_insert = postgresql.insert(table).from_select(
            ["run_id", *names], select(bindparam("run_id", type_=Integer), *arrays.c))
        return pg_insert.on_conflict_do_update(
            index_elements=list(ROLLUP_KEY), set_=_merge_rollup(table.c, pg_insert.excluded))
    lite_insert = sqlite.insert(table)
    return lite_insert.on_conflict_do_update(
        index_elements=list(ROLLUP_KEY), set_=_merge_rollup(table.c, lite_insert.excluded))


def _role(spec: ProcessSpec, tag: str) -> TagRole:
    try:
        return spec.tag(tag).role
    except SpecError as exc:
        raise Invalid(str(exc)) from None


def _finite_or(value: float, default: float = 0.0) -> float:
    return float(value) if value is not None and math.isfinite(value) else default


def _check_unique_steps(records: Sequence[StepRecord]) -> None:
    seen: set[int] = set()
    for rec in records:
        if rec.step in seen:
            raise Invalid(f"episode has step {rec.step} twice")
        seen.add(rec.step)


def _check_choice(what: str, value: str, allowed: type[RunKind] | type[RunStatus]) -> None:
    if value not in {m.value for m in allowed}:
        choices = ", ".join(m.value for m in allowed)
        raise Invalid(f"unknown run {what} '{value}' (one of: {choices})")


# ---------------------------------------------------------------- reading


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"unknown run id {run_id}")
    return run


def list_runs(session: Session, *, kind: str | None = None, process: str | None = None,
              status: str | None = None, limit: int = 100, offset: int = 0) -> list[Run]:
    query = select(Run).join(Run.process).order_by(Run.id.desc()).limit(limit).offset(offset)
    if kind is not None:
        query = query.where(Run.kind == kind)
    if process is not None:
        query = query.where(Process.name == process)
    if status is not None:
        query = query.where(Run.status == status)
    return list(session.scalars(query))


def step_counts(session: Session, run_ids: Sequence[int]) -> dict[int, int]:
    if not run_ids:
        return {}
    query = (select(RunStep.run_id, func.count()).where(RunStep.run_id.in_(run_ids))
             .group_by(RunStep.run_id))
    return {run_id: count for run_id, count in session.execute(query)}


def last_step(session: Session, run_id: int) -> RunStep | None:
    query = (select(RunStep).where(RunStep.run_id == run_id)
             .order_by(RunStep.step.desc()).limit(1))
    return session.scalars(query).one_or_none()


def step_range(session: Session, run_id: int) -> tuple[int, int] | None:
    low, high = session.execute(
        select(func.min(RunStep.step), func.max(RunStep.step))
        .where(RunStep.run_id == run_id)).one()
    return None if low is None else (int(low), int(high))


def get_step(session: Session, run_id: int, step: int) -> RunStep:
    row = session.scalars(
        select(RunStep).where(RunStep.run_id == run_id, RunStep.step == step)).one_or_none()
    if row is None:
        get_run(session, run_id)  # a 404 on the run reads better than one on the step
        raise NotFound(f"run {run_id} has no step {step}")
    return row


def step_values(session: Session, run_id: int, step: int) -> dict[str, dict[str, float]]:
    query = select(RunValue.channel, RunValue.tag, RunValue.value).where(
        RunValue.run_id == run_id, RunValue.step == step)
    out: dict[str, dict[str, float]] = {}
    for channel, tag, value in session.execute(query):
        out.setdefault(channel, {})[tag] = value
    return out


def list_events(session: Session, run_id: int, step: int | None = None,
                limit: int | None = None) -> list[RunEvent]:
    query = select(RunEvent).where(RunEvent.run_id == run_id)
    if step is not None:
        query = query.where(RunEvent.step == step)
    return list(session.scalars(query.order_by(RunEvent.step, RunEvent.id).limit(limit)))


# ---------------------------------------------------------------- series (plots)


@dataclass(frozen=True)
class SeriesQuery:
    """What to read: the run, a step range [first, last] and the channel/tag filters."""

    run_id: int
    first: int
    last: int
    channels: Sequence[str] | None
    tags: Sequence[str] | None

    def filters(self, table: Any) -> list[ColumnElement[bool]]:
        out = [table.run_id == self.run_id]
        if self.channels:
            out.append(table.channel.in_(list(self.channels)))
        if self.tags:
            out.append(table.tag.in_(list(self.tags)))
        return out


def get_series(session: Session, run_id: int, channels: Sequence[str] | None = None,
               tags: Sequence[str] | None = None, max_points: int | None = None, *,
               start_s: float | None = None, end_s: float | None = None,
               method: str = "stride") -> dict[str, Any]:
    """Time series of a run, aligned on one time axis, shaped for JSON.

    `{"run_id", "steps", "time_s", "stride", "method", "series": {channel: {tag:
    [value|None]}}}`, over the steps whose time is in [start_s, end_s] (both optional).
    Without `max_points`, or when the range has no more steps than that, every step.
    Otherwise, at most `max_points` points per tag, by `method`:

    - "stride": every `stride`-th step (stride = ceil(steps / max_points)). Cheap, but a
      spike between two kept steps is not shown.
    - "minmax": the range is cut into buckets of 2 x `stride` steps and each bucket gives
      two points per tag, its minimum and its maximum in the order they occurred, so
      every spike survives. The time axis holds each bucket's first and middle step: a
      value is drawn up to one bucket away from when it occurred. Read from the rollups
      (a few rows per point, whatever the range's length). `max_points` below 2 gives
      "stride".
    """
    get_run(session, run_id)
    for channel in channels or ():
        _check_channel(channel)
    _check_time_range(start_s, end_s)
    if max_points is not None and max_points < 1:
        raise Invalid("max_points must be at least 1")
    if method not in SERIES_METHODS:
        raise Invalid(f"unknown method '{method}' (one of: {', '.join(SERIES_METHODS)})")
    bounds = step_bounds(session, run_id, start_s, end_s)
    if bounds is None:
        return _series_out(run_id, [], [], 1, method, {})
    query = SeriesQuery(run_id, *bounds, channels, tags)
    span = query.last - query.first + 1
    if max_points is None or span <= max_points:
        return _stride_series(session, query, 1, method)
    if method == "minmax" and max_points >= 2:
        return _minmax_series(session, query, max_points)
    count = session.scalar(select(func.count()).where(
        RunStep.run_id == run_id, RunStep.step.between(query.first, query.last)))
    return _stride_series(session, query, _stride(int(count or 0), max_points), "stride")


def _series_out(run_id: int, steps: list[int], time_s: list[float], stride: int,
                method: str, series: dict[str, dict[str, list[float | None]]]
                ) -> dict[str, Any]:
    return {"run_id": run_id, "steps": steps, "time_s": time_s, "stride": stride,
            "method": method, "series": series}


def _stride_series(session: Session, query: SeriesQuery, stride: int,
                   method: str) -> dict[str, Any]:
    """Every stride-th step from the first, filtered in SQL (a long run is not read whole)."""
    kept = session.execute(
        select(RunStep.step, RunStep.time_s)
        .where(RunStep.run_id == query.run_id, RunStep.step.between(query.first, query.last),
               *_on_stride(RunStep.step, query.first, stride))
        .order_by(RunStep.step)).all()
    column_of = {row.step: i for i, row in enumerate(kept)}
    series: dict[str, dict[str, list[float | None]]] = {}
    values = (select(RunValue.channel, RunValue.tag, RunValue.step, RunValue.value)
              .where(*query.filters(RunValue), RunValue.step.between(query.first, query.last),
                     *_on_stride(RunValue.step, query.first, stride))
              .order_by(RunValue.channel, RunValue.tag, RunValue.step))
    for channel, tag, step, value in session.execute(values):
        column = series.setdefault(channel, {}).setdefault(tag, [None] * len(kept))
        column[column_of[step]] = value
    return _series_out(query.run_id, [r.step for r in kept], [r.time_s for r in kept],
                       stride, method, series)


def _on_stride(step: Any, first: int, stride: int) -> list[ColumnElement[bool]]:
    return [(step - first) % stride == 0] if stride > 1 else []


def _stride(n: int, max_points: int | None) -> int:
    if max_points is None or n <= max_points:
        return 1
    if max_points < 1:
        raise Invalid("max_points must be at least 1")
    return math.ceil(n / max_points)


def _check_channel(channel: str) -> None:
    if channel not in {c.value for c in Channel}:
        known = ", ".join(c.value for c in Channel)
        raise Invalid(f"unknown channel '{channel}' (one of: {known})")


def _check_time_range(start_s: float | None, end_s: float | None) -> None:
    for name, value in (("start_s", start_s), ("end_s", end_s)):
        if value is not None and not math.isfinite(value):
            raise Invalid(f"{name} must be a finite number of seconds, got {value}")
    if start_s is not None and end_s is not None and end_s < start_s:
        raise Invalid(f"empty time range: end_s {end_s:g} is before start_s {start_s:g}")


@dataclass(frozen=True)
class BucketPlan:
    """Min/max buckets of `bucket_steps` steps from `origin`, built from rollups of
    `width_steps` (1: from raw values)."""

    width_steps: int
    bucket_steps: int
    origin: int


def bucket_plan(first: int, last: int, buckets: int) -> BucketPlan:
    """At most `buckets` buckets over steps first..last, from the widest rollup that fits."""
    span = last - first + 1
    ideal = span / buckets
    for width in reversed(ROLLUP_WIDTHS_STEPS):
        if width > ideal:
            continue
        origin = first - first % width
        size = math.ceil((last - origin + 1) / (buckets * width)) * width
        if size <= MAX_BUCKET_GROWTH * ideal:
            return BucketPlan(width, size, origin)
    # Too few steps per bucket for any rollup: raw values (at most 16 per point per tag).
    return BucketPlan(1, 2 * math.ceil(span / (2 * buckets)), first)


@dataclass(frozen=True)
class Slots:
    """The time axis of a min/max series: per bucket, the index of its first slot and of
    its second one (the same slot for a bucket of one step)."""

    steps: list[int]
    first: np.ndarray
    second: np.ndarray


def _slots(first: int, last: int, plan: BucketPlan) -> Slots:
    steps: list[int] = []
    first_slot, second_slot = [], []
    n_buckets = (last - plan.origin) // plan.bucket_steps + 1
    for bucket in range(n_buckets):
        low = max(first, plan.origin + bucket * plan.bucket_steps)
        high = min(last, plan.origin + (bucket + 1) * plan.bucket_steps - 1)
        first_slot.append(len(steps))
        steps.append(low)
        if high > low:
            steps.append(low + (high - low + 1) // 2)
        second_slot.append(len(steps) - 1)
    return Slots(steps, np.asarray(first_slot), np.asarray(second_slot))


def _minmax_series(session: Session, query: SeriesQuery, max_points: int) -> dict[str, Any]:
    plan = bucket_plan(query.first, query.last, max_points // 2)
    slots = _slots(query.first, query.last, plan)
    keys, extremes = _range_extremes(session, query, plan.width_steps)
    merged, bucket = extremes.bucketed(plan.bucket_steps, plan.origin)
    # Per bucket, the extreme that occurred first goes in the first slot.
    low_first = merged.low_step <= merged.high_step
    early = np.where(low_first, merged.low, merged.high)
    late = np.where(low_first, merged.high, merged.low)
    series: dict[str, dict[str, list[float | None]]] = {}
    for code in np.unique(merged.key).tolist():
        mine = merged.key == code
        column = np.full(len(slots.steps), np.nan)
        column[slots.first[bucket[mine]]] = early[mine]
        column[slots.second[bucket[mine]]] = late[mine]
        channel, tag = keys[code]
        series.setdefault(channel, {})[tag] = [None if math.isnan(v) else v
                                               for v in column.tolist()]
    ordered = {c: dict(sorted(series[c].items())) for c in sorted(series)}
    times = _times_of(session, query.run_id, slots.steps)
    return _series_out(query.run_id, slots.steps, times, plan.bucket_steps // 2, "minmax",
                       ordered)


def _range_extremes(session: Session, query: SeriesQuery,
                    width: int) -> tuple[list[tuple[str, str]], Extremes]:
    """Extremes of exactly steps first..last: whole rollup buckets of `width` and the
    narrower widths at both ends, raw values for what no whole bucket covers."""
    keys: dict[tuple[str, str], int] = {}
    out = Extremes.of_values([], [], [])
    pairs = _rollup_keys(session, query)
    if not pairs:
        return [], out
    widths = [w for w in ROLLUP_WIDTHS_STEPS if w <= width]
    rollup_ranges, raw_ranges = _cover(query.first, query.last, widths[::-1])
    for level in sorted({w for w, _, _ in rollup_ranges}):
        buckets = [(b0, b1) for w, b0, b1 in rollup_ranges if w == level]
        out = out.concat(_rollup_extremes(session, query, pairs, level, buckets, keys))
    if raw_ranges:
        out = out.concat(_raw_extremes(session, query, pairs, raw_ranges, keys))
    return list(keys), out


def _cover(first: int, last: int,
           widths: Sequence[int]) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Split steps first..last into whole buckets (width, first bucket, last bucket), widest
    first, and the raw step ranges (first, last) left at the ends."""
    if first > last:
        return [], []
    if not widths:
        return [], [(first, last)]
    width, narrower = widths[0], widths[1:]
    low, high = -(-first // width), (last + 1) // width - 1
    if low > high:
        return _cover(first, last, narrower)
    left = _cover(first, low * width - 1, narrower)
    right = _cover((high + 1) * width, last, narrower)
    return ([(width, low, high), *left[0], *right[0]], [*left[1], *right[1]])


def _rollup_keys(session: Session, query: SeriesQuery) -> list[tuple[str, str]]:
    """The run's (channel, tag) pairs, from its widest rollup (every value is in it): naming
    them lets each read seek to its steps or buckets instead of scanning every tag's."""
    table = RunValueRollup
    rows = session.execute(
        select(table.channel, table.tag).distinct()
        .where(*query.filters(table), table.width_steps == ROLLUP_WIDTHS_STEPS[-1]))
    return [(c, t) for c, t in rows]


def _rollup_extremes(session: Session, query: SeriesQuery, pairs: list[tuple[str, str]],
                     width: int, buckets: list[tuple[int, int]],
                     keys: dict[tuple[str, str], int]) -> Extremes:
    table = RunValueRollup.__table__
    rows = _plain_rows(session, select(
        table.c.channel, table.c.tag, table.c.bucket, table.c.n_values, table.c.min_value,
        table.c.min_step, table.c.max_value, table.c.max_step)
        .where(table.c.run_id == query.run_id, table.c.width_steps == width,
               *_pair_filters(table.c, pairs),
               or_(*(table.c.bucket.between(b0, b1) for b0, b1 in buckets))))
    key = [keys.setdefault((row[0], row[1]), len(keys)) for row in rows]
    start, count, low, low_step, high, high_step = (
        _column(rows, i, kind) for i, kind in enumerate(
            (np.int64, np.int64, np.float64, np.int64, np.float64, np.int64), start=2))
    return Extremes.build(key, start * width, count, low, low_step, high, high_step)


def _raw_extremes(session: Session, query: SeriesQuery, pairs: list[tuple[str, str]],
                  ranges: list[tuple[int, int]], keys: dict[tuple[str, str], int]) -> Extremes:
    table = RunValue.__table__
    rows = _plain_rows(session, select(table.c.channel, table.c.tag, table.c.step,
                                       table.c.value)
                       .where(table.c.run_id == query.run_id, *_pair_filters(table.c, pairs),
                              or_(*(table.c.step.between(a, z) for a, z in ranges))))
    key = [keys.setdefault((row[0], row[1]), len(keys)) for row in rows]
    return Extremes.of_values(key, _column(rows, 2, np.int64), _column(rows, 3, np.float64))


def _pair_filters(columns: Any, pairs: list[tuple[str, str]]) -> list[ColumnElement[bool]]:
    """Channel and tag lists of the pairs: their cross product may name pairs that do not
    exist, never one outside the caller's channel and tag filters."""
    return [columns.channel.in_(sorted({c for c, _ in pairs})),
            columns.tag.in_(sorted({t for _, t in pairs}))]


def _plain_rows(session: Session, statement: Select) -> list[tuple[Any, ...]]:
    """The driver's own tuples, not Row objects: turning 100 k rows into arrays is then
    ~10x faster, and these reads return up to a few hundred thousand rows."""
    result = session.connection().execute(statement)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


def _column(rows: list[tuple[Any, ...]], index: int, kind: type) -> np.ndarray:
    return np.fromiter((row[index] for row in rows), kind, len(rows))


def _times_of(session: Session, run_id: int, steps: list[int]) -> list[float]:
    """time_s of each step; a step number the run skipped gets a time interpolated
    between its neighbours on the axis (the first one always exists: it starts the range)."""
    found: dict[int, float] = {}
    for start in range(0, len(steps), IN_CHUNK):
        chunk = steps[start:start + IN_CHUNK]
        # `status` is read only so that no index covers the query: SQLite (no statistics)
        # would otherwise scan ix_run_steps_run_time whole instead of seeking each step.
        found.update((step, time_s) for step, time_s, _ in session.execute(
            select(RunStep.step, RunStep.time_s, RunStep.status)
            .where(RunStep.run_id == run_id, RunStep.step.in_(chunk))))
    if len(found) == len(steps):
        return [found[s] for s in steps]
    known = sorted(found)
    return np.interp(steps, known, [found[s] for s in known]).tolist()


# ---------------------------------------------------------------- ranges (replay, export)


@dataclass(frozen=True)
class StepSpan:
    """Steps of a run inside a time range: how many, and the times they cover."""

    count: int
    first_s: float | None
    last_s: float | None


def _in_range(query: Select, start_s: float | None, end_s: float | None) -> Select:
    if start_s is not None:
        query = query.where(RunStep.time_s >= start_s)
    if end_s is not None:
        query = query.where(RunStep.time_s <= end_s)
    return query


def step_span(session: Session, run_id: int, start_s: float | None = None,
              end_s: float | None = None) -> StepSpan:
    """Counted in SQL: a request can be judged (empty, too large) without reading the run."""
    count, first, last = session.execute(_in_range(
        select(func.count(), func.min(RunStep.time_s), func.max(RunStep.time_s))
        .where(RunStep.run_id == run_id), start_s, end_s)).one()
    return StepSpan(int(count), first, last)


def steps_between(session: Session, run_id: int, start_s: float | None = None,
                  end_s: float | None = None) -> list[Any]:
    """(step, time_s, status) rows of the steps inside [start_s, end_s], by step."""
    query = select(RunStep.step, RunStep.time_s, RunStep.status).where(RunStep.run_id == run_id)
    return list(session.execute(_in_range(query, start_s, end_s).order_by(RunStep.step)))


def count_values(session: Session, run_id: int, first_step: int, last_step: int) -> int:
    return int(session.scalar(
        select(func.count()).select_from(RunValue)
        .where(RunValue.run_id == run_id, RunValue.step.between(first_step, last_step))) or 0)


def values_between(session: Session, run_id: int, first_step: int, last_step: int,
                   channels: Sequence[str]) -> Iterable[tuple[str, str, int, float]]:
    """(channel, tag, step, value) of steps first..last, fetched in batches, not whole."""
    query = (select(RunValue.channel, RunValue.tag, RunValue.step, RunValue.value)
             .where(RunValue.run_id == run_id, RunValue.step.between(first_step, last_step),
                    RunValue.channel.in_(list(channels)))
             .execution_options(yield_per=INSERT_CHUNK))
    return ((c, t, s, v) for c, t, s, v in session.execute(query))


def stored_history(session: Session, run_id: int, first_step: int, last_step: int
                   ) -> list[tuple[float, dict[str, float | None], dict[str, float]]]:
    """(time_s, measurements, actuators applied) of steps first..last, oldest first: what a
    controller needs to rebuild its context window. A sample stored as missing stays absent."""
    steps = session.execute(select(RunStep.step, RunStep.time_s).where(
        RunStep.run_id == run_id, RunStep.step.between(first_step, last_step))
        .order_by(RunStep.step)).all()
    measured: dict[int, dict[str, float | None]] = {row.step: {} for row in steps}
    applied: dict[int, dict[str, float]] = {row.step: {} for row in steps}
    channels = (Channel.SENSOR, Channel.DISTURBANCE, Channel.ACTUATOR)
    for channel, tag, step, value in values_between(session, run_id, first_step, last_step,
                                                    [str(c) for c in channels]):
        if step in measured:
            (applied if channel == Channel.ACTUATOR else measured)[step][tag] = value
    return [(row.time_s, measured[row.step], applied[row.step]) for row in steps]


def recorded_tags(session: Session, run_id: int, first_step: int,
                  last_step: int) -> set[tuple[str, str]]:
    """(channel, tag) pairs with at least one value in steps first..last."""
    query = (select(RunValue.channel, RunValue.tag).distinct()
             .where(RunValue.run_id == run_id, RunValue.step.between(first_step, last_step)))
    return {(c, t) for c, t in session.execute(query)}


def step_bounds(session: Session, run_id: int, start_s: float | None,
                end_s: float | None) -> tuple[int, int] | None:
    """First and last step number inside the time range (None: no step there).

    Without a range, two seeks on the (run_id, step) key; with one, a scan of the range in
    ix_run_steps_run_time, whatever the run's length."""
    if start_s is None and end_s is None:
        steps = select(RunStep.step).where(RunStep.run_id == run_id).limit(1)
        low = session.scalar(steps.order_by(RunStep.step))
        high = session.scalar(steps.order_by(RunStep.step.desc()))
    else:
        # `step + 0` turns off PostgreSQL's min/max shortcut, which walks the (run_id, step)
        # key until a step falls in the range: half the run for a window in its middle.
        low, high = session.execute(_in_range(
            select(func.min(RunStep.step + 0), func.max(RunStep.step + 0))
            .where(RunStep.run_id == run_id), start_s, end_s)).one()
    return None if low is None else (int(low), int(high))
