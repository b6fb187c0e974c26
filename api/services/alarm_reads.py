"""Plain reads of stored alarms: one alarm, its history, the processes of their loops."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import NotFound
from api.orm import Alarm, AlarmEvent, Run


def get_alarm(session: Session, alarm_id: int) -> Alarm:
    alarm = session.get(Alarm, alarm_id)
    if alarm is None:
        raise NotFound(f"unknown alarm id {alarm_id}")
    return alarm


def alarm_history(session: Session, alarm_id: int) -> list[AlarmEvent]:
    get_alarm(session, alarm_id)
    return list(
        session.scalars(
            select(AlarmEvent).where(AlarmEvent.alarm_id == alarm_id).order_by(AlarmEvent.id)
        )
    )


def process_names(session: Session, run_ids: Iterable[int]) -> dict[int, str]:
    """run id -> its process's name, for listing alarms."""
    ids = sorted(set(run_ids))
    if not ids:
        return {}
    return {run.id: run.process.name for run in session.scalars(select(Run).where(Run.id.in_(ids)))}
