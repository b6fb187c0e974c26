"""Step ranges of a run by time (replay, export, alarms, a loop's restart): counted or
streamed in SQL, never read whole."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from api.orm import Channel, RunStep, RunValue

# Rows fetched per batch when a long range is streamed (values_between).
INSERT_CHUNK = 5_000


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


def step_span(
    session: Session, run_id: int, start_s: float | None = None, end_s: float | None = None
) -> StepSpan:
    """Counted in SQL: a request can be judged (empty, too large) without reading the run."""
    count, first, last = session.execute(
        _in_range(
            select(func.count(), func.min(RunStep.time_s), func.max(RunStep.time_s)).where(
                RunStep.run_id == run_id
            ),
            start_s,
            end_s,
        )
    ).one()
    return StepSpan(int(count), first, last)


def steps_between(
    session: Session, run_id: int, start_s: float | None = None, end_s: float | None = None
) -> list[Any]:
    """(step, time_s, status) rows of the steps inside [start_s, end_s], by step."""
    query = select(RunStep.step, RunStep.time_s, RunStep.status).where(RunStep.run_id == run_id)
    return list(session.execute(_in_range(query, start_s, end_s).order_by(RunStep.step)))


def count_values(session: Session, run_id: int, first_step: int, last_step: int) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(RunValue)
            .where(RunValue.run_id == run_id, RunValue.step.between(first_step, last_step))
        )
        or 0
    )


def values_between(
    session: Session, run_id: int, first_step: int, last_step: int, channels: Sequence[str]
) -> Iterable[tuple[str, str, int, float]]:
    """(channel, tag, step, value) of steps first..last, fetched in batches, not whole."""
    query = (
        select(RunValue.channel, RunValue.tag, RunValue.step, RunValue.value)
        .where(
            RunValue.run_id == run_id,
            RunValue.step.between(first_step, last_step),
            RunValue.channel.in_(list(channels)),
        )
        .execution_options(yield_per=INSERT_CHUNK)
    )
    return ((c, t, s, v) for c, t, s, v in session.execute(query))


def stored_history(
    session: Session, run_id: int, first_step: int, last_step: int
) -> list[tuple[float, dict[str, float | None], dict[str, float]]]:
    """(time_s, measurements, actuators applied) of steps first..last, oldest first: what a
    controller needs to rebuild its context window. A sample stored as missing stays absent."""
    steps = session.execute(
        select(RunStep.step, RunStep.time_s)
        .where(RunStep.run_id == run_id, RunStep.step.between(first_step, last_step))
        .order_by(RunStep.step)
    ).all()
    measured: dict[int, dict[str, float | None]] = {row.step: {} for row in steps}
    applied: dict[int, dict[str, float]] = {row.step: {} for row in steps}
    channels = (Channel.SENSOR, Channel.DISTURBANCE, Channel.ACTUATOR)
    for channel, tag, step, value in values_between(
        session, run_id, first_step, last_step, [str(c) for c in channels]
    ):
        if step in measured:
            (applied if channel == Channel.ACTUATOR else measured)[step][tag] = value
    return [(row.time_s, measured[row.step], applied[row.step]) for row in steps]


def recorded_tags(
    session: Session, run_id: int, first_step: int, last_step: int
) -> set[tuple[str, str]]:
    """(channel, tag) pairs with at least one value in steps first..last."""
    query = (
        select(RunValue.channel, RunValue.tag)
        .distinct()
        .where(RunValue.run_id == run_id, RunValue.step.between(first_step, last_step))
    )
    return {(c, t) for c, t in session.execute(query)}


def step_bounds(
    session: Session, run_id: int, start_s: float | None, end_s: float | None
) -> tuple[int, int] | None:
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
        low, high = session.execute(
            _in_range(
                select(func.min(RunStep.step + 0), func.max(RunStep.step + 0)).where(
                    RunStep.run_id == run_id
                ),
                start_s,
                end_s,
            )
        ).one()
    return None if low is None else (int(low), int(high))
