"""Alarms of control loops, with the ISA-18.2 state machine.

An alarm point is (loop, tag, kind); it is raised from what each loop step stored:

* `limit_violation` (critical): a sensor beyond its hard limit (its margin < 0);
* `limit_approach` (medium): a sensor within `APPROACH_FRACTION` of its operating span
  of a limit. The span is high - low for a sensor with both limits, else the distance
  from its one limit to its nominal value (or, without one, to the step's setpoint);
  a sensor with neither has no approach alarm, only the violation;
* `fallback` (medium, whole loop): the step's status is fallback (solver failure,
  deadline, limit guard, model mismatch, a guarded actuator value); not while a new
  loop warms up (its history filling), which is expected, needs no response and is
  recorded as the step's `warming_up` event only;
* `stale_data` (high, whole loop): the controller marked the step stale (a gap of more
  than 3 sample periods, or no sensor value), or a running loop has stored no step for
  more than `STALE_AFTER_PERIODS` sample periods of server time.

States (ISA-18.2, A-D and F):

    normal --condition--> unacknowledged --ack--> acknowledged --clears--> normal
                               |  ^                                          ^
                        clears v  | condition returns                        |
                      rtn_unacknowledged --------------ack-------------------'
    any of them --shelve(minutes, reason)--> shelved --unshelve or expiry-->
        unacknowledged if the condition is present, else normal

A point is raised once while its condition lasts (one row per point, updated, never a
row per step), and returns to normal only after `CLEAR_AFTER_STEPS` steps without its
condition (an off-delay against chattering). A sensor without a value in a step neither
raises nor clears its points. Acknowledging, shelving and unshelving record the user
and time on the alarm, in its history (`alarm_events`) and in the audit log, in one
transaction; automatic transitions record no user.

Evaluation: `evaluate_step` judges one step as it is stored (call it in the step's
transaction); `refresh` (run on every read) judges whatever steps were stored since a
loop's cursor, so alarms are right whether or not the step path calls `evaluate_step`.
Times are server UTC; every function takes `now` so tests can move the clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import Invalid, NotFound
from api.orm import (
    Alarm,
    AlarmCursor,
    AlarmKind,
    AlarmPriority,
    AlarmState,
    Channel,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
    RunStep,
    utcnow,
)
from api.series.ranges import values_between

# Re-exported: the conditions, state machine and operator actions are reached through here.
from api.services.alarm_actions import (  # noqa: F401
    MAX_SHELVE_MINUTES,
    acknowledge,
    shelve,
    unshelve,
)
from api.services.alarm_conditions import (  # noqa: F401
    APPROACH_FRACTION,
    LOOP,
    STALE_EVENTS,
    Condition,
    StepView,
    approach_band,
    step_conditions,
)
from api.services.alarm_reads import alarm_history as alarm_history
from api.services.alarm_reads import get_alarm as get_alarm
from api.services.alarm_reads import process_names as process_names
from api.services.alarm_states import activate, as_utc, deactivate, end_shelving
from api.services.processes import spec_of
from twin.records import StepRecord, StepStatus
from twin.spec import ProcessSpec

CLEAR_AFTER_STEPS = 3  # steps without the condition before a point returns to normal
STALE_AFTER_PERIODS = 3.0  # sample periods without a step before a running loop is stale
MAX_STEPS_PER_PASS = 5_000  # steps of one loop judged per refresh (a backlog takes several)
PRIORITY = {
    AlarmKind.LIMIT_VIOLATION: AlarmPriority.CRITICAL,
    AlarmKind.STALE_DATA: AlarmPriority.HIGH,
    AlarmKind.LIMIT_APPROACH: AlarmPriority.MEDIUM,
    AlarmKind.FALLBACK: AlarmPriority.MEDIUM,
}
ACTIVE_STATES = (AlarmState.UNACKNOWLEDGED, AlarmState.ACKNOWLEDGED)


# ---------------------------------------------------------------- evaluation


def evaluate_step(
    session: Session,
    run_id: int,
    step: int,
    record: StepRecord,
    spec: ProcessSpec,
    *,
    now: datetime | None = None,
) -> None:
    """Judge one control step as it is stored, in the caller's transaction (no commit).

    Call it right after the step's rows are written. Steps stored before it that were
    not judged yet are judged first (up to MAX_STEPS_PER_PASS of them; an older
    backlog is skipped: it is history, not a present condition)."""
    now = now or utcnow()
    cursor = _cursor(session, run_id, now)
    if step <= cursor.last_step:
        return
    if step - cursor.last_step - 1 > MAX_STEPS_PER_PASS:
        cursor.last_step = step - 1 - MAX_STEPS_PER_PASS
    if step > cursor.last_step + 1:
        _judge(
            session,
            run_id,
            spec,
            _stored_steps(session, run_id, cursor.last_step + 1, step - 1),
            now,
        )
    gap = None
    if record.status == StepStatus.STALE or any(e.kind in STALE_EVENTS for e in record.events):
        # Only a stale step reports its gap: other steps save the query.
        previous = session.scalar(
            select(RunStep.time_s)
            .where(RunStep.run_id == run_id, RunStep.step < step)
            .order_by(RunStep.step.desc())
            .limit(1)
        )
        gap = None if previous is None else float(record.time_s) - previous
    _judge(session, run_id, spec, [StepView.of(step, record, gap)], now)
    cursor.last_step, cursor.last_seen_at = step, now


def refresh(session: Session, *, now: datetime | None = None, run_id: int | None = None) -> None:
    """Bring alarms up to date: judge steps stored since each loop's cursor, raise stale
    data for silent running loops, end the points of stopped loops, expire shelving.
    Committed; a concurrent refresh that got there first makes this one a no-op."""
    now = now or utcnow()
    try:
        for run in _loops_to_judge(session, run_id):
            _catch_up(session, run, now)
        _expire_shelving(session, now)
        session.commit()
    except IntegrityError:
        session.rollback()  # another refresh created the same cursor or point meanwhile
    except BaseException:
        session.rollback()
        raise


def _loops_to_judge(session: Session, run_id: int | None) -> list[Run]:
    query = (
        select(Run)
        .outerjoin(AlarmCursor, AlarmCursor.run_id == Run.id)
        .where(
            Run.kind == RunKind.CONTROL,
            Run.status.in_([RunStatus.RUNNING, RunStatus.STOPPED]),
            (AlarmCursor.run_id.is_(None)) | (AlarmCursor.closed.is_(False)),
        )
        .order_by(Run.id)
    )
    if run_id is not None:
        query = query.where(Run.id == run_id)
    return list(session.scalars(query))


def _catch_up(session: Session, run: Run, now: datetime) -> None:
    latest = session.scalar(
        select(RunStep.step).where(RunStep.run_id == run.id).order_by(RunStep.step.desc()).limit(1)
    )
    running = run.status == RunStatus.RUNNING
    # A loop judged for the first time has been silent since it started, at most.
    cursor = _cursor(session, run.id, as_utc(run.started_at), create=running)
    if cursor is None:  # a loop that ended before its alarms were ever judged: history
        session.add(
            AlarmCursor(
                run_id=run.id,
                last_step=-1 if latest is None else latest,
                last_seen_at=now,
                closed=True,
            )
        )
        return
    spec = spec_of(run.process)
    if latest is not None and latest > cursor.last_step:
        last = min(latest, cursor.last_step + MAX_STEPS_PER_PASS)
        _judge(
            session, run.id, spec, _stored_steps(session, run.id, cursor.last_step + 1, last), now
        )
        cursor.last_step, cursor.last_seen_at = last, now
    if running:
        _check_silence(session, run, spec, cursor, now)
    elif latest is None or cursor.last_step >= latest:
        _end_loop(session, run.id, now, f"loop {run.status}")
        cursor.closed = True


def _cursor(
    session: Session, run_id: int, seen_at: datetime, create: bool = True
) -> AlarmCursor | None:
    # Locked: the step path and readers judge a loop's steps one at a time, in order.
    cursor = session.scalars(
        select(AlarmCursor).where(AlarmCursor.run_id == run_id).with_for_update()
    ).one_or_none()
    if cursor is None and create:
        cursor = AlarmCursor(run_id=run_id, last_step=-1, last_seen_at=seen_at, closed=False)
        session.add(cursor)
        session.flush()
    return cursor


def _judge(
    session: Session, run_id: int, spec: ProcessSpec, views: Iterable[StepView], now: datetime
) -> None:
    points = {
        (a.tag, a.kind): a for a in session.scalars(select(Alarm).where(Alarm.run_id == run_id))
    }
    for view in views:
        present = {(c.tag, c.kind): c for c in step_conditions(spec, view)}
        for key, cond in present.items():
            alarm = points.get(key)
            if alarm is None:
                alarm = points[key] = new_point(session, run_id, cond, view, now)
            activate(session, alarm, cond, view, now)
        for (tag, kind), alarm in points.items():
            judged = tag == LOOP or tag in view.sensors
            if alarm.active and (tag, kind) not in present and judged:
                alarm.clear_streak += 1
                if alarm.clear_streak >= CLEAR_AFTER_STEPS:
                    deactivate(
                        session,
                        alarm,
                        now,
                        view.step,
                        f"condition absent for {CLEAR_AFTER_STEPS} steps",
                    )


def new_point(
    session: Session, run_id: int, cond: Condition, view: StepView, now: datetime
) -> Alarm:
    alarm = Alarm(
        run_id=run_id,
        tag=cond.tag,
        kind=str(cond.kind),
        priority=str(PRIORITY[cond.kind]),
        state=AlarmState.NORMAL,
        active=False,
        message=cond.message,
        unit=cond.unit,
        step=view.step,
        time_s=view.time_s,
        raised_at=now,
        clear_streak=0,
        updated_at=now,
    )
    session.add(alarm)
    session.flush()
    return alarm


def _check_silence(
    session: Session, run: Run, spec: ProcessSpec, cursor: AlarmCursor, now: datetime
) -> None:
    # When the step path stamps arrivals (runs.last_step_at) that is exact; else the
    # cursor's first sight of the newest step, which is never earlier than its arrival.
    seen = run.last_step_at if run.last_step_at is not None else cursor.last_seen_at
    silent_s = (now - as_utc(seen)).total_seconds()
    run_id = run.id
    limit_s = STALE_AFTER_PERIODS * spec.sample_period_s
    if silent_s <= limit_s:
        return
    time_s = (
        session.scalar(
            select(RunStep.time_s).where(RunStep.run_id == run_id, RunStep.step == cursor.last_step)
        )
        or 0.0
    )
    view = StepView(max(cursor.last_step, 0), time_s, StepStatus.STALE, {})
    cond = Condition(
        LOOP,
        AlarmKind.STALE_DATA,
        f"no step stored for {silent_s:.0f} s (limit {limit_s:g} s, "
        f"{STALE_AFTER_PERIODS:g} sample periods)",
        silent_s,
        "s",
    )
    points = {
        (a.tag, a.kind): a
        for a in session.scalars(
            select(Alarm).where(Alarm.run_id == run_id, Alarm.kind == AlarmKind.STALE_DATA)
        )
    }
    alarm = points.get((LOOP, AlarmKind.STALE_DATA)) or new_point(session, run_id, cond, view, now)
    activate(session, alarm, cond, view, now)


def _end_loop(session: Session, run_id: int, now: datetime, why: str) -> None:
    """A stopped loop's conditions are no longer measured: its active points clear."""
    for alarm in session.scalars(
        select(Alarm).where(Alarm.run_id == run_id, Alarm.active.is_(True))
    ):
        deactivate(session, alarm, now, None, why)


