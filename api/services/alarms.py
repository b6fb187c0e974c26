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

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import Conflict, Invalid, NotFound
from api.orm import (
    Alarm,
    AlarmCursor,
    AlarmEvent,
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
from api.services.audit import Actor, record
from api.services.processes import spec_of
from api.services.runs import values_between
from twin.records import FALLBACK_REASONS, EventKind, StepRecord, StepStatus
from twin.spec import ProcessSpec, Tag

APPROACH_FRACTION = 0.1  # of a sensor's operating span
CLEAR_AFTER_STEPS = 3  # steps without the condition before a point returns to normal
STALE_AFTER_PERIODS = 3.0  # sample periods without a step before a running loop is stale
MAX_SHELVE_MINUTES = 24 * 60.0  # ISA-18.2: shelving is always time-limited
MAX_STEPS_PER_PASS = 5_000  # steps of one loop judged per refresh (a backlog takes several)
LOOP = ""  # the tag of a point that belongs to the whole loop

PRIORITY = {
    AlarmKind.LIMIT_VIOLATION: AlarmPriority.CRITICAL,
    AlarmKind.STALE_DATA: AlarmPriority.HIGH,
    AlarmKind.LIMIT_APPROACH: AlarmPriority.MEDIUM,
    AlarmKind.FALLBACK: AlarmPriority.MEDIUM,
}
STALE_EVENTS = ("stale_data", "missing_data")
ACTIVE_STATES = (AlarmState.UNACKNOWLEDGED, AlarmState.ACKNOWLEDGED)


# ---------------------------------------------------------------- conditions (pure)


@dataclass(frozen=True)
class StepView:
    """What alarm evaluation reads of one stored step."""

    step: int
    time_s: float
    status: str
    sensors: Mapping[str, float]
    setpoints: Mapping[str, float] = field(default_factory=dict)
    events: Sequence[tuple[str, str, str | None]] = ()  # (kind, message, tag)
    gap_s: float | None = None  # seconds since the previous step (loop time)

    @classmethod
    def of(cls, step: int, record: StepRecord, gap_s: float | None) -> StepView:
        return cls(step, float(record.time_s), str(record.status),
                   _finite(record.measurements), _finite(record.setpoints),
                   [(e.kind, e.message, e.tag) for e in record.events], gap_s)


@dataclass(frozen=True)
class Condition:
    """An alarm condition present in a step; `value` in `unit`, `direction` says which
    way is worse (+1: larger values, -1: smaller) for `worst_value`."""

    tag: str
    kind: AlarmKind
    message: str
    value: float | None = None
    unit: str = ""
    direction: int = 1


def approach_band(tag: Tag, setpoint: float | None = None,
                  fraction: float = APPROACH_FRACTION) -> float | None:
    """Distance to a limit (tag unit) inside which an approach alarm is raised."""
    if tag.low is not None and tag.high is not None:
        return fraction * (tag.high - tag.low)
    limit = tag.high if tag.high is not None else tag.low
    reference = tag.nominal if tag.nominal is not None else setpoint
    if limit is None or reference is None or reference == limit:
        return None
    return fraction * abs(limit - reference)


def step_conditions(spec: ProcessSpec, view: StepView,
                    fraction: float = APPROACH_FRACTION) -> list[Condition]:
    """Every alarm condition present in one step."""
    found = []
    for tag in spec.sensors:
        value = view.sensors.get(tag.name)
        if value is not None:
            found.extend(_limit_conditions(tag, value, view.setpoints.get(tag.name), fraction))
    if view.status == StepStatus.FALLBACK and not _only_warming_up(view):
        why = [f"{kind}: {message}" for kind, message, _ in view.events
               if kind not in STALE_EVENTS]
        found.append(Condition(LOOP, AlarmKind.FALLBACK,
                               "; ".join(why) or "the controller fell back"))
    stale = [message for kind, message, _ in view.events if kind in STALE_EVENTS]
    if view.status == StepStatus.STALE or stale:
        found.append(Condition(LOOP, AlarmKind.STALE_DATA,
                               "; ".join(stale) or "stale data: actuators held",
                               view.gap_s, "s"))
    return found


def _only_warming_up(view: StepView) -> bool:
    """A loop still filling its history runs the baseline by design: an event on the run,
    not an alarm (ISA-18.2: an alarm needs an operator response, and a new loop needs none)."""
    reasons = {kind for kind, _, _ in view.events if kind in FALLBACK_REASONS}
    return reasons == {EventKind.WARMING_UP}


def _limit_conditions(tag: Tag, value: float, setpoint: float | None,
                      fraction: float) -> list[Condition]:
    sides = [(tag.high - value, "high", tag.high, 1)] if tag.high is not None else []
    if tag.low is not None:
        sides.append((value - tag.low, "low", tag.low, -1))
    if not sides:
        return []
    margin, side, limit, direction = min(sides, key=lambda s: s[0])
    reading = f"{tag.name} {value:.6g} {tag.unit}"
    if margin < 0:
        word = "above" if side == "high" else "below"
        return [Condition(tag.name, AlarmKind.LIMIT_VIOLATION,
                          f"{reading} {word} its {side} limit {limit:g} {tag.unit}",
                          value, tag.unit, direction),
                _approach(tag, reading, side, limit, direction, value, margin)]
    band = approach_band(tag, setpoint, fraction)
    if band is not None and margin < band:
        return [_approach(tag, reading, side, limit, direction, value, margin, band)]
    return []


def _approach(tag: Tag, reading: str, side: str, limit: float, direction: int,
              value: float, margin: float, band: float | None = None) -> Condition:
    detail = f" (approach band {band:.3g} {tag.unit})" if band is not None else ""
    text = (f"{reading} is past its {side} limit {limit:g} {tag.unit}" if margin < 0 else
            f"{reading} within {margin:.3g} {tag.unit} of its {side} limit "
            f"{limit:g} {tag.unit}{detail}")
    return Condition(tag.name, AlarmKind.LIMIT_APPROACH, text, value, tag.unit, direction)


def _finite(values: Mapping[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


# ---------------------------------------------------------------- state machine


def _log(session: Session, alarm: Alarm, action: str, before: str, now: datetime, *,
         step: int | None = None, value: float | None = None, actor: Actor | None = None,
         note: str = "") -> None:
    session.add(AlarmEvent(alarm_id=alarm.id, at=now, action=action, from_state=before,
                           to_state=alarm.state, step=step, value=value,
                           actor=actor.name if actor else None, note=note))
    alarm.updated_at = now


def _activate(session: Session, alarm: Alarm, cond: Condition, view: StepView,
              now: datetime) -> None:
    alarm.clear_streak = 0
    if alarm.active:
        if cond.value is not None and (alarm.worst_value is None or
                                       cond.direction * (cond.value - alarm.worst_value) > 0):
            alarm.worst_value = cond.value
        return
    before = alarm.state
    alarm.active, alarm.message, alarm.unit = True, cond.message, cond.unit
    alarm.value = alarm.worst_value = cond.value
    alarm.step, alarm.time_s, alarm.raised_at, alarm.cleared_at = view.step, view.time_s, now, None
    if alarm.state != AlarmState.SHELVED:
        alarm.state = AlarmState.UNACKNOWLEDGED
        alarm.acknowledged_at = alarm.acknowledged_by = None
    _log(session, alarm, "raised", before, now, step=view.step, value=cond.value,
         note=cond.message)


def _deactivate(session: Session, alarm: Alarm, now: datetime, step: int | None,
                note: str) -> None:
    before = alarm.state
    alarm.active, alarm.cleared_at, alarm.clear_streak = False, now, 0
    if alarm.state == AlarmState.UNACKNOWLEDGED:
        alarm.state = AlarmState.RTN_UNACKNOWLEDGED
    elif alarm.state == AlarmState.ACKNOWLEDGED:
        alarm.state = AlarmState.NORMAL
    _log(session, alarm, "cleared", before, now, step=step, note=note)


def _unshelve(session: Session, alarm: Alarm, now: datetime, action: str,
              actor: Actor | None) -> None:
    before = alarm.state
    alarm.state = AlarmState.UNACKNOWLEDGED if alarm.active else AlarmState.NORMAL
    alarm.acknowledged_at = alarm.acknowledged_by = None
    note = f"shelved by {alarm.shelved_by} until {_aware(alarm.shelved_until).isoformat()}"
    alarm.shelved_at = alarm.shelved_by = alarm.shelved_until = alarm.shelve_reason = None
    _log(session, alarm, action, before, now, actor=actor, note=note)


# ---------------------------------------------------------------- evaluation


def evaluate_step(session: Session, run_id: int, step: int, record: StepRecord,
                  spec: ProcessSpec, *, now: datetime | None = None) -> None:
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
        _judge(session, run_id, spec, _stored_steps(session, run_id, cursor.last_step + 1,
                                                    step - 1), now)
    gap = None
    if record.status == StepStatus.STALE or any(e.kind in STALE_EVENTS for e in record.events):
        # Only a stale step reports its gap: other steps save the query.
        previous = session.scalar(select(RunStep.time_s).where(
            RunStep.run_id == run_id, RunStep.step < step)
            .order_by(RunStep.step.desc()).limit(1))
        gap = None if previous is None else float(record.time_s) - previous
    _judge(session, run_id, spec, [StepView.of(step, record, gap)], now)
    cursor.last_step, cursor.last_seen_at = step, now


def refresh(session: Session, *, now: datetime | None = None,
            run_id: int | None = None) -> None:
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
    query = (select(Run).outerjoin(AlarmCursor, AlarmCursor.run_id == Run.id)
             .where(Run.kind == RunKind.CONTROL,
                    Run.status.in_([RunStatus.RUNNING, RunStatus.STOPPED]),
                    (AlarmCursor.run_id.is_(None)) | (AlarmCursor.closed.is_(False)))
             .order_by(Run.id))
    if run_id is not None:
        query = query.where(Run.id == run_id)
    return list(session.scalars(query))


def _catch_up(session: Session, run: Run, now: datetime) -> None:
    latest = session.scalar(select(RunStep.step).where(RunStep.run_id == run.id)
                            .order_by(RunStep.step.desc()).limit(1))
    running = run.status == RunStatus.RUNNING
    # A loop judged for the first time has been silent since it started, at most.
    cursor = _cursor(session, run.id, _aware(run.started_at), create=running)
    if cursor is None:  # a loop that ended before its alarms were ever judged: history
        session.add(AlarmCursor(run_id=run.id, last_step=-1 if latest is None else latest,
                                last_seen_at=now, closed=True))
        return
    spec = spec_of(run.process)
    if latest is not None and latest > cursor.last_step:
        last = min(latest, cursor.last_step + MAX_STEPS_PER_PASS)
        _judge(session, run.id, spec, _stored_steps(session, run.id, cursor.last_step + 1,
                                                    last), now)
        cursor.last_step, cursor.last_seen_at = last, now
    if running:
        _check_silence(session, run, spec, cursor, now)
    elif latest is None or cursor.last_step >= latest:
        _end_loop(session, run.id, now, f"loop {run.status}")
        cursor.closed = True


def _cursor(session: Session, run_id: int, seen_at: datetime,
            create: bool = True) -> AlarmCursor | None:
    # Locked: the step path and readers judge a loop's steps one at a time, in order.
    cursor = session.scalars(select(AlarmCursor).where(AlarmCursor.run_id == run_id)
                             .with_for_update()).one_or_none()
    if cursor is None and create:
        cursor = AlarmCursor(run_id=run_id, last_step=-1, last_seen_at=seen_at, closed=False)
        session.add(cursor)
        session.flush()
    return cursor


def _judge(session: Session, run_id: int, spec: ProcessSpec, views: Iterable[StepView],
           now: datetime) -> None:
    points = {(a.tag, a.kind): a for a in
              session.scalars(select(Alarm).where(Alarm.run_id == run_id))}
    for view in views:
        present = {(c.tag, c.kind): c for c in step_conditions(spec, view)}
        for key, cond in present.items():
            alarm = points.get(key)
            if alarm is None:
                alarm = points[key] = _new_point(session, run_id, cond, view, now)
            _activate(session, alarm, cond, view, now)
        for (tag, kind), alarm in points.items():
            judged = tag == LOOP or tag in view.sensors
            if alarm.active and (tag, kind) not in present and judged:
                alarm.clear_streak += 1
                if alarm.clear_streak >= CLEAR_AFTER_STEPS:
                    _deactivate(session, alarm, now, view.step,
                                f"condition absent for {CLEAR_AFTER_STEPS} steps")


def _new_point(session: Session, run_id: int, cond: Condition, view: StepView,
               now: datetime) -> Alarm:
    alarm = Alarm(run_id=run_id, tag=cond.tag, kind=str(cond.kind),
                  priority=str(PRIORITY[cond.kind]), state=AlarmState.NORMAL, active=False,
                  message=cond.message, unit=cond.unit, step=view.step, time_s=view.time_s,
                  raised_at=now, clear_streak=0, updated_at=now)
    session.add(alarm)
    session.flush()
    return alarm


def _check_silence(session: Session, run: Run, spec: ProcessSpec, cursor: AlarmCursor,
                   now: datetime) -> None:
    # When the step path stamps arrivals (runs.last_step_at) that is exact; else the
    # cursor's first sight of the newest step, which is never earlier than its arrival.
    seen = run.last_step_at if run.last_step_at is not None else cursor.last_seen_at
    silent_s = (now - _aware(seen)).total_seconds()
    run_id = run.id
    limit_s = STALE_AFTER_PERIODS * spec.sample_period_s
    if silent_s <= limit_s:
        return
    time_s = session.scalar(select(RunStep.time_s).where(
        RunStep.run_id == run_id, RunStep.step == cursor.last_step)) or 0.0
    view = StepView(max(cursor.last_step, 0), time_s, StepStatus.STALE, {})
    cond = Condition(LOOP, AlarmKind.STALE_DATA,
                     f"no step stored for {silent_s:.0f} s (limit {limit_s:g} s, "
                     f"{STALE_AFTER_PERIODS:g} sample periods)", silent_s, "s")
    points = {(a.tag, a.kind): a for a in session.scalars(
        select(Alarm).where(Alarm.run_id == run_id, Alarm.kind == AlarmKind.STALE_DATA))}
    alarm = points.get((LOOP, AlarmKind.STALE_DATA)) or _new_point(session, run_id, cond,
                                                                   view, now)
    _activate(session, alarm, cond, view, now)


def _end_loop(session: Session, run_id: int, now: datetime, why: str) -> None:
    """A stopped loop's conditions are no longer measured: its active points clear."""
    for alarm in session.scalars(select(Alarm).where(Alarm.run_id == run_id,
                                                     Alarm.active.is_(True))):
        _deactivate(session, alarm, now, None, why)


def _expire_shelving(session: Session, now: datetime) -> None:
    for alarm in session.scalars(select(Alarm).where(Alarm.state == AlarmState.SHELVED)):
        if alarm.shelved_until is not None and _aware(alarm.shelved_until) <= now:
            _unshelve(session, alarm, now, "shelve_expired", None)


def _stored_steps(session: Session, run_id: int, first: int, last: int) -> list[StepView]:
    """Steps first..last as stored, with the gap to the step before each."""
    rows = session.execute(
        select(RunStep.step, RunStep.time_s, RunStep.status)
        .where(RunStep.run_id == run_id, RunStep.step.between(first - 1, last))
        .order_by(RunStep.step)).all()
    channels: dict[str, dict[int, dict[str, float]]] = {Channel.SENSOR: {}, Channel.SETPOINT: {}}
    for channel, tag, step, value in values_between(session, run_id, first, last,
                                                    list(channels)):
        channels[channel].setdefault(step, {})[tag] = value
    events: dict[int, list[tuple[str, str, str | None]]] = {}
    for step, kind, message, tag in session.execute(
            select(RunEvent.step, RunEvent.kind, RunEvent.message, RunEvent.tag)
            .where(RunEvent.run_id == run_id, RunEvent.step.between(first, last))
            .order_by(RunEvent.step, RunEvent.id)):
        events.setdefault(step, []).append((kind, message, tag))
    views, previous = [], None
    for row in rows:
        if row.step >= first:
            gap = None if previous is None else row.time_s - previous
            views.append(StepView(row.step, row.time_s, row.status,
                                  channels[Channel.SENSOR].get(row.step, {}),
                                  channels[Channel.SETPOINT].get(row.step, {}),
                                  events.get(row.step, []), gap))
        previous = row.time_s
    return views


# ---------------------------------------------------------------- operator actions


def acknowledge(session: Session, alarm_id: int, actor: Actor, *,
                now: datetime | None = None) -> Alarm:
    """unacknowledged -> acknowledged, rtn_unacknowledged -> normal. Acknowledging an
    acknowledged alarm again changes nothing; a normal or shelved one is a Conflict."""
    now = now or utcnow()
    try:
        alarm = _locked(session, alarm_id, now)
        if alarm.state == AlarmState.ACKNOWLEDGED:
            session.commit()
            return alarm
        if alarm.state not in (AlarmState.UNACKNOWLEDGED, AlarmState.RTN_UNACKNOWLEDGED):
            why = ("unshelve it first" if alarm.state == AlarmState.SHELVED
                   else "nothing to acknowledge")
            raise Conflict(f"alarm {alarm_id} is {alarm.state}: {why}")
        before = alarm.state
        alarm.state = (AlarmState.ACKNOWLEDGED if before == AlarmState.UNACKNOWLEDGED
                       else AlarmState.NORMAL)
        alarm.acknowledged_at, alarm.acknowledged_by = now, actor.name
        _log(session, alarm, "acknowledged", before, now, actor=actor)
        record(session, actor, "alarm.acknowledge", f"alarm:{alarm_id}",
               {"from": before, "to": alarm.state})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return alarm


def shelve(session: Session, alarm_id: int, actor: Actor, minutes: float, reason: str, *,
           now: datetime | None = None) -> Alarm:
    """Hide an alarm for `minutes` (0 < minutes <= MAX_SHELVE_MINUTES) with a reason."""
    now = now or utcnow()
    if not isinstance(minutes, int | float) or not math.isfinite(minutes) or not (
            0 < minutes <= MAX_SHELVE_MINUTES):
        raise Invalid(f"minutes must be a number in (0, {MAX_SHELVE_MINUTES:g}], "
                      f"got {minutes!r}")
    reason = (reason or "").strip()
    if not reason:
        raise Invalid("a reason is needed to shelve an alarm")
    try:
        alarm = _locked(session, alarm_id, now)
        if alarm.state == AlarmState.SHELVED:
            until = _aware(alarm.shelved_until).isoformat()
            raise Conflict(f"alarm {alarm_id} is already shelved until {until} by "
                           f"{alarm.shelved_by}; unshelve it first")
        before = alarm.state
        alarm.state = AlarmState.SHELVED
        alarm.shelved_at, alarm.shelved_by, alarm.shelve_reason = now, actor.name, reason
        alarm.shelved_until = now + timedelta(minutes=minutes)
        _log(session, alarm, "shelved", before, now, actor=actor,
             note=f"{minutes:g} min: {reason}")
        record(session, actor, "alarm.shelve", f"alarm:{alarm_id}",
               {"from": before, "minutes": minutes, "reason": reason})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return alarm


def unshelve(session: Session, alarm_id: int, actor: Actor, *,
             now: datetime | None = None) -> Alarm:
    """shelved -> unacknowledged (condition present) or normal; else a Conflict."""
    now = now or utcnow()
    try:
        alarm = _locked(session, alarm_id, now)
        if alarm.state != AlarmState.SHELVED:
            raise Conflict(f"alarm {alarm_id} is {alarm.state}, not shelved")
        _unshelve(session, alarm, now, "unshelved", actor)
        record(session, actor, "alarm.unshelve", f"alarm:{alarm_id}", {"to": alarm.state})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return alarm


def _locked(session: Session, alarm_id: int, now: datetime) -> Alarm:
    """The alarm, locked for the change, with an expired shelving already ended (that
    is committed on its own: it stands even if the operator's request is refused)."""
    alarm = _select_locked(session, alarm_id)
    if (alarm.state == AlarmState.SHELVED and alarm.shelved_until is not None
            and _aware(alarm.shelved_until) <= now):
        _unshelve(session, alarm, now, "shelve_expired", None)
        session.commit()
        alarm = _select_locked(session, alarm_id)
    return alarm


def _select_locked(session: Session, alarm_id: int) -> Alarm:
    alarm = session.scalars(select(Alarm).where(Alarm.id == alarm_id).with_for_update()
                            .execution_options(populate_existing=True)).one_or_none()
    if alarm is None:
        raise NotFound(f"unknown alarm id {alarm_id}")
    return alarm


# ---------------------------------------------------------------- reading


def list_alarms(session: Session, *, state: str | None = None, run_id: int | None = None,
                limit: int = 100, offset: int = 0, now: datetime | None = None,
                ) -> list[Alarm]:
    """Alarms, newest raised first, after a refresh; optionally one state or one loop."""
    if state is not None and state not in {s.value for s in AlarmState}:
        known = ", ".join(s.value for s in AlarmState)
        raise Invalid(f"unknown alarm state '{state}' (one of: {known})")
    if run_id is not None and session.get(Run, run_id) is None:
        raise NotFound(f"unknown run id {run_id}")
    refresh(session, now=now, run_id=run_id)
    query = (select(Alarm).order_by(Alarm.raised_at.desc(), Alarm.id.desc())
             .limit(limit).offset(offset))
    if state is not None:
        query = query.where(Alarm.state == state)
    if run_id is not None:
        query = query.where(Alarm.run_id == run_id)
    return list(session.scalars(query))


def get_alarm(session: Session, alarm_id: int) -> Alarm:
    alarm = session.get(Alarm, alarm_id)
    if alarm is None:
        raise NotFound(f"unknown alarm id {alarm_id}")
    return alarm


def alarm_history(session: Session, alarm_id: int) -> list[AlarmEvent]:
    get_alarm(session, alarm_id)
    return list(session.scalars(select(AlarmEvent).where(AlarmEvent.alarm_id == alarm_id)
                                .order_by(AlarmEvent.id)))


def process_names(session: Session, run_ids: Iterable[int]) -> dict[int, str]:
    """run id -> its process's name, for listing alarms."""
    ids = sorted(set(run_ids))
    if not ids:
        return {}
    return {run.id: run.process.name
            for run in session.scalars(select(Run).where(Run.id.in_(ids)))}


def _aware(moment: datetime | None) -> datetime:
    """SQLite hands timestamps back without their zone; they are stored as UTC."""
    assert moment is not None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
