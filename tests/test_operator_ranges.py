"""The operator's ranges of sensors (twin.operator): the rule, through the controller with
the tiny test twin, and through `PUT /api/loops/{id}/operator` with its validation, audit
and persistence. The twin, controller and API fixtures are those of the operator's other
controls (tests/test_operator_controls.py)."""

from __future__ import annotations

import numpy as np
import pytest
import test_operator_controls as controls
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_operator_controls import GOOD, GreedyPlanner, _auth, _controller, _put, _run

from api.orm import AuditEntry, Role, Run, RunEvent
from processes import cstr
from twin.errors import InvalidInput
from twin.operator import RANGE_DEADBAND, OperatorSettings
from twin.twin_model import Twin

SPEC = cstr.SPEC  # Ca: low limit 0 mol/L; T: high limit 385 K
# the fixtures of the operator's other controls, under the names pytest finds them by
twin, api, built, loop_id, operated_app = (
    controls.twin,
    controls.api,
    controls.built,
    controls.loop_id,
    controls.operated_app,
)

# ---------------------------------------------------------------- the rule


def test_a_ranged_sensor_without_a_setpoint_is_free_inside_and_brought_back_outside() -> None:
    settings = OperatorSettings().changed(SPEC, ranges={"Ca": (0.4, 0.6)})
    setpoints = {"T": 360.0}
    assert settings.tracked(setpoints, {"Ca": 0.5, "T": 350.0}) == {"T": 360.0}
    assert settings.tracked(setpoints, {"Ca": 0.4, "T": 350.0}) == {"T": 360.0}  # on a bound
    assert settings.tracked(setpoints, {"Ca": 0.3, "T": 350.0}) == {"T": 360.0, "Ca": 0.4}
    assert settings.tracked(setpoints, {"Ca": 0.7, "T": 350.0}) == {"T": 360.0, "Ca": 0.6}
    assert settings.tracked(setpoints, {"Ca": None}) == {"T": 360.0}  # not measured: free
    assert settings.tracked(setpoints) == {"T": 360.0}


def test_a_setpoint_outside_the_range_moves_to_its_nearest_bound() -> None:
    settings = OperatorSettings().changed(SPEC, ranges={"T": (340.0, 355.0), "Ca": (0.4, 0.6)})
    measured = {"T": 350.0, "Ca": 0.5}
    assert settings.tracked({"T": 360.0}, measured) == {"T": 355.0}
    assert settings.tracked({"T": 330.0}, measured) == {"T": 340.0}
    assert settings.tracked({"T": 345.0, "Ca": 0.9}, measured) == {"T": 345.0, "Ca": 0.6}
    # a dropped sensor is not chased, range or not
    dropped = settings.changed(SPEC, dropped={"Ca": True})
    assert dropped.tracked({"T": 345.0}, {"T": 350.0, "Ca": 0.9}) == {"T": 345.0}


def test_a_sensor_hovering_at_its_bound_stays_chased_until_back_by_the_deadband() -> None:
    settings = OperatorSettings().changed(SPEC, ranges={"Ca": (0.4, 0.6)})
    margin = RANGE_DEADBAND * 0.2
    assert 0.0 < margin < 0.1  # a small part of the range

    def chased(ca: float) -> float | None:
        return settings.tracked({}, {"Ca": ca}).get("Ca")

    hovering = [0.399, 0.401, 0.398, 0.402, 0.397, 0.4 + 0.9 * margin]
    assert [chased(ca) for ca in hovering] == [0.4] * len(hovering)  # no toggling
    assert chased(0.4 + 0.9 * margin) == 0.4  # one sample asked twice: one answer
    assert chased(0.4 + 1.1 * margin) is None  # back inside by the deadband: free
    assert chased(0.402) is None  # free near the bound until it leaves the range
    assert chased(0.601) == 0.6 and chased(0.6 - 0.9 * margin) == 0.6  # the high side
    assert chased(0.35) == 0.4  # crossing the range moves it to the other bound
    assert settings.tracked({}, {"Ca": None}) == {} and chased(0.401) == 0.4  # a lost sample
    assert settings.tracked({"Ca": 0.5}, {"Ca": 0.401}) == {"Ca": 0.5}  # a setpoint wins
    assert chased(0.401) is None  # and ends the chase
    # the chase is the loop's memory, not a setting: stored, compared and hashed without it
    fresh = OperatorSettings().changed(SPEC, ranges={"Ca": (0.4, 0.6)})
    chased(0.3)
    assert settings == fresh and hash(settings) == hash(fresh)
    assert settings.to_dict() == fresh.to_dict()
    assert fresh.tracked({}, {"Ca": 0.401}) == {}  # without a chase behind it: free


