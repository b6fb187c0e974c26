"""Hierarchical planning: coarse subgoals over a long horizon, the RTI planner tracking them."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twin_fixtures import cold_controller, tiny_twin

from processes import cstr
from twin.planner_names import PLANNER_NAMES
from twin.planning import (
    HierarchicalPlanner,
    PlannerSettings,
    PlanningProblem,
    RTIPlanner,
    TorchProblem,
    make_planner,
)
from twin.records import StepStatus
from twin.twin_model import Twin

FINE = PlannerSettings(horizon=6)


@pytest.fixture(scope="module")
def twin() -> Twin:
    return tiny_twin()[0]


@pytest.fixture(scope="module")
def planner(twin: Twin) -> HierarchicalPlanner:
    return HierarchicalPlanner(twin, FINE)


def _problem(twin: Twin, index: int, tc: float, setpoint_k: float) -> PlanningProblem:
    return PlanningProblem(
        twin.bank.embeddings[index].double().numpy(),
        twin.normalise_actions(np.array([tc])),
        twin.goal_embedding({"T": setpoint_k}),
    )


def _assert_feasible(
    actions: np.ndarray, u_prev: np.ndarray, planner: HierarchicalPlanner, tol: float = 1e-7
) -> None:
    lim = planner.limits
    assert np.all(np.isfinite(actions))
    assert np.all(actions >= lim.u_low - tol) and np.all(actions <= lim.u_high + tol)
    moves = np.abs(np.diff(np.vstack([u_prev, actions]), axis=0))
    assert np.all(moves <= lim.rate + tol), moves.max()


def test_registered_by_name(twin: Twin) -> None:
    assert "hierarchical" in PLANNER_NAMES
    built = make_planner("hierarchical", twin, FINE)
    assert isinstance(built, HierarchicalPlanner) and built.name == "hierarchical"
    assert isinstance(built.fine, RTIPlanner)


def test_coarse_level_sees_at_least_three_fine_horizons(planner: HierarchicalPlanner) -> None:
    reach = planner.blocks * planner.k
    assert reach >= 3 * FINE.horizon and reach >= 60
    # the subgoal is the first block end at or past the fine horizon
    assert (planner.subgoal_block + 1) * planner.k >= FINE.horizon
    assert planner.subgoal_block * planner.k < FINE.horizon


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    index=st.integers(0, 200),
    tc=st.floats(cstr.TC_LOW, cstr.TC_HIGH),
    setpoint=st.floats(330.0, 380.0),
    warm=st.booleans(),
)
def test_plans_keep_bounds_and_rates(
    planner: HierarchicalPlanner, twin: Twin, index: int, tc: float, setpoint: float, warm: bool
) -> None:
    if not warm:
        planner.reset()
    problem = _problem(twin, index, tc, setpoint)
    result = planner.plan(problem)
    assert result.ok, result.message
    _assert_feasible(result.actions, problem.u_prev, planner)
    coarse = planner.last_coarse
    assert coarse is not None and coarse.actions.shape == (planner.blocks * planner.k, 1)
    _assert_feasible(coarse.actions, problem.u_prev, planner, tol=1e-5)  # float32 search


def test_plans_from_the_bounds_pushed_outwards_stay_feasible(twin: Twin) -> None:
    for tc, setpoint in ((cstr.TC_HIGH, 380.0), (cstr.TC_LOW, 330.0)):
        fresh = HierarchicalPlanner(twin, FINE)
        problem = _problem(twin, 10, tc, setpoint)
        result = fresh.plan(problem)
        assert result.ok
        _assert_feasible(result.actions, problem.u_prev, fresh)


def test_subgoal_lies_on_the_coarse_rollout_and_the_fine_plan_tracks_it(twin: Twin) -> None:
    planner = HierarchicalPlanner(twin, FINE)
    problem = _problem(twin, 40, 320.0, 370.0)
    result = planner.plan(problem)
    coarse = planner.last_coarse
    assert result.ok and coarse is not None
    with torch.no_grad():
        rolled = twin.model.coarse_rollout(
            torch.as_tensor(problem.z0, dtype=torch.float32).unsqueeze(0),
            torch.as_tensor(coarse.actions, dtype=torch.float32).unsqueeze(0),
        )[0].numpy()
    assert rolled.shape == (planner.blocks, twin.config.embed_dim)
    np.testing.assert_allclose(coarse.embeddings, rolled, atol=1e-5)
    np.testing.assert_allclose(coarse.subgoal, rolled[planner.subgoal_block], atol=1e-5)
    assert not np.allclose(coarse.subgoal, problem.z_goal, atol=1e-3)  # not the far goal
    # the fine level is the RTI planner solving for the subgoal instead of the far goal
    reference = RTIPlanner(twin, FINE).plan(
        PlanningProblem(problem.z0, problem.u_prev, coarse.subgoal)
    )
    np.testing.assert_allclose(result.actions, reference.actions, atol=1e-9)
    far = RTIPlanner(twin, FINE).plan(problem)
    assert not np.allclose(result.actions, far.actions, atol=1e-6)


def test_the_tracking_metric_shapes_the_coarse_search_not_the_subgoal_tracking(twin: Twin) -> None:
    """The metric weighs the far goal's setpoint error: it changes the coarse plan, and the
    fine level tracks the subgoal on the plain embedding distance."""
    plain = _problem(twin, 40, 320.0, 370.0)
    jacobian = twin.readout_jacobian(plain.z_goal, ["T"])
    metric = np.linalg.cholesky(np.eye(len(plain.z_goal)) + 40.0 * jacobian.T @ jacobian).T
    weighted = PlanningProblem(plain.z0, plain.u_prev, plain.z_goal, metric=metric)
    unweighted_planner, weighted_planner = (
        HierarchicalPlanner(twin, FINE),
        HierarchicalPlanner(twin, FINE),
    )
    unweighted_planner.plan(plain)
    result = weighted_planner.plan(weighted)
    coarse = weighted_planner.last_coarse
    assert result.ok and coarse is not None and unweighted_planner.last_coarse is not None
    assert not np.allclose(coarse.actions, unweighted_planner.last_coarse.actions, atol=1e-6)
    reference = RTIPlanner(twin, FINE).plan(PlanningProblem(plain.z0, plain.u_prev, coarse.subgoal))
    np.testing.assert_allclose(result.actions, reference.actions, atol=1e-9)


def test_coarse_plan_beats_holding_on_its_own_objective(twin: Twin) -> None:
    planner = HierarchicalPlanner(twin, FINE)
    problem = _problem(twin, 40, 300.0, 375.0)
    planner.plan(problem)
    assert planner.last_coarse is not None
    hold = torch.full((1, planner.blocks * planner.k, 1), float(problem.u_prev[0]))
    hold_cost = float(planner.score(hold, TorchProblem.of(problem, planner.limits))[0][0])
    assert planner.last_coarse.cost < hold_cost


@pytest.mark.parametrize("field", ["z0", "u_prev", "z_goal"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_input_fails_cleanly_then_recovers(twin: Twin, field: str, bad: float) -> None:
    planner = HierarchicalPlanner(twin, FINE)
    good = _problem(twin, 5, 330.0, 360.0)
    assert planner.plan(good).ok
    values = getattr(good, field).copy()
    values[0] = bad
    result = planner.plan(dataclasses.replace(good, **{field: values}))
    assert not result.ok and "not finite" in result.message
    assert result.actions.shape == (FINE.horizon, 1)
    assert np.all(np.isfinite(result.actions))
    assert np.all(result.actions >= planner.limits.u_low)
    assert np.all(result.actions <= planner.limits.u_high)
    assert planner.last_coarse is None  # nothing half-planned is kept
    assert planner.plan(good).ok


def test_twin_without_a_coarse_predictor_is_refused(twin: Twin) -> None:
    flat = copy.copy(twin)
    flat.config = dataclasses.replace(twin.config, coarse_steps=0)
    with pytest.raises(ValueError, match="coarse predictor"):
        HierarchicalPlanner(flat, FINE)


def test_controller_runs_the_hierarchy_safely(twin: Twin) -> None:
    # the tiny twin's one-step forecasts are rough: keep the mismatch check out; the
    # deadline is generous so a busy test machine cannot turn a slow plan into a fallback
    settings = dataclasses.replace(FINE, deadline_ms=60_000.0)
    controller = cold_controller(
        twin,
        make_planner("hierarchical", twin, settings),
        cstr.pi_fallback(),
        mismatch_trip=math.inf,
    )
    sim = cstr.CSTRSimulator(seed=0)
    meas, previous, statuses = sim.measure(), cstr.TC_NOMINAL, []
    for k in range(12):
        record = controller.step(6.0 * k, meas, {"T": 365.0})
        assert record.plan is not None and len(record.plan.time_s) == FINE.horizon
        tc = record.actuators["Tc"]
        assert cstr.TC_LOW <= tc <= cstr.TC_HIGH
        assert abs(tc - previous) <= cstr.RATE_PER_SAMPLE + 1e-9
        previous = tc
        statuses.append(record.status)
        if record.status is StepStatus.FALLBACK:  # only the plant-side guard may take over
            assert {e.kind for e in record.events} <= {"limit_guard", "rate_limited"}
        meas = sim.step(tc)
    assert StepStatus.OK in statuses and StepStatus.STALE not in statuses
