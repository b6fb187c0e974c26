"""The operator's economic directions (twin.operator `economic`, `PlanningProblem.economic`):
the rule and its validation, the linear term in the three forms of the plan's cost, every
planner moving the pushed tag the chosen way, the controller on the tiny CSTR twin, and
`PUT /api/loops/{id}/operator`. Fixtures are those of the operator's other controls
(tests/test_operator_controls.py) and of the planning protocol's tests."""

from __future__ import annotations

import dataclasses

import casadi as ca
import numpy as np
import pytest
import test_operator_controls as controls
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_operator_controls import _auth, _put
from test_planning_protocol import HORIZON
from test_planning_protocol import _problem as protocol_problem
from twin_fixtures import assert_within_bounds_and_rate, cold_controller, rate_per_sample

from api.orm import AuditEntry, Role, Run, RunEvent
from processes import cstr
from twin.errors import InvalidInput
from twin.operator import ECONOMIC_GIVE, OperatorSettings
from twin.planning import (
    Constraints,
    PlannerSettings,
    PlanningCost,
    PlanningProblem,
    RTIPlanner,
    TorchLimits,
    TorchProblem,
    make_planner,
    project_moves,
)
from twin.planning.linearisation import NumpyLinearisation
from twin.twin_model import Twin

SPEC = cstr.SPEC
twin, api, built, loop_id, operated_app = (
    controls.twin,
    controls.api,
    controls.built,
    controls.loop_id,
    controls.operated_app,
)

# ---------------------------------------------------------------- the settings


def test_directions_are_stored_cleared_and_said_in_words() -> None:
    empty = OperatorSettings()
    assert "economic" not in empty.to_dict()  # settings stored before read the same
    pushed = empty.changed(SPEC, economic={"Tc": "maximise", "Ca": "minimise"})
    assert pushed.economic == {"Tc": "maximise", "Ca": "minimise"}
    assert OperatorSettings.from_dict(pushed.to_dict()) == pushed
    assert pushed.to_dict()["economic"] == {"Ca": "minimise", "Tc": "maximise"}
    assert pushed.describe_change(empty) == [
        "Ca economic direction: minimise",
        "Tc economic direction: maximise",
    ]
    turned = pushed.changed(SPEC, economic={"Tc": "minimise", "Ca": None})
    assert turned.economic == {"Tc": "minimise"}
    assert turned.describe_change(pushed) == [
        "economic direction on Ca (minimise) cleared",
        "Tc economic direction: minimise",
    ]
    assert turned.changed(SPEC, economic={"Tc": "minimise"}).describe_change(turned) == []


@pytest.mark.parametrize(
    "economic, named",
    [
        ({"Q": "maximise"}, "unknown actuator or sensor 'Q'"),
        ({"Caf": "maximise"}, "unknown actuator or sensor 'Caf'"),  # a disturbance
        ({"Tc": "maximize"}, "must be maximise or minimise, got 'maximize'"),
        ({"T": "up"}, "economic direction of 'T'"),
        ({"T": 1}, "got 1"),
        ({"T": ["maximise"]}, "got \\['maximise'\\]"),
    ],
)
def test_a_bad_direction_is_refused_naming_it(economic, named: str) -> None:
    before = OperatorSettings().changed(SPEC, economic={"T": "maximise"})
    with pytest.raises(InvalidInput, match=named):
        before.changed(SPEC, mode="standby", economic={"Tc": "minimise", **economic})
    assert before.economic == {"T": "maximise"} and before.mode == "on"  # nothing changed


def test_the_weights_are_small_signed_and_reach_sensors_through_the_readout(twin: Twin) -> None:
    z0 = twin.bank.embeddings[100].double().numpy()
    a, d = len(twin.layout.actions), twin.config.embed_dim
    assert OperatorSettings().economic_weights(twin, z0, 150.0) is None
    scale = 2.0 * ECONOMIC_GIVE * 151.0
    up = OperatorSettings(economic={"Tc": "maximise"}).economic_weights(twin, z0, 150.0)
    down = OperatorSettings(economic={"Tc": "minimise"}).economic_weights(twin, z0, 150.0)
    np.testing.assert_allclose(up, np.concatenate([[-scale], np.zeros(d)]))
    np.testing.assert_allclose(down, -up)
    sensor = OperatorSettings(economic={"T": "maximise"}).economic_weights(twin, z0, 150.0)
    assert sensor.shape == (a + d,) and sensor[0] == 0.0
    np.testing.assert_allclose(sensor[a:], -scale * twin.readout_jacobian(z0, ["T"])[0])


# ---------------------------------------------------------------- the plan's cost


