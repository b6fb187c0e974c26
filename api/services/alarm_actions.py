"""Operator actions on an alarm: acknowledge, shelve, unshelve. Each records the user and
time on the alarm, in its history and in the audit log, in one transaction."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import Conflict, Invalid, NotFound
from api.orm import Alarm, AlarmState, utcnow
from api.services.alarm_states import as_utc, end_shelving, log_change
from api.services.audit import Actor, record
from api.services.transactions import rollback_on_error

MAX_SHELVE_MINUTES = 24 * 60.0  # ISA-18.2: shelving is always time-limited


def acknowledge(
    session: Session, alarm_id: int, actor: Actor, *, now: datetime | None = None
) -> Alarm:
    """unacknowledged -> acknowledged, rtn_unacknowledged -> normal. Acknowledging an
    acknowledged alarm again changes nothing; a normal or shelved one is a Conflict."""
    now = now or utcnow()
    with rollback_on_error(session):
        alarm = _locked(session, alarm_id, now)
        if alarm.state == AlarmState.ACKNOWLEDGED:
            session.commit()
            return alarm
        if alarm.state not in (AlarmState.UNACKNOWLEDGED, AlarmState.RTN_UNACKNOWLEDGED):
            why = (
                "unshelve it first"
                if alarm.state == AlarmState.SHELVED
                else "nothing to acknowledge"
            )
            raise Conflict(f"alarm {alarm_id} is {alarm.state}: {why}")
        before = alarm.state
        alarm.state = (
            AlarmState.ACKNOWLEDGED if before == AlarmState.UNACKNOWLEDGED else AlarmState.NORMAL
        )
        alarm.acknowledged_at, alarm.acknowledged_by = now, actor.name
        log_change(session, alarm, "acknowledged", before, now, actor=actor)
        record(
            session,
            actor,
            "alarm.acknowledge",
            f"alarm:{alarm_id}",
            {"from": before, "to": alarm.state},
        )
        session.commit()
    return alarm


def shelve(
    session: Session,
    alarm_id: int,
    actor: Actor,
    minutes: float,
    reason: str,
    *,
    now: datetime | None = None,
) -> Alarm:
    """Hide an alarm for `minutes` (0 < minutes <= MAX_SHELVE_MINUTES) with a reason."""
    now = now or utcnow()
    if (
        not isinstance(minutes, int | float)
        or not math.isfinite(minutes)
        or not (0 < minutes <= MAX_SHELVE_MINUTES)
    ):
        raise Invalid(f"minutes must be a number in (0, {MAX_SHELVE_MINUTES:g}], got {minutes!r}")
    reason = (reason or "").strip()
    if not reason:
        raise Invalid("a reason is needed to shelve an alarm")
    with rollback_on_error(session):
        alarm = _locked(session, alarm_id, now)
        if alarm.state == AlarmState.SHELVED:
            until = as_utc(alarm.shelved_until).isoformat()
            raise Conflict(
                f"alarm {alarm_id} is already shelved until {until} by "
                f"{alarm.shelved_by}; unshelve it first"
            )
        before = alarm.state
        alarm.state = AlarmState.SHELVED
        alarm.shelved_at, alarm.shelved_by, alarm.shelve_reason = now, actor.name, reason
        alarm.shelved_until = now + timedelta(minutes=minutes)
        log_change(
            session, alarm, "shelved", before, now, actor=actor, note=f"{minutes:g} min: {reason}"
        )
        record(
            session,
            actor,
            "alarm.shelve",
            f"alarm:{alarm_id}",
            {"from": before, "minutes": minutes, "reason": reason},
        )
        session.commit()
    return alarm


def unshelve(
    session: Session, alarm_id: int, actor: Actor, *, now: datetime | None = None
) -> Alarm:
    """shelved -> unacknowledged (condition present) or normal; else a Conflict."""
    now = now or utcnow()
    with rollback_on_error(session):
        alarm = _locked(session, alarm_id, now)
        if alarm.state != AlarmState.SHELVED:
            raise Conflict(f"alarm {alarm_id} is {alarm.state}, not shelved")
        end_shelving(session, alarm, now, "unshelved", actor)
        record(session, actor, "alarm.unshelve", f"alarm:{alarm_id}", {"to": alarm.state})
        session.commit()
    return alarm


def _locked(session: Session, alarm_id: int, now: datetime) -> Alarm:
    """The alarm, locked for the change, with an expired shelving already ended (that
    is committed on its own: it stands even if the operator's request is refused)."""
    alarm = _select_locked(session, alarm_id)
    if (
        alarm.state == AlarmState.SHELVED
        and alarm.shelved_until is not None
        and as_utc(alarm.shelved_until) <= now
    ):
        end_shelving(session, alarm, now, "shelve_expired", None)
        session.commit()
        alarm = _select_locked(session, alarm_id)
    return alarm


def _select_locked(session: Session, alarm_id: int) -> Alarm:
    alarm = session.scalars(
        select(Alarm)
        .where(Alarm.id == alarm_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if alarm is None:
        raise NotFound(f"unknown alarm id {alarm_id}")
    return alarm