def _expire_shelving(session: Session, now: datetime) -> None:
    for alarm in session.scalars(select(Alarm).where(Alarm.state == AlarmState.SHELVED)):
        if alarm.shelved_until is not None and as_utc(alarm.shelved_until) <= now:
            end_shelving(session, alarm, now, "shelve_expired", None)


def _stored_steps(session: Session, run_id: int, first: int, last: int) -> list[StepView]:
    """Steps first..last as stored, with the gap to the step before each."""
    rows = session.execute(
        select(RunStep.step, RunStep.time_s, RunStep.status)
        .where(RunStep.run_id == run_id, RunStep.step.between(first - 1, last))
        .order_by(RunStep.step)
    ).all()
    channels: dict[str, dict[int, dict[str, float]]] = {Channel.SENSOR: {}, Channel.SETPOINT: {}}
    for channel, tag, step, value in values_between(session, run_id, first, last, list(channels)):
        channels[channel].setdefault(step, {})[tag] = value
    events: dict[int, list[tuple[str, str, str | None]]] = {}
    for step, kind, message, tag in session.execute(
        select(RunEvent.step, RunEvent.kind, RunEvent.message, RunEvent.tag)
        .where(RunEvent.run_id == run_id, RunEvent.step.between(first, last))
        .order_by(RunEvent.step, RunEvent.id)
    ):
        events.setdefault(step, []).append((kind, message, tag))
    views, previous = [], None
    for row in rows:
        if row.step >= first:
            gap = None if previous is None else row.time_s - previous
            views.append(
                StepView(
                    row.step,
                    row.time_s,
                    row.status,
                    channels[Channel.SENSOR].get(row.step, {}),
                    channels[Channel.SETPOINT].get(row.step, {}),
                    events.get(row.step, []),
                    gap,
                )
            )
        previous = row.time_s
    return views


# ---------------------------------------------------------------- reading


def list_alarms(
    session: Session,
    *,
    state: str | None = None,
    run_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
    now: datetime | None = None,
) -> list[Alarm]:
    """Alarms, newest raised first, after a refresh; optionally one state or one loop."""
    if state is not None and state not in {s.value for s in AlarmState}:
        known = ", ".join(s.value for s in AlarmState)
        raise Invalid(f"unknown alarm state '{state}' (one of: {known})")
    if run_id is not None and session.get(Run, run_id) is None:
        raise NotFound(f"unknown run id {run_id}")
    refresh(session, now=now, run_id=run_id)
    query = (
        select(Alarm).order_by(Alarm.raised_at.desc(), Alarm.id.desc()).limit(limit).offset(offset)
    )
    if state is not None:
        query = query.where(Alarm.state == state)
    if run_id is not None:
        query = query.where(Alarm.run_id == run_id)
    return list(session.scalars(query))