def test_the_three_forms_agree_with_the_economic_term(twin: Twin) -> None:
    lim = Constraints.from_twin(twin, 0.25)
    cost = PlanningCost.of(PlannerSettings(horizon=HORIZON), lim)
    problem = protocol_problem(twin)
    a, d = len(problem.u_prev), len(problem.z0)
    ramp = problem.u_prev - lim.rate * np.arange(1, HORIZON + 1)[:, None] * 0.9
    U = project_moves(ramp, problem.u_prev, lim)
    model = NumpyLinearisation(
        twin.model.predictor.net, twin.model.readout.net, d, lim.limit_rows.tolist()
    )
    Z, Y = model.simulate(problem.z0, U.T)
    plain = cost.numpy(problem, U, Z, Y)
    problem.economic = np.random.default_rng(5).standard_normal(a + d)
    exact = cost.numpy(problem, U, Z, Y)
    term = problem.economic[:a] @ U.sum(axis=0) + problem.economic[a:] @ Z.sum(axis=1)
    assert abs(term) > 0.1  # the term counts here
    assert exact == pytest.approx(plain + term, rel=1e-12)

    low, high = problem.sensor_bounds(lim)
    violation = np.maximum(np.maximum(Y - high[:, None], low[:, None] - Y), 0.0)
    metric, economic = ca.DM(problem.metric_or_identity()), ca.DM(problem.economic)
    symbolic, before = 0.0, problem.u_prev
    for k in range(HORIZON):
        symbolic += float(
            cost.casadi_stage(
                ca.DM(Z[:, k]),
                ca.DM(problem.z_goal),
                metric,
                ca.DM(U[k]),
                ca.DM(before),
                ca.DM(violation[:, k]),
                economic,
            )
        )
        before = U[k]
    assert symbolic == pytest.approx(exact, rel=1e-12)

    def batched(stage_weight: float, economic: bool = True) -> float:
        tensors = TorchProblem.of(problem, lim)
        if not economic:
            tensors = dataclasses.replace(tensors, economic=None)
        return float(
            cost.torch(
                torch.as_tensor(U, dtype=torch.float32)[None],
                torch.as_tensor(Z.T, dtype=torch.float32)[None],
                torch.as_tensor(Y.T, dtype=torch.float32)[None],
                tensors,
                TorchLimits.of(lim).rate,
                stage_weight,
            )[0]
        )

    assert batched(1.0) == pytest.approx(exact, rel=1e-5)
    # the coarse level: each embedding stands for k samples, each move for one
    on_moves, on_embeddings = (
        problem.economic[:a] @ U.sum(axis=0),
        term - (problem.economic[:a] @ U.sum(axis=0)),
    )
    assert batched(3.0) - batched(3.0, economic=False) == pytest.approx(
        on_moves + 3.0 * on_embeddings, rel=1e-3, abs=1e-3
    )


def test_a_problem_with_a_bad_economic_term_fails_the_plan(twin: Twin) -> None:
    planner = RTIPlanner(twin, PlannerSettings(horizon=HORIZON))
    problem = protocol_problem(twin)
    for bad in (np.zeros(3), np.full(1 + twin.config.embed_dim, np.nan)):
        problem.economic = bad
        result = planner.plan(problem)
        assert not result.ok and "economic" in result.message


@pytest.mark.parametrize(
    "name", ["casadi", "casadi-ipopt", "casadi-fatrop", "cem", "mppi", "hierarchical"]
)
def test_every_planner_moves_the_pushed_actuator_its_way(twin: Twin, name: str) -> None:
    z0 = twin.bank.embeddings[100].double().numpy()
    goal = twin.bank.embeddings[150].double().numpy()
    u_prev = twin.normalise_actions(np.array([320.0]))
    planned = {}
    for way in ("minimise", None, "maximise"):
        economic = {} if way is None else {"Tc": way}
        weights = OperatorSettings(economic=economic).economic_weights(twin, z0, 150.0)
        planner = make_planner(name, twin, PlannerSettings(horizon=8))
        result = planner.plan(PlanningProblem(z0, u_prev, goal, economic=weights))
        assert result.ok, result.message
        planned[way] = float(result.actions.mean())
    assert planned["minimise"] < planned[None] < planned["maximise"], planned


# ---------------------------------------------------------------- through the controller


