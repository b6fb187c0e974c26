"""Runs and their time series: every query the API and the dashboards make lives here.

Writes are batched (`session.execute(insert(Table), rows)` is an executemany), and an
episode or a control step is written in one transaction: a run never shows half a step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, insert, select
from sqlalchemy.orm import Session

from api.errors import Invalid, NotFound
from api.orm import Channel, Process, Run, RunEvent, RunKind, RunStatus, RunStep, RunValue, utcnow
from api.services.jsonsafe import json_safe
from api.services.models import get_model
from api.services.processes import process_or_builtin, spec_of
from twin.records import EpisodeResult, StepRecord
from twin.spec import ProcessSpec, SpecError, TagRole

# Rows per INSERT statement: bounds memory and statement size on very long episodes.
INSERT_CHUNK = 5_000

_CHANNEL_OF_ROLE = {TagRole.SENSOR: Channel.SENSOR, TagRole.DISTURBANCE: Channel.DISTURBANCE}


@dataclass
class StepRows:
    """What one StepRecord becomes in the three time-series tables."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    values: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


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
    """Insert steps without committing (the caller owns the transaction)."""
    rows = StepRows()
    for step, record in records:
        _add_step_rows(rows, run_id, spec, step, record)
    # Steps first: values and events are meaningless without them.
    for table, batch in ((RunStep, rows.steps), (RunValue, rows.values),
                         (RunEvent, rows.events)):
        for start in range(0, len(batch), INSERT_CHUNK):
            session.execute(insert(table), batch[start:start + INSERT_CHUNK])


def _add_step_rows(rows: StepRows, run_id: int, spec: ProcessSpec, step: int,
                   record: StepRecord) -> None:
    plan = json_safe(record.plan.to_dict()) if record.plan is not None else None
    rows.steps.append({"run_id": run_id, "step": step, "time_s": float(record.time_s),
                       "status": str(record.status), "solve_ms": _finite_or(record.solve_ms),
                       "plan": plan})
    rows.values.extend(_value_rows(run_id, spec, step, record))
    rows.events.extend(
        {"run_id": run_id, "step": step, "time_s": float(record.time_s), "kind": ev.kind,
         "message": ev.message, "tag": ev.tag}
        for ev in record.events)


def _value_rows(run_id: int, spec: ProcessSpec, step: int,
                record: StepRecord) -> list[dict[str, Any]]:
    by_channel: list[tuple[Channel, dict[str, float]]] = [
        (Channel.ACTUATOR, record.actuators),
        (Channel.SETPOINT, record.setpoints),
        (Channel.MARGIN, record.margins),
    ]
    measured: dict[Channel, dict[str, float]] = {c: {} for c in _CHANNEL_OF_ROLE.values()}
    for tag, value in record.measurements.items():
        # An actuator read back among measurements is dropped: `actuators` is what was applied.
        channel = _CHANNEL_OF_ROLE.get(_role(spec, tag))
        if channel is not None:
            measured[channel][tag] = value
    by_channel.extend(measured.items())
    if record.plan is not None:
        # One-step-ahead prediction, kept at the step it was made (plan.time_s[0] later).
        by_channel.append((Channel.PREDICTION, {tag: vals[0] for tag, vals
                                                in record.plan.sensors.items() if vals}))
    return [
        {"run_id": run_id, "step": step, "channel": str(channel), "tag": tag,
         "value": float(value)}
        for channel, values in by_channel
        for tag, value in values.items()
        # Missing samples stay missing: NaN is not stored (and PostgreSQL JSON refuses it).
        if value is not None and math.isfinite(value)
    ]


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


def get_series(session: Session, run_id: int, channels: Sequence[str] | None = None,
               tags: Sequence[str] | None = None,
               max_points: int | None = None) -> dict[str, Any]:
    """Time series of a run, aligned on one time axis, shaped for JSON.

    `{"run_id", "steps", "time_s", "stride", "series": {channel: {tag: [value|None]}}}`.
    With `max_points`, every `stride`-th step is kept (stride = ceil(n / max_points)),
    computed in SQL so a long run is not read whole to draw a few thousand points.
    """
    get_run(session, run_id)
    for channel in channels or ():
        _check_channel(channel)
    steps = session.execute(select(RunStep.step, RunStep.time_s)
                            .where(RunStep.run_id == run_id).order_by(RunStep.step)).all()
    stride = _stride(len(steps), max_points)
    first = steps[0].step if steps else 0
    kept = [row for row in steps if (row.step - first) % stride == 0]
    column_of = {row.step: i for i, row in enumerate(kept)}
    series: dict[str, dict[str, list[float | None]]] = {}
    for channel, tag, step, value in session.execute(
            _values_query(run_id, channels, tags, stride, first)):
        column = series.setdefault(channel, {}).setdefault(tag, [None] * len(kept))
        column[column_of[step]] = value
    return {"run_id": run_id, "steps": [r.step for r in kept],
            "time_s": [r.time_s for r in kept], "stride": stride, "series": series}


def _values_query(run_id: int, channels: Sequence[str] | None, tags: Sequence[str] | None,
                  stride: int, first: int) -> Select:
    query = (select(RunValue.channel, RunValue.tag, RunValue.step, RunValue.value)
             .where(RunValue.run_id == run_id)
             .order_by(RunValue.channel, RunValue.tag, RunValue.step))
    if channels:
        query = query.where(RunValue.channel.in_(list(channels)))
    if tags:
        query = query.where(RunValue.tag.in_(list(tags)))
    if stride > 1:
        query = query.where((RunValue.step - first) % stride == 0)
    return query


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


def recorded_tags(session: Session, run_id: int, first_step: int,
                  last_step: int) -> set[tuple[str, str]]:
    """(channel, tag) pairs with at least one value in steps first..last."""
    query = (select(RunValue.channel, RunValue.tag).distinct()
             .where(RunValue.run_id == run_id, RunValue.step.between(first_step, last_step)))
    return {(c, t) for c, t in session.execute(query)}


def step_bounds(session: Session, run_id: int, start_s: float | None,
                end_s: float | None) -> tuple[int, int] | None:
    """First and last step number inside the time range (None: no step there)."""
    low, high = session.execute(_in_range(
        select(func.min(RunStep.step), func.max(RunStep.step))
        .where(RunStep.run_id == run_id), start_s, end_s)).one()
    return None if low is None else (int(low), int(high))
