"""The ISA-18.2 state machine of one alarm point: raise, clear, end a shelving, each
logged in the point's history (`alarm_events`). No commit: the caller's transaction."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from api.orm import Alarm, AlarmEvent, AlarmState
from api.services.alarm_conditions import Condition, StepView
from api.services.audit import Actor


def log_change(
    session: Session,
    alarm: Alarm,
    action: str,
    before: str,
    now: datetime,
    *,
    step: int | None = None,
    value: float | None = None,
    actor: Actor | None = None,
    note: str = "",
) -> None:
    session.add(
        AlarmEvent(
            alarm_id=alarm.id,
            at=now,
            action=action,
            from_state=before,
            to_state=alarm.state,
            step=step,
            value=value,
            actor=actor.name if actor else None,
            note=note,
        )
    )
    alarm.updated_at = now


def activate(
    session: Session, alarm: Alarm, cond: Condition, view: StepView, now: datetime
) -> None:
    alarm.clear_streak = 0
    if alarm.active:
        if cond.value is not None and (
            alarm.worst_value is None or cond.direction * (cond.value - alarm.worst_value) > 0
        ):
            alarm.worst_value = cond.value
        return
    before = alarm.state
    alarm.active, alarm.message, alarm.unit = True, cond.message, cond.unit
    alarm.value = alarm.worst_value = cond.value
    alarm.step, alarm.time_s, alarm.raised_at, alarm.cleared_at = view.step, view.time_s, now, None
    if alarm.state != AlarmState.SHELVED:
        alarm.state = AlarmState.UNACKNOWLEDGED
        alarm.acknowledged_at = alarm.acknowledged_by = None
    log_change(
        session, alarm, "raised", before, now, step=view.step, value=cond.value, note=cond.message
    )


def deactivate(session: Session, alarm: Alarm, now: datetime, step: int | None, note: str) -> None:
    before = alarm.state
    alarm.active, alarm.cleared_at, alarm.clear_streak = False, now, 0
    if alarm.state == AlarmState.UNACKNOWLEDGED:
        alarm.state = AlarmState.RTN_UNACKNOWLEDGED
    elif alarm.state == AlarmState.ACKNOWLEDGED:
        alarm.state = AlarmState.NORMAL
    log_change(session, alarm, "cleared", before, now, step=step, note=note)


def end_shelving(
    session: Session, alarm: Alarm, now: datetime, action: str, actor: Actor | None
) -> None:
    before = alarm.state
    alarm.state = AlarmState.UNACKNOWLEDGED if alarm.active else AlarmState.NORMAL
    alarm.acknowledged_at = alarm.acknowledged_by = None
    note = f"shelved by {alarm.shelved_by} until {as_utc(alarm.shelved_until).isoformat()}"
    alarm.shelved_at = alarm.shelved_by = alarm.shelved_until = alarm.shelve_reason = None
    log_change(session, alarm, action, before, now, actor=actor, note=note)


def as_utc(moment: datetime | None) -> datetime:
    """SQLite hands timestamps back without their zone; they are stored as UTC."""
    assert moment is not None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