def _run(twin: Twin, settings: OperatorSettings, setpoints, steps: int = 30):
    planner = RTIPlanner(twin, PlannerSettings(horizon=10))
    controller = cold_controller(
        twin,
        planner,
        disagreement_trip=float("inf"),
        mismatch_trip=float("inf"),
        envelope_neighbours=0,
    )
    controller.set_operator(settings)
    sim, records = cstr.CSTRSimulator(seed=5), []
    for k in range(steps):
        records.append(controller.step(k * cstr.SAMPLE_PERIOD_S, sim.measure(), setpoints))
        sim.step(records[-1].actuators["Tc"])
    tc = np.array([r.actuators["Tc"] for r in records])
    tag = SPEC.tag("Tc")
    assert_within_bounds_and_rate(tc, cstr.TC_NOMINAL, tag.low, tag.high, rate_per_sample())
    assert all(r.status.value == "ok" for r in records)
    return tc, np.array([r.measurements["T"] for r in records])


def test_a_free_sensor_is_pushed_to_its_range_bound_keeping_bounds_and_rates(
    twin: Twin,
) -> None:
    """T ranged [340, 365] K without a setpoint (Ca's dropped): free, so Tc holds; pushed,
    the plan drives Tc, within its bounds and rate limits, until T reaches the bound."""
    free = {"dropped": frozenset({"Ca"}), "ranges": {"T": (340.0, 365.0)}}
    held, held_t = _run(twin, OperatorSettings(**free), {"Ca": 0.5})
    up, up_t = _run(twin, OperatorSettings(**free, economic={"T": "maximise"}), {"Ca": 0.5})
    down, down_t = _run(twin, OperatorSettings(**free, economic={"T": "minimise"}), {"Ca": 0.5})
    assert np.all(held == cstr.TC_NOMINAL)
    assert up[:10].mean() > held[:10].mean() > down[:10].mean()
    assert up_t[10:].mean() > held_t[10:].mean() + 5.0
    assert down_t[10:].mean() < held_t[10:].mean() - 5.0


def test_a_pushed_actuator_gives_way_to_the_setpoint(twin: Twin) -> None:
    """One actuator and a tracked setpoint leave no freedom: Tc pushed to maximise follows
    the setpoint as it does without the push, within a kelvin on a tiny twin whose T swings
    30 K on its way (the push is worth 1 % of a training std of setpoint error)."""
    _, plain_t = _run(twin, OperatorSettings(), {"T": 355.0})
    _, pushed_t = _run(twin, OperatorSettings(economic={"Tc": "maximise"}), {"T": 355.0})
    assert np.ptp(plain_t) > 20.0
    assert np.abs(pushed_t - plain_t).max() < 1.0
    assert np.abs(pushed_t - plain_t).mean() < 0.5


# ---------------------------------------------------------------- through the API


def test_directions_through_the_api_are_stored_applied_and_cleared(
    api: TestClient, loop_id: int, tokens, session: Session, built
) -> None:
    body = {"economic": {"Tc": "maximise"}, "reason": "cheaper coolant"}
    response = _put(api, loop_id, tokens, body)
    assert response.status_code == 200, response.text
    assert response.json()["economic"] == {"Tc": "maximise"}
    event = session.scalars(select(RunEvent).where(RunEvent.kind == "operator")).one()
    assert "Tc economic direction: maximise" in event.message
    got = api.get(f"/api/loops/{loop_id}/operator", headers=_auth(tokens, Role.VIEWER)).json()
    assert got["economic"] == {"Tc": "maximise"}
    step = api.post(
        f"/api/loops/{loop_id}/step",
        json={"time_s": 0.0, "measurements": controls.GOOD},
        headers=_auth(tokens, Role.OPERATOR),
    )
    assert step.status_code == 200, step.text
    assert built[-1].given[-1].economic == {"Tc": "maximise"}
    cleared = _put(api, loop_id, tokens, {"economic": {"Tc": None}, "reason": "back to normal"})
    assert cleared.status_code == 200, cleared.text
    assert "economic" not in cleared.json()


@pytest.mark.parametrize(
    "economic, named",
    [
        ({"Q": "maximise"}, "unknown actuator or sensor 'Q'"),
        ({"Tc": "maximize"}, "maximise"),
        ({"Tc": 1}, "Tc"),
        ({"Tc": True}, "Tc"),
    ],
)
def test_a_bad_direction_through_the_api_changes_nothing(
    api: TestClient, loop_id: int, tokens, session: Session, economic, named: str
) -> None:
    body = {"mode": "standby", "economic": {"T": "minimise", **economic}, "reason": "r"}
    response = _put(api, loop_id, tokens, body)
    assert response.status_code == 422, response.text
    assert named in response.text
    session.expire_all()
    assert "operator" not in session.get(Run, loop_id).config
    assert not session.scalars(select(AuditEntry).where(AuditEntry.action == "loop.operator")).all()
    got = api.get(f"/api/loops/{loop_id}/operator", headers=_auth(tokens, Role.VIEWER)).json()
    assert got == {"run_id": loop_id, "mode": "on", "out_of_service": [], "dropped": []}
