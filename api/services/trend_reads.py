"""Reads behind the trend pages: the ends of a run, steps and values of a window, and
the newest events. Kept with the other queries so the pages hold no SQL."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.orm import RunEvent, RunStep, RunValue

# Beyond this, events would bury the trends; the JSON API still has them all.
MAX_EVENTS_DRAWN = 2_000


@dataclass(frozen=True)
class Ends:
    """The first and last stored steps of a run and their times [s]."""

    first_step: int
    first_s: float
    last_step: int
    last_s: float


def run_ends(session: Session, run_id: int) -> Ends | None:
    def one(order: Any) -> Any:
        return session.execute(
            select(RunStep.step, RunStep.time_s)
            .where(RunStep.run_id == run_id)
            .order_by(order)
            .limit(1)
        ).first()

    first = one(RunStep.step)
    if first is None:
        return None
    last = one(RunStep.step.desc())
    return Ends(first.step, first.time_s, last.step, last.time_s)


def step_rows_between(
    session: Session, run_id: int, first: int, last: int | None, limit: int | None = None
) -> list[Any]:
    """(step, time_s, status) of steps first..last (last None: to the end), by step."""
    query = select(RunStep.step, RunStep.time_s, RunStep.status).where(
        RunStep.run_id == run_id, RunStep.step >= first
    )
    if last is not None:
        query = query.where(RunStep.step <= last)
    return list(session.execute(query.order_by(RunStep.step).limit(limit)))


def values_of_tags(
    session: Session,
    run_id: int,
    channels: Sequence[str],
    tags: Sequence[str],
    first: int,
    last: int,
) -> Iterable[tuple[str, str, int, float]]:
    query = select(RunValue.channel, RunValue.tag, RunValue.step, RunValue.value).where(
        RunValue.run_id == run_id,
        RunValue.channel.in_(list(channels)),
        RunValue.tag.in_(list(tags)),
        RunValue.step.between(first, last),
    )
    return ((c, t, k, v) for c, t, k, v in session.execute(query))


def events_in_window(
    session: Session, run_id: int, start_s: float | None, end_s: float | None
) -> list[dict[str, Any]]:
    """The newest MAX_EVENTS_DRAWN events of the window, oldest first."""
    query = select(RunEvent).where(RunEvent.run_id == run_id)
    if start_s is not None:
        query = query.where(RunEvent.time_s >= start_s)
    if end_s is not None:
        query = query.where(RunEvent.time_s <= end_s)
    rows = session.scalars(
        query.order_by(RunEvent.step.desc(), RunEvent.id.desc()).limit(MAX_EVENTS_DRAWN)
    )
    return [event_dict(e) for e in reversed(list(rows))]


def events_after(session: Session, run_id: int, after_step: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(RunEvent)
        .where(RunEvent.run_id == run_id, RunEvent.step > after_step)
        .order_by(RunEvent.step, RunEvent.id)
        .limit(MAX_EVENTS_DRAWN)
    )
    return [event_dict(e) for e in rows]


def event_dict(event: RunEvent) -> dict[str, Any]:
    return {
        "step": event.step,
        "time_s": event.time_s,
        "kind": event.kind,
        "message": event.message,
        "tag": event.tag,
    }