@pytest.mark.parametrize(
    "ranges, named",
    [
        ({"Cb": (0.1, 0.2)}, "unknown sensor 'Cb'"),
        ({"Tc": (290.0, 300.0)}, "unknown sensor 'Tc'"),  # an actuator has no range here
        ({"T": (360.0, 360.0)}, "low 360 K must be below high 360 K"),
        ({"T": (370.0, 360.0)}, "low 370 K must be below high 360 K"),
        ({"T": (350.0, 385.0)}, "high 385 K must be below its engineering high limit 385 K"),
        ({"Ca": (0.0, 0.5)}, "low 0 mol/L must be above its engineering low limit 0 mol/L"),
        ({"Ca": (-0.1, 0.5)}, "engineering low limit"),
        ({"T": (float("nan"), 360.0)}, "low must be a finite number"),
        ({"T": (340.0, float("inf"))}, "high must be a finite number"),
    ],
)
def test_a_bad_range_is_refused_naming_it(ranges, named: str) -> None:
    before = OperatorSettings().changed(SPEC, ranges={"T": (340.0, 355.0)})
    with pytest.raises(InvalidInput, match=named):
        before.changed(SPEC, mode="standby", ranges={"Ca": (0.4, 0.6), **ranges})
    assert before.ranges == {"T": (340.0, 355.0)}  # nothing changed


def test_ranges_are_stored_cleared_and_said_in_words_with_units() -> None:
    empty = OperatorSettings()
    assert "ranges" not in empty.to_dict()  # settings stored before ranges read the same
    ranged = empty.changed(SPEC, ranges={"T": (340.0, 355.0), "Ca": (0.4, 0.6)})
    assert OperatorSettings.from_dict(ranged.to_dict()) == ranged
    assert ranged.to_dict()["ranges"] == {
        "Ca": {"low": 0.4, "high": 0.6},
        "T": {"low": 340.0, "high": 355.0},
    }
    assert ranged.describe_change(empty, SPEC) == [
        "sensor Ca range set to [0.4, 0.6] mol/L",
        "sensor T range set to [340, 355] K",
    ]
    moved = ranged.changed(SPEC, ranges={"T": (345.0, 355.0), "Ca": None})
    assert moved.ranges == {"T": (345.0, 355.0)}
    assert moved.describe_change(ranged, SPEC) == [
        "sensor Ca range [0.4, 0.6] mol/L cleared",
        "sensor T range [340, 355] K -> [345, 355] K",
    ]
    assert moved.changed(SPEC, ranges={"T": (345.0, 355.0)}).describe_change(moved) == []


# ---------------------------------------------------------------- through the controller


def _last_problem(twin: Twin, settings: OperatorSettings, setpoints, seed: int = 2):
    planner = GreedyPlanner()
    controller = _controller(twin, planner)
    controller.set_operator(settings)
    records = _run(controller, cstr.CSTRSimulator(seed=seed), 2, 0, setpoints)
    return planner.problems[-1] if planner.problems else None, records


def test_a_ranged_sensor_is_not_chased_inside_its_range(twin: Twin) -> None:
    # Ca measures about 0.50 mol/L in these runs
    inside = OperatorSettings(ranges={"Ca": (0.3, 0.7)})
    below = OperatorSettings(ranges={"Ca": (0.6, 0.9)})
    problems = {
        "inside": _last_problem(twin, inside, {"T": 360.0})[0],
        "T only": _last_problem(twin, OperatorSettings(), {"T": 360.0})[0],
        "below": _last_problem(twin, below, {"T": 360.0})[0],
        "Ca at 0.6": _last_problem(twin, OperatorSettings(), {"T": 360.0, "Ca": 0.6})[0],
    }
    # inside its range Ca is left free: the plan is the one without any Ca setpoint
    np.testing.assert_allclose(problems["inside"].z_goal, problems["T only"].z_goal)
    np.testing.assert_allclose(problems["inside"].metric, problems["T only"].metric)
    # below its range it is chased to the nearest bound
    np.testing.assert_allclose(problems["below"].z_goal, problems["Ca at 0.6"].z_goal)
    np.testing.assert_allclose(problems["below"].metric, problems["Ca at 0.6"].metric)
    assert not np.allclose(problems["below"].metric, problems["T only"].metric)


def test_a_setpoint_outside_the_range_is_chased_at_the_bound(twin: Twin) -> None:
    clipped = _last_problem(twin, OperatorSettings(ranges={"T": (340.0, 355.0)}), {"T": 370.0})
    at_bound = _last_problem(twin, OperatorSettings(), {"T": 355.0})
    np.testing.assert_allclose(clipped[0].z_goal, at_bound[0].z_goal)
    assert clipped[1][-1].setpoints == {"T": 370.0}  # the loop's own setpoint is kept


def test_every_ranged_sensor_inside_holds_without_an_event(twin: Twin) -> None:
    settings = OperatorSettings(dropped=frozenset({"T"}), ranges={"Ca": (0.3, 0.7)})
    problem, records = _last_problem(twin, settings, {"T": 360.0})
    assert problem is None  # nothing to chase: no plan
    assert all(r.actuators["Tc"] == cstr.TC_NOMINAL for r in records)
    assert all(r.status.value == "ok" and not r.events for r in records)
    # once Ca leaves its range the twin plans again
    outside = OperatorSettings(dropped=frozenset({"T"}), ranges={"Ca": (0.6, 0.9)})
    assert _last_problem(twin, outside, {"T": 360.0})[0] is not None


