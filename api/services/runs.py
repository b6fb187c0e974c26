"""Runs: their creation, status and metrics, and the validated reads the API and the
dashboards make of them. The rows themselves are stored and read by api.series."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
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
    utcnow,
)
from api.series.downsample import (
    SeriesQuery,
    minmax_series,
    series_out,
    stride_for,
    stride_series,
)

# Re-exported: callers of the run service also read ranges and write steps through it.
from api.series.ranges import (  # noqa: F401
    StepSpan,
    count_values,
    recorded_tags,
    step_bounds,
    step_span,
    steps_between,
    stored_history,
    values_between,
)
from api.series.rollups import ROLLUP_WIDTHS_STEPS  # noqa: F401
from api.series.writes import StepRows, step_rows, write_steps  # noqa: F401
from api.services.jsonsafe import json_safe
from api.services.models import get_model
from api.services.processes import process_or_builtin, spec_of
from api.services.transactions import rollback_on_error
from twin.records import EpisodeResult, StepRecord

SERIES_METHODS: tuple[str, ...] = ("stride", "minmax")


# ---------------------------------------------------------------- writing


def create_run(
    session: Session,
    *,
    kind: str,
    process: str,
    controller: str,
    config: dict[str, Any],
    model_id: int | None = None,
    status: str = RunStatus.RUNNING,
    commit: bool = True,
) -> Run:
    _check_choice("kind", kind, RunKind)
    _check_choice("status", status, RunStatus)
    proc = process_or_builtin(session, process)
    if model_id is not None and get_model(session, model_id).process_id != proc.id:
        raise Invalid(f"model {model_id} was not trained for process '{process}'")
    run = Run(
        kind=str(kind),
        status=str(status),
        process_id=proc.id,
        model_id=model_id,
        controller=controller,
        config=json_safe(config),
        metrics={},
    )
    session.add(run)
    session.flush()
    if commit:
        session.commit()
    return run


def finish_run(
    session: Session,
    run_id: int,
    status: str,
    metrics: dict[str, Any] | None = None,
    *,
    commit: bool = True,
) -> Run:
    _check_choice("status", status, RunStatus)
    run = get_run(session, run_id)
    run.status = str(status)
    run.finished_at = utcnow()
    if metrics is not None:
        run.metrics = json_safe(metrics)
    if commit:
        session.commit()
    return run


def store_episode(
    session: Session, episode: EpisodeResult, kind: str = "control", model_id: int | None = None
) -> Run:
    """Store a finished episode (run, steps, values, events) in one transaction."""
    with rollback_on_error(session):
        run = create_run(
            session,
            kind=kind,
            process=episode.process,
            controller=episode.controller,
            config=episode.config,
            model_id=model_id,
            status=RunStatus.SUCCEEDED,
            commit=False,
        )
        spec = spec_of(run.process)
        _check_unique_steps(episode.steps)
        write_steps(session, run.id, spec, ((rec.step, rec) for rec in episode.steps))
        run.metrics = json_safe(episode.metrics)
        run.finished_at = utcnow()
        session.commit()
    return run


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


def list_runs(
    session: Session,
    *,
    kind: str | None = None,
    process: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Run]:
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
    query = (
        select(RunStep.run_id, func.count())
        .where(RunStep.run_id.in_(run_ids))
        .group_by(RunStep.run_id)
    )
    return {run_id: count for run_id, count in session.execute(query)}


def last_step(session: Session, run_id: int) -> RunStep | None:
    query = select(RunStep).where(RunStep.run_id == run_id).order_by(RunStep.step.desc()).limit(1)
    return session.scalars(query).one_or_none()


def step_range(session: Session, run_id: int) -> tuple[int, int] | None:
    low, high = session.execute(
        select(func.min(RunStep.step), func.max(RunStep.step)).where(RunStep.run_id == run_id)
    ).one()
    return None if low is None else (int(low), int(high))


def get_step(session: Session, run_id: int, step: int) -> RunStep:
    row = session.scalars(
        select(RunStep).where(RunStep.run_id == run_id, RunStep.step == step)
    ).one_or_none()
    if row is None:
        get_run(session, run_id)  # a 404 on the run reads better than one on the step
        raise NotFound(f"run {run_id} has no step {step}")
    return row


def step_values(session: Session, run_id: int, step: int) -> dict[str, dict[str, float]]:
    query = select(RunValue.channel, RunValue.tag, RunValue.value).where(
        RunValue.run_id == run_id, RunValue.step == step
    )
    out: dict[str, dict[str, float]] = {}
    for channel, tag, value in session.execute(query):
        out.setdefault(channel, {})[tag] = value
    return out


def list_events(
    session: Session, run_id: int, step: int | None = None, limit: int | None = None
) -> list[RunEvent]:
    query = select(RunEvent).where(RunEvent.run_id == run_id)
    if step is not None:
        query = query.where(RunEvent.step == step)
    return list(session.scalars(query.order_by(RunEvent.step, RunEvent.id).limit(limit)))


# ---------------------------------------------------------------- series (plots)


def get_series(
    session: Session,
    run_id: int,
    channels: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    max_points: int | None = None,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    method: str = "stride",
) -> dict[str, Any]:
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
        return series_out(run_id, [], [], 1, method, {})
    query = SeriesQuery(run_id, *bounds, channels, tags)
    span = query.last - query.first + 1
    if max_points is None or span <= max_points:
        return stride_series(session, query, 1, method)
    if method == "minmax" and max_points >= 2:
        return minmax_series(session, query, max_points)
    count = session.scalar(
        select(func.count()).where(
            RunStep.run_id == run_id, RunStep.step.between(query.first, query.last)
        )
    )
    return stride_series(session, query, stride_for(int(count or 0), max_points), "stride")


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
