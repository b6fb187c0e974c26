"""Alarms (ISA-18.2): raising from loop steps, the state machine, operator actions and
their users, shelving with expiry, roles, and the alarm page.

Every database test runs on SQLite and (with TWIN_TEST_POSTGRES_URL) PostgreSQL.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import services
from api.errors import Conflict, Invalid, NotFound
from api.orm import (
    Alarm,
    AlarmCursor,
    AlarmEvent,
    AlarmKind,
    AlarmState,
    AuditEntry,
    Role,
    RunStatus,
    utcnow,
)
from api.services import alarms
from api.services.audit import Actor
from api.services.runs import write_steps
from twin.records import SafetyEvent, StepRecord, StepStatus
from twin.spec import ProcessSpec

ALICE = Actor("alice", Role.OPERATOR)
BOB = Actor("bob", Role.OPERATOR)
DT = 6.0  # the CSTR's sample period, s
T_HIGH = 385.0  # the CSTR's reactor temperature limit, K
NORMAL_T = 350.0


def _record(
    k: int,
    t: float = NORMAL_T,
    *,
    status: StepStatus = StepStatus.OK,
    events: list[SafetyEvent] | None = None,
    time_s: float | None = None,
    missing_t: bool = False,
) -> StepRecord:
    measurements = {"Ca": 0.5, "Caf": 1.0, "Tf": 350.0}
    margins = {"Ca": 0.5}
    if not missing_t:
        measurements["T"], margins["T"] = t, T_HIGH - t
    return StepRecord(
        step=k,
        time_s=DT * k if time_s is None else time_s,
        measurements=measurements,
        setpoints={"T": NORMAL_T},
        actuators={"Tc": 300.0},
        status=status,
        events=events or [],
        margins=margins,
    )


class Loop:
    """A running control loop whose steps are stored and judged as the step path would."""

    def __init__(self, session: Session, spec: ProcessSpec, *, judge: bool = True) -> None:
        self.session, self.spec, self.judge = session, spec, judge
        self.run_id = services.create_run(
            session, kind="control", process="cstr", controller="twin/casadi", config={}
        ).id
        self.k = 0

    def step(self, record: StepRecord, now: datetime | None = None) -> None:
        write_steps(self.session, self.run_id, self.spec, [(self.k, record)])
        if self.judge:
            alarms.evaluate_step(self.session, self.run_id, self.k, record, self.spec, now=now)
        self.session.commit()
        self.k += 1

    def temperatures(self, values: list[float], now: datetime | None = None) -> None:
        for t in values:
            self.step(_record(self.k, t), now)


@pytest.fixture
def loop(session: Session, cstr_spec: ProcessSpec) -> Loop:
    return Loop(session, cstr_spec)


def _points(session: Session, run_id: int) -> dict[tuple[str, str], Alarm]:
    session.expire_all()
    return {
        (a.tag, a.kind): a for a in session.scalars(select(Alarm).where(Alarm.run_id == run_id))
    }


def _point(session: Session, run_id: int, kind: AlarmKind, tag: str = "T") -> Alarm:
    return _points(session, run_id)[(tag, kind)]


def _history(session: Session, alarm_id: int) -> list[tuple[str, str, str, str | None]]:
    return [
        (e.action, e.from_state, e.to_state, e.actor)
        for e in alarms.alarm_history(session, alarm_id)
    ]


def _count(session: Session, table: type) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(table)) or 0


# ---------------------------------------------------------------- raising


def test_an_alarm_is_raised_once_while_its_condition_lasts(session: Session, loop: Loop) -> None:
    band = alarms.approach_band(loop.spec.tag("T"))
    assert band == pytest.approx(alarms.APPROACH_FRACTION * (T_HIGH - NORMAL_T))
    near = T_HIGH - band / 2
    loop.temperatures([NORMAL_T, T_HIGH - 2 * band])
    assert _points(session, loop.run_id) == {}  # outside the band: nothing

    loop.temperatures([near, near + 0.1, T_HIGH + 1.0, T_HIGH + 2.0, T_HIGH + 1.5])
    points = _points(session, loop.run_id)
    assert set(points) == {("T", AlarmKind.LIMIT_APPROACH), ("T", AlarmKind.LIMIT_VIOLATION)}
    violation = points[("T", AlarmKind.LIMIT_VIOLATION)]
    approach = points[("T", AlarmKind.LIMIT_APPROACH)]
    assert (violation.state, violation.priority) == (AlarmState.UNACKNOWLEDGED, "critical")
    assert violation.value == T_HIGH + 1.0 and violation.worst_value == T_HIGH + 2.0
    assert violation.unit == "K" and violation.step == 4 and violation.time_s == 4 * DT
    assert "above its high limit 385 K" in violation.message
    assert approach.value == near and approach.step == 2 and approach.priority == "medium"
    # One "raised" each, not one per step.
    assert [a for a, *_ in _history(session, violation.id)] == ["raised"]
    assert [a for a, *_ in _history(session, approach.id)] == ["raised"]
    assert _count(session, Alarm) == 2


def test_a_low_limit_is_judged_on_its_own_side(session: Session, loop: Loop) -> None:
    low_ca = _record(0)
    low_ca.measurements["Ca"] = 0.01  # Ca's low limit is 0, its nominal 0.5 mol/L
    loop.step(low_ca)
    alarm = _point(session, loop.run_id, AlarmKind.LIMIT_APPROACH, "Ca")
    assert alarm.unit == "mol/L" and "low limit 0 mol/L" in alarm.message
    assert ("Ca", AlarmKind.LIMIT_VIOLATION) not in _points(session, loop.run_id)


def test_fallback_and_stale_steps_raise_loop_alarms(session: Session, loop: Loop) -> None:
    loop.step(
        _record(
            0,
            status=StepStatus.FALLBACK,
            events=[SafetyEvent("solver_failed", "solver failed: infeasible")],
        )
    )
    gap = 5 * DT
    loop.step(
        _record(
            1,
            time_s=gap,
            status=StepStatus.STALE,
            events=[SafetyEvent("stale_data", f"{gap:g} s since the previous sample")],
        )
    )
    points = _points(session, loop.run_id)
    fallback = points[("", AlarmKind.FALLBACK)]
    stale = points[("", AlarmKind.STALE_DATA)]
    assert "solver_failed: solver failed: infeasible" in fallback.message
    assert (stale.value, stale.unit, stale.priority) == (gap, "s", "high")
    assert f"{gap:g} s since the previous sample" in stale.message


def test_a_new_loop_warming_up_raises_no_alarm(session: Session, loop: Loop) -> None:
    """Warm-up is the baseline by design: an event on the run, never an alarm; a fallback
    for another reason while warming up still is one."""
    for k in range(4):
        loop.step(
            _record(
                k,
                status=StepStatus.FALLBACK,
                events=[
                    SafetyEvent("warming_up", f"warming up: {k + 1}/16 samples of history"),
                    SafetyEvent("clipped_bounds", "Tc clipped to its bounds", "Tc"),
                ],
            )
        )
    assert _points(session, loop.run_id) == {}
    loop.step(
        _record(
            4,
            status=StepStatus.FALLBACK,
            events=[
                SafetyEvent("warming_up", "warming up: 5/16 samples of history"),
                SafetyEvent("model_mismatch", "forecasts miss the plant"),
            ],
        )
    )
    fallback = _point(session, loop.run_id, AlarmKind.FALLBACK, tag="")
    assert fallback.active and "model_mismatch" in fallback.message


def test_the_off_delay_needs_consecutive_steps_without_the_condition(
    session: Session, loop: Loop
) -> None:
    loop.temperatures([T_HIGH + 1.0] + [NORMAL_T] * (alarms.CLEAR_AFTER_STEPS - 1))
    assert _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION).active
    loop.step(_record(loop.k, missing_t=True))  # no value: proves nothing either way
    assert _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION).active
    loop.temperatures([T_HIGH + 0.5])  # the condition is back: the count starts again
    loop.temperatures([NORMAL_T] * (alarms.CLEAR_AFTER_STEPS - 1))
    assert _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION).active
    loop.temperatures([NORMAL_T])
    alarm = _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION)
    assert not alarm.active and alarm.state == AlarmState.RTN_UNACKNOWLEDGED


def test_stored_steps_judged_later_give_the_same_alarms(
    session: Session, cstr_spec: ProcessSpec
) -> None:
    temperatures = [
        NORMAL_T,
        T_HIGH - 1,
        T_HIGH + 2,
        T_HIGH + 3,
        NORMAL_T,
        NORMAL_T,
        NORMAL_T,
        T_HIGH - 1,
    ]
    live, lazy = Loop(session, cstr_spec), Loop(session, cstr_spec, judge=False)
    now = utcnow()
    live.temperatures(temperatures, now)
    lazy.temperatures(temperatures)
    assert _points(session, lazy.run_id) == {}
    alarms.refresh(session, now=now)
    alarms.refresh(session, now=now)  # judging twice changes nothing

    def summary(run_id: int) -> dict[tuple[str, str], tuple]:
        return {
            key: (a.state, a.active, a.value, a.worst_value, a.step, a.message)
            for key, a in _points(session, run_id).items()
        }

    assert summary(lazy.run_id) == summary(live.run_id)
    assert len(summary(live.run_id)) == 2
    assert session.get(AlarmCursor, lazy.run_id).last_step == len(temperatures) - 1


def test_episodes_stored_whole_raise_no_alarms(session: Session, make_episode) -> None:
    episode = make_episode(n_steps=10)
    for step in episode.steps:
        step.measurements["T"], step.margins["T"] = T_HIGH + 5, -5.0
    services.store_episode(session, episode)
    alarms.refresh(session)
    assert _count(session, Alarm) == 0


# ---------------------------------------------------------------- the state machine


def test_isa_cycle_acknowledged_then_cleared(session: Session, loop: Loop) -> None:
    loop.temperatures([T_HIGH + 1])
    alarm = _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION)
    acked = alarms.acknowledge(session, alarm.id, ALICE)
    assert (acked.state, acked.acknowledged_by) == (AlarmState.ACKNOWLEDGED, "alice")
    assert acked.acknowledged_at is not None
    loop.temperatures([NORMAL_T] * alarms.CLEAR_AFTER_STEPS)
    alarm = _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION)
    assert (alarm.state, alarm.active) == (AlarmState.NORMAL, False)
    assert alarm.cleared_at is not None
    assert _history(session, alarm.id) == [
        ("raised", "normal", "unacknowledged", None),
        ("acknowledged", "unacknowledged", "acknowledged", "alice"),
        ("cleared", "acknowledged", "normal", None),
    ]


def test_isa_cycle_returned_to_normal_unacknowledged(session: Session, loop: Loop) -> None:
    loop.temperatures([T_HIGH + 1] + [NORMAL_T] * alarms.CLEAR_AFTER_STEPS)
    alarm = _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION)
    assert alarm.state == AlarmState.RTN_UNACKNOWLEDGED
    loop.temperatures([T_HIGH + 4])  # back before anyone acknowledged: unacknowledged again
    alarm = _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION)
    assert (alarm.state, alarm.value, alarm.step) == (
        AlarmState.UNACKNOWLEDGED,
        T_HIGH + 4,
        loop.k - 1,
    )
    loop.temperatures([NORMAL_T] * alarms.CLEAR_AFTER_STEPS)
    done = alarms.acknowledge(session, alarm.id, BOB)
    assert (done.state, done.acknowledged_by) == (AlarmState.NORMAL, "bob")
    assert [(a, b, c) for a, b, c, _ in _history(session, alarm.id)] == [
        ("raised", "normal", "unacknowledged"),
        ("cleared", "unacknowledged", "rtn_unacknowledged"),
        ("raised", "rtn_unacknowledged", "unacknowledged"),
        ("cleared", "unacknowledged", "rtn_unacknowledged"),
        ("acknowledged", "rtn_unacknowledged", "normal"),
    ]
    assert _count(session, Alarm) == 2  # the same point (and its approach), raised twice


def test_illegal_transitions_are_refused_and_change_nothing(session: Session, loop: Loop) -> None:
    loop.temperatures([T_HIGH + 1] + [NORMAL_T] * alarms.CLEAR_AFTER_STEPS)
    alarm = _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION)
    alarms.acknowledge(session, alarm.id, ALICE)  # rtn_unacknowledged -> normal
    before = (_count(session, AlarmEvent), _count(session, AuditEntry))
    with pytest.raises(Conflict, match="is normal: nothing to acknowledge"):
        alarms.acknowledge(session, alarm.id, ALICE)
    with pytest.raises(Conflict, match="not shelved"):
        alarms.unshelve(session, alarm.id, ALICE)
    for minutes in (float("nan"), float("inf"), -5.0, 0.0, alarms.MAX_SHELVE_MINUTES + 1):
        with pytest.raises(Invalid, match="minutes must be"):
            alarms.shelve(session, alarm.id, ALICE, minutes, "maintenance")
    with pytest.raises(Invalid, match="reason"):
        alarms.shelve(session, alarm.id, ALICE, 10, "   ")
    with pytest.raises(NotFound, match="unknown alarm id 4242"):
        alarms.acknowledge(session, 4242, ALICE)
    assert (_count(session, AlarmEvent), _count(session, AuditEntry)) == before
    assert _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION).state == AlarmState.NORMAL

    shelved = alarms.shelve(session, alarm.id, ALICE, 10, "sensor maintenance")
    assert shelved.state == AlarmState.SHELVED
    with pytest.raises(Conflict, match="unshelve it first"):
        alarms.acknowledge(session, alarm.id, ALICE)
    with pytest.raises(Conflict, match="already shelved"):
        alarms.shelve(session, alarm.id, BOB, 10, "again")
    assert _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION).shelved_by == "alice"


def test_acknowledging_twice_is_harmless_and_recorded_once(session: Session, loop: Loop) -> None:
    loop.temperatures([T_HIGH + 1])
    alarm = _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION)
    alarms.acknowledge(session, alarm.id, ALICE)
    again = alarms.acknowledge(session, alarm.id, BOB)
    assert (again.state, again.acknowledged_by) == (AlarmState.ACKNOWLEDGED, "alice")
    session.expire_all()
    audit = list(session.scalars(select(AuditEntry)))
    assert [(e.actor, e.action, e.target) for e in audit] == [
        ("alice", "alarm.acknowledge", f"alarm:{alarm.id}")
    ]


def test_a_condition_while_shelved_shows_after_unshelving(session: Session, loop: Loop) -> None:
    loop.temperatures([T_HIGH - 1])  # an approach, so the point exists
    alarm = _point(session, loop.run_id, AlarmKind.LIMIT_APPROACH)
    alarms.acknowledge(session, alarm.id, ALICE)
    alarms.shelve(session, alarm.id, ALICE, 30, "known sensor drift")
    loop.temperatures([T_HIGH - 1, T_HIGH - 0.5])
    shelved = _point(session, loop.run_id, AlarmKind.LIMIT_APPROACH)
    assert (shelved.state, shelved.active) == (AlarmState.SHELVED, True)
    back = alarms.unshelve(session, alarm.id, BOB)
    # Present on return: annunciated again, the earlier acknowledgement does not carry over.
    assert (back.state, back.acknowledged_by, back.shelved_by) == (
        AlarmState.UNACKNOWLEDGED,
        None,
        None,
    )
    actors = [(a, actor) for a, _, _, actor in _history(session, alarm.id)]
    assert actors[-2:] == [("shelved", "alice"), ("unshelved", "bob")]


def test_shelving_expires_on_the_clock(session: Session, loop: Loop) -> None:
    t0 = utcnow()
    loop.temperatures([T_HIGH + 1], now=t0)
    violation = _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION)
    approach = _point(session, loop.run_id, AlarmKind.LIMIT_APPROACH)
    for alarm in (violation, approach):
        alarms.shelve(session, alarm.id, ALICE, 10, "trip test", now=t0)
    shelved = _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION)
    assert shelved.shelved_until is not None and shelved.shelve_reason == "trip test"
    # While shelved, both conditions clear; then only the approach returns.
    loop.temperatures([NORMAL_T] * alarms.CLEAR_AFTER_STEPS, now=t0 + timedelta(minutes=1))
    loop.temperatures([T_HIGH - 1], now=t0 + timedelta(minutes=9))
    still = alarms.list_alarms(
        session, state="shelved", run_id=loop.run_id, now=t0 + timedelta(minutes=9.9)
    )
    assert {a.kind for a in still} == {AlarmKind.LIMIT_VIOLATION, AlarmKind.LIMIT_APPROACH}
    found = alarms.list_alarms(session, run_id=loop.run_id, now=t0 + timedelta(minutes=10.1))
    states = {(a.tag, a.kind): a.state for a in found}
    assert states[("T", AlarmKind.LIMIT_VIOLATION)] == AlarmState.NORMAL
    assert states[("T", AlarmKind.LIMIT_APPROACH)] == AlarmState.UNACKNOWLEDGED
    assert _history(session, approach.id)[-1] == (
        "shelve_expired",
        "shelved",
        "unacknowledged",
        None,
    )
    assert _history(session, violation.id)[-1] == ("shelve_expired", "shelved", "normal", None)


def test_shelving_that_expires_on_a_clear_condition_returns_to_normal(
    session: Session, loop: Loop
) -> None:
    t0 = utcnow()
    loop.temperatures([T_HIGH + 1], now=t0)
    alarm = _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION)
    alarms.shelve(session, alarm.id, ALICE, 1, "short", now=t0)
    loop.temperatures([NORMAL_T] * alarms.CLEAR_AFTER_STEPS, now=t0)
    late = t0 + timedelta(minutes=2)
    with pytest.raises(Conflict, match="not shelved"):  # expired before the unshelve
        alarms.unshelve(session, alarm.id, ALICE, now=late)
    assert _point(session, loop.run_id, AlarmKind.LIMIT_VIOLATION).state == AlarmState.NORMAL


# ---------------------------------------------------------------- stale data, stopped loops


def test_a_silent_running_loop_raises_stale_data(session: Session, loop: Loop) -> None:
    t0 = utcnow()
    loop.temperatures([NORMAL_T], now=t0)
    limit = alarms.STALE_AFTER_PERIODS * DT
    alarms.refresh(session, now=t0 + timedelta(seconds=limit - 1))
    assert ("", AlarmKind.STALE_DATA) not in _points(session, loop.run_id)
    alarms.refresh(session, now=t0 + timedelta(seconds=limit + 1))
    alarms.refresh(session, now=t0 + timedelta(seconds=limit + 60))
    stale = _point(session, loop.run_id, AlarmKind.STALE_DATA, "")
    assert (stale.state, stale.unit) == (AlarmState.UNACKNOWLEDGED, "s")
    assert stale.value == pytest.approx(limit + 1)
    assert stale.worst_value == pytest.approx(limit + 60)
    assert [a for a, *_ in _history(session, stale.id)] == ["raised"]
    resumed = t0 + timedelta(seconds=limit + 61)
    loop.temperatures([NORMAL_T] * alarms.CLEAR_AFTER_STEPS, now=resumed)
    assert not _point(session, loop.run_id, AlarmKind.STALE_DATA, "").active


def test_stopping_a_loop_clears_its_alarms(session: Session, loop: Loop) -> None:
    loop.temperatures([T_HIGH + 1])
    approach = _point(session, loop.run_id, AlarmKind.LIMIT_APPROACH)
    alarms.acknowledge(session, approach.id, ALICE)
    services.finish_run(session, loop.run_id, RunStatus.STOPPED)
    alarms.refresh(session)
    points = _points(session, loop.run_id)
    assert points[("T", AlarmKind.LIMIT_VIOLATION)].state == AlarmState.RTN_UNACKNOWLEDGED
    assert points[("T", AlarmKind.LIMIT_APPROACH)].state == AlarmState.NORMAL
    assert session.get(AlarmCursor, loop.run_id).closed


# ---------------------------------------------------------------- the API and the page


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _loop_with_a_violation(client: TestClient, session: Session, headers: dict[str, str]) -> int:
    model_id = services.register_model(session, "cstr", "jepa", b"weights", {}, {}).id
    started = client.post(
        "/api/loops", json={"process": "cstr", "model_id": model_id}, headers=headers
    )
    assert started.status_code == 201, started.text
    run_id = started.json()["run_id"]
    for k, t in enumerate([NORMAL_T, T_HIGH + 2]):
        step = client.post(
            f"/api/loops/{run_id}/step",
            headers=headers,
            json={"time_s": DT * k, "measurements": {"Ca": 0.5, "T": t, "Caf": 1.0, "Tf": 350.0}},
        )
        assert step.status_code == 200, step.text
    return run_id


def test_operators_acknowledge_and_shelve_through_the_api(
    secure: TestClient, secure_app: FastAPI, session: Session, tokens: dict[Role, str]
) -> None:
    operator, viewer = _bearer(tokens[Role.OPERATOR]), _bearer(tokens[Role.VIEWER])
    t0 = utcnow()
    secure_app.state.clock = lambda: t0
    run_id = _loop_with_a_violation(secure, session, operator)
    listed = secure.get("/api/alarms", params={"loop": run_id}, headers=viewer)
    assert listed.status_code == 200, listed.text
    by_kind = {a["kind"]: a for a in listed.json()}
    violation = by_kind["limit_violation"]
    assert (
        violation["state"],
        violation["tag"],
        violation["value"],
        violation["unit"],
        violation["loop"],
        violation["process"],
        violation["priority"],
    ) == ("unacknowledged", "T", T_HIGH + 2, "K", run_id, "cstr", "critical")
    alarm_id = violation["id"]

    assert secure.post(f"/api/alarms/{alarm_id}/acknowledge", headers=viewer).status_code == 403
    acked = secure.post(f"/api/alarms/{alarm_id}/acknowledge", headers=operator)
    assert acked.status_code == 200, acked.text
    assert (acked.json()["state"], acked.json()["acknowledged_by"]) == (
        "acknowledged",
        "operator-key",
    )

    for body in (
        '{"minutes": NaN, "reason": "x"}',
        '{"minutes": -5, "reason": "x"}',
        '{"minutes": 0, "reason": "x"}',
        '{"minutes": 5, "reason": "  "}',
        '{"minutes": 5}',
        '{"minutes": 5, "reason": "x", "extra": 1}',
    ):
        refused = secure.post(
            f"/api/alarms/{alarm_id}/shelve",
            content=body,
            headers={**operator, "Content-Type": "application/json"},
        )
        assert refused.status_code == 422, (body, refused.text)
    shelved = secure.post(
        f"/api/alarms/{alarm_id}/shelve",
        headers=operator,
        json={"minutes": 15, "reason": "calibration"},
    )
    assert shelved.status_code == 200, shelved.text
    assert shelved.json()["shelved_by"] == "operator-key"
    assert secure.get("/api/alarms", params={"state": "shelved"}, headers=viewer).json()
    refused = secure.post(f"/api/alarms/{alarm_id}/acknowledge", headers=operator)
    assert refused.status_code == 409 and "unshelve it first" in refused.json()["detail"]

    secure_app.state.clock = lambda: t0 + timedelta(minutes=16)
    assert secure.get("/api/alarms", params={"loop": run_id}, headers=viewer).status_code == 200
    detail = secure.get(f"/api/alarms/{alarm_id}", headers=viewer).json()
    assert detail["state"] == "unacknowledged"
    assert [(h["action"], h["actor"]) for h in detail["history"]] == [
        ("raised", None),
        ("acknowledged", "operator-key"),
        ("shelved", "operator-key"),
        ("shelve_expired", None),
    ]
    again = secure.post(f"/api/alarms/{alarm_id}/unshelve", headers=operator)
    assert again.status_code == 409

    session.expire_all()
    audit = [
        (e.actor, e.action)
        for e in session.scalars(
            select(AuditEntry)
            .where(AuditEntry.target == f"alarm:{alarm_id}")
            .order_by(AuditEntry.id)
        )
    ]
    assert audit == [("operator-key", "alarm.acknowledge"), ("operator-key", "alarm.shelve")]


def test_bad_alarm_queries_are_4xx(client: TestClient) -> None:
    bad_state = client.get("/api/alarms", params={"state": "panic"})
    assert bad_state.status_code == 422
    unknown_loop = client.get("/api/alarms", params={"loop": 4242})
    assert unknown_loop.status_code == 404 and "4242" in unknown_loop.json()["detail"]
    assert client.post("/api/alarms/4242/acknowledge").status_code == 404
    assert client.get("/api/alarms/4242").status_code == 404


def test_the_alarm_page_lists_alarms(client: TestClient, session: Session) -> None:
    run_id = _loop_with_a_violation(client, session, {})
    page = client.get("/alarms")
    assert page.status_code == 200, page.text
    embedded = page.text.split('id="initial-alarms" type="application/json">')[1]
    rows = json.loads(embedded.split("</script>")[0])
    # The fake controller's move on the jump to T_HIGH + 2 K exceeds Tc's rate limit: the
    # API guard limits it and marks the step a fallback.
    assert {(r["loop"], r["kind"], r["state"]) for r in rows} == {
        (run_id, "limit_violation", "unacknowledged"),
        (run_id, "limit_approach", "unacknowledged"),
        (run_id, "fallback", "unacknowledged"),
    }
    fallback = next(r for r in rows if r["kind"] == "fallback")
    assert "api_guard: Tc: rate limited" in fallback["message"] and fallback["tag"] == ""
    assert 'href="/alarms"' in page.text  # the navigation bar
    assert client.get("/alarms", params={"loop": run_id, "show": "all"}).status_code == 200
    assert client.get("/alarms", params={"show": "everything"}).status_code == 422


def test_the_alarm_page_acts_with_the_login_session_and_its_csrf_token(
    secure: TestClient, session: Session, tokens: dict[Role, str]
) -> None:
    """A logged-in operator acknowledges from the page: the session cookie identifies them,
    the page's token proves the request came from the page, and the name is recorded."""
    operator = {"Authorization": f"Bearer {tokens[Role.OPERATOR]}"}
    run_id = _loop_with_a_violation(secure, session, operator)
    secure.post("/login", data={"api_key": tokens[Role.OPERATOR]})
    page = secure.get("/alarms")
    assert page.status_code == 200
    token = re.search(r'const CSRF = "([0-9a-f]+)"', page.text).group(1)
    listed = secure.get("/dash/api/alarms", params={"loop": run_id}).json()
    alarm_id = next(a["id"] for a in listed if a["kind"] == "limit_violation")
    without = secure.post(f"/dash/api/alarms/{alarm_id}/acknowledge")
    assert without.status_code == 403  # a cookie alone never acts (another site's form)
    acked = secure.post(f"/dash/api/alarms/{alarm_id}/acknowledge", headers={"X-CSRF-Token": token})
    assert acked.status_code == 200, acked.text
    assert acked.json()["state"] == "acknowledged"
    assert acked.json()["acknowledged_by"] == "operator-key"
    assert secure.get("/api/alarms").status_code == 401  # the JSON API takes no cookie


def test_a_viewer_session_cannot_act_from_the_alarm_page(
    secure: TestClient, session: Session, tokens: dict[Role, str]
) -> None:
    operator = {"Authorization": f"Bearer {tokens[Role.OPERATOR]}"}
    run_id = _loop_with_a_violation(secure, session, operator)
    secure.post("/login", data={"api_key": tokens[Role.VIEWER]})
    token = re.search(r'const CSRF = "([0-9a-f]+)"', secure.get("/alarms").text).group(1)
    alarm_id = secure.get("/dash/api/alarms", params={"loop": run_id}).json()[0]["id"]
    refused = secure.post(
        f"/dash/api/alarms/{alarm_id}/acknowledge", headers={"X-CSRF-Token": token}
    )
    assert refused.status_code == 403