def test_a_loop_hovering_at_a_bound_keeps_planning(twin: Twin) -> None:
    # Ca at about 0.50 mol/L is nudged across its low bound 0.5 every other sample: the
    # twin plans every step after the first dip instead of holding every other one
    planner = GreedyPlanner()
    controller = _controller(twin, planner)
    controller.set_operator(OperatorSettings(dropped=frozenset({"T"}), ranges={"Ca": (0.5, 0.7)}))
    sim = cstr.CSTRSimulator(seed=2)
    for k in range(6):
        measured = {**sim.measure(), "Ca": 0.499 if k % 2 == 0 else 0.501}
        record = controller.step(k * cstr.SAMPLE_PERIOD_S, measured, {"T": 360.0})
        sim.step(record.actuators["Tc"])
    assert len(planner.problems) == 6


# ---------------------------------------------------------------- through the API


def test_ranges_through_the_api_are_audited_stored_and_cleared(
    api: TestClient, loop_id: int, tokens, session: Session, built
) -> None:
    body = {"ranges": {"T": {"low": 340, "high": 355.5}}, "reason": "hold T in a band"}
    response = _put(api, loop_id, tokens, body)
    assert response.status_code == 200, response.text
    assert response.json()["ranges"] == {"T": {"low": 340.0, "high": 355.5}}
    event = session.scalars(select(RunEvent).where(RunEvent.kind == "operator")).one()
    assert "sensor T range set to [340, 355.5] K" in event.message
    assert "hold T in a band" in event.message
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "loop.operator")).one()
    assert entry.detail["settings"]["ranges"] == {"T": {"low": 340.0, "high": 355.5}}
    got = api.get(f"/api/loops/{loop_id}/operator", headers=_auth(tokens, Role.VIEWER)).json()
    assert got["ranges"] == {"T": {"low": 340.0, "high": 355.5}}
    view = api.get(f"/api/loops/{loop_id}", headers=_auth(tokens, Role.VIEWER)).json()
    assert view["operator"]["ranges"] == {"T": {"low": 340.0, "high": 355.5}}
    step = api.post(
        f"/api/loops/{loop_id}/step",
        json={"time_s": 0.0, "measurements": GOOD},
        headers=_auth(tokens, Role.OPERATOR),
    )
    assert step.status_code == 200, step.text
    assert built[-1].given[-1].ranges == {"T": (340.0, 355.5)}
    cleared = _put(api, loop_id, tokens, {"ranges": {"T": None}, "reason": "band lifted"})
    assert cleared.status_code == 200, cleared.text
    assert "ranges" not in cleared.json()
    session.expire_all()
    messages = [e.message for e in session.scalars(select(RunEvent).order_by(RunEvent.id))]
    assert "sensor T range [340, 355.5] K cleared" in messages[-1]


@pytest.mark.parametrize(
    "ranges, named",
    [
        ({"T": {"low": 360.0, "high": 350.0}}, "low 360 K must be below high 350 K"),
        ({"T": {"low": 350.0, "high": 390.0}}, "engineering high limit 385 K"),
        ({"Ca": {"low": 0.0, "high": 0.5}}, "engineering low limit 0 mol/L"),
        ({"Q": {"low": 1.0, "high": 2.0}}, "unknown sensor 'Q'"),
        ({"Tc": {"low": 290.0, "high": 300.0}}, "unknown sensor 'Tc'"),
        ({"T": {"low": "340", "high": 350.0}}, "low"),  # a string is no number
        ({"T": {"low": 340.0}}, "high"),
        ({"T": {"low": 340.0, "high": 350.0, "mid": 345.0}}, "mid"),
        ({"T": [340.0, 350.0]}, "ranges"),
    ],
)
def test_a_bad_range_through_the_api_changes_nothing(
    api: TestClient, loop_id: int, tokens, session: Session, ranges, named: str
) -> None:
    body = {"mode": "standby", "ranges": {"Ca": {"low": 0.4, "high": 0.6}, **ranges}}
    response = _put(api, loop_id, tokens, {**body, "reason": "r"})
    assert response.status_code == 422, response.text
    assert named in response.text
    session.expire_all()
    assert "operator" not in session.get(Run, loop_id).config
    assert not session.scalars(select(AuditEntry).where(AuditEntry.action == "loop.operator")).all()
    got = api.get(f"/api/loops/{loop_id}/operator", headers=_auth(tokens, Role.VIEWER)).json()
    assert got == {"run_id": loop_id, "mode": "on", "out_of_service": [], "dropped": []}


def test_a_viewer_cannot_set_a_range(api: TestClient, loop_id: int, tokens) -> None:
    body = {"ranges": {"T": {"low": 340.0, "high": 355.0}}, "reason": "r"}
    assert _put(api, loop_id, tokens, body, Role.VIEWER).status_code == 403
    got = api.get(f"/api/loops/{loop_id}/operator", headers=_auth(tokens, Role.VIEWER)).json()
    assert "ranges" not in got
