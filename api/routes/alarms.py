"""Alarms of control loops (ISA-18.2): list them (viewer), acknowledge, shelve and
unshelve them (operator; each records the key's name and the time, and is audited).

The server clock is `app.state.clock` when set (tests move it), else UTC now.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api.alarm_schemas import AlarmDetailOut, AlarmEventOut, AlarmOut, ShelveIn
from api.contract import API_ERRORS, MAX_ID, AlarmIdPath, StrictJSONRoute, error_responses
from api.deps import OperatorDep, SessionDep, SettingsDep, require
from api.orm import Alarm, AlarmState, Role, utcnow
from api.services import alarms

router = APIRouter(
    prefix="/api/alarms",
    tags=["alarms"],
    dependencies=[require(Role.VIEWER)],
    route_class=StrictJSONRoute,
    responses=error_responses(*API_ERRORS),
)


def _now(request: Request) -> datetime:
    clock: Callable[[], datetime] = getattr(request.app.state, "clock", utcnow)
    return clock()


NowDep = Annotated[datetime, Depends(_now)]


def _out(session: SessionDep, alarm: Alarm) -> AlarmOut:
    return AlarmOut.of(alarm, alarms.process_names(session, [alarm.run_id])[alarm.run_id])


@router.get("", response_model=list[AlarmOut])
def list_alarms(
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    state: AlarmState | None = None,
    loop: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="a control loop's run id")
    ] = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[AlarmOut]:
    """Alarms, newest raised first, brought up to date with the loops' latest steps."""
    found = alarms.list_alarms(
        session,
        state=state,
        run_id=loop,
        now=now,
        limit=min(limit, settings.max_list_limit),
        offset=offset,
    )
    names = alarms.process_names(session, [a.run_id for a in found])
    return [AlarmOut.of(a, names[a.run_id]) for a in found]


@router.get("/{alarm_id}", response_model=AlarmDetailOut)
def get_alarm(alarm_id: AlarmIdPath, session: SessionDep) -> AlarmDetailOut:
    """One alarm with its history of transitions, oldest first."""
    alarm = alarms.get_alarm(session, alarm_id)
    history = [AlarmEventOut.of(e) for e in alarms.alarm_history(session, alarm_id)]
    return AlarmDetailOut(**_out(session, alarm).model_dump(), history=history)


@router.post("/{alarm_id}/acknowledge", response_model=AlarmOut)
def acknowledge(
    alarm_id: AlarmIdPath, session: SessionDep, actor: OperatorDep, now: NowDep
) -> AlarmOut:
    """unacknowledged -> acknowledged; returned to normal -> normal. 409 for a normal or
    shelved alarm; acknowledging an acknowledged one again changes nothing."""
    return _out(session, alarms.acknowledge(session, alarm_id, actor, now=now))


@router.post("/{alarm_id}/shelve", response_model=AlarmOut)
def shelve(
    alarm_id: AlarmIdPath, body: ShelveIn, session: SessionDep, actor: OperatorDep, now: NowDep
) -> AlarmOut:
    """Hide the alarm for `minutes` (at most 24 h); it comes back by itself after that."""
    return _out(
        session, alarms.shelve(session, alarm_id, actor, body.minutes, body.reason, now=now)
    )


@router.post("/{alarm_id}/unshelve", response_model=AlarmOut)
def unshelve(
    alarm_id: AlarmIdPath, session: SessionDep, actor: OperatorDep, now: NowDep
) -> AlarmOut:
    """Show a shelved alarm again: unacknowledged if its condition is present, else normal."""
    return _out(session, alarms.unshelve(session, alarm_id, actor, now=now))
