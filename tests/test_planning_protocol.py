"""What every planner shares: one objective (CasADi, numpy and torch agree), one move
projection, one way to fail (ok=False with a reason, never an exception), and a timing
against the loop's budget before the loop starts."""

from __future__ import annotations

import casadi as ca
import numpy as np
import pytest
import torch
from twin_fixtures import tiny_twin

from twin.planner_names import PLANNER_NAMES
from twin.planning import (
    CEMPlanner,
    Constraints,
    MPPIPlanner,
    PlannerSettings,
    PlannerTiming,
    PlanningCost,
    PlanningProblem,
    TorchLimits,
    TorchProblem,
    make_planner,
    planner_that_fits,
    project_moves,
    project_moves_torch,
    time_planner,
)
from twin.planning.linearisation import NumpyLinearisation
from twin.twin_model import Twin

HORIZON = 6


@pytest.fixture(scope="module")
def twin() -> Twin:
    return tiny_twin()[0]


def _problem(twin: Twin, index: int = 100, metric: bool = True) -> PlanningProblem:
    d = twin.config.embed_dim
    rng = np.random.default_rng(index)
    return PlanningProblem(
        twin.bank.embeddings[index].double().numpy(),
        twin.normalise_actions(np.array([330.0])),
        twin.bank.embeddings[index + 50].double().numpy(),
        metric=np.eye(d) + 0.3 * rng.standard_normal((d, d)) if metric else None,
    )


@pytest.mark.parametrize(
    ("metric", "side"), [(False, None), (True, None), (True, "high"), (True, "low")]
)
def test_the_three_forms_of_the_objective_agree(twin: Twin, metric: bool, side: str | None) -> None:
    """With a limit shift that puts the plan's readouts over a limit, so every term counts."""
    lim = Constraints.from_twin(twin, 0.25)
    cost = PlanningCost.of(PlannerSettings(horizon=HORIZON), lim)
    problem = _problem(twin, metric=metric)
    ramp = problem.u_prev - lim.rate * np.arange(1, HORIZON + 1)[:, None] * 0.9
    U = project_moves(ramp, problem.u_prev, lim)
    model = NumpyLinearisation(
        twin.model.predictor.net,
        twin.model.readout.net,
        twin.config.embed_dim,
        lim.limit_rows.tolist(),
    )
    Z, Y = model.simulate(problem.z0, U.T)
    if side == "high":  # the plant reads above the forecasts: the high limits come nearer
        problem.limit_shift = np.where(
            np.isfinite(lim.y_high), lim.y_high - Y.max(axis=1) + 0.3, 0.0
        )
    elif side == "low":
        problem.limit_shift = np.where(np.isfinite(lim.y_low), lim.y_low - Y.min(axis=1) - 0.3, 0.0)
    exact = cost.numpy(problem, U, Z, Y)

    low, high = problem.sensor_bounds(lim)
    violation = np.maximum(np.maximum(Y - high[:, None], low[:, None] - Y), 0.0)
    assert (violation.sum() > 0.1) == (side is not None)
    metric_dm = ca.DM(problem.metric_or_identity())
    symbolic, before = 0.0, problem.u_prev
    for k in range(HORIZON):
        symbolic += float(
            cost.casadi_stage(
                ca.DM(Z[:, k]),
                ca.DM(problem.z_goal),
                metric_dm,
                ca.DM(U[k]),
                ca.DM(before),
                ca.DM(violation[:, k]),
            )
        )
        before = U[k]
    assert symbolic == pytest.approx(exact, rel=1e-12)

    tensors = TorchProblem.of(problem, lim)
    batched = cost.torch(
        torch.as_tensor(U, dtype=torch.float32)[None],
        torch.as_tensor(Z.T, dtype=torch.float32)[None],
        torch.as_tensor(Y.T, dtype=torch.float32)[None],
        tensors,
        TorchLimits.of(lim).rate,
    )
    assert float(batched[0]) == pytest.approx(exact, rel=1e-5)


def test_the_move_least_squares_is_the_move_term(twin: Twin) -> None:
    lim = Constraints.from_twin(twin, 0.25)
    cost = PlanningCost(0.7, 1e4, lim, lim.rate)
    u_prev = np.array([0.2])
    U = np.random.default_rng(0).uniform(-1, 1, (HORIZON, 1))
    M, c = cost.move_least_squares(HORIZON), cost.move_offset(u_prev, HORIZON)
    direct = 0.7 * float(((np.diff(np.vstack([u_prev, U]), axis=0) / lim.rate) ** 2).sum())
    assert float(((M @ U.ravel() - c) ** 2).sum()) == pytest.approx(direct, rel=1e-12)


def test_one_projection_in_numpy_and_torch(twin: Twin) -> None:
    lim = Constraints.from_twin(twin, 0.25)
    rng = np.random.default_rng(3)
    raw = rng.normal(0.0, 3.0, (16, HORIZON, 1))
    u_prev = np.array([float(lim.u_high[0])])
    batched = (
        project_moves_torch(
            torch.as_tensor(raw, dtype=torch.float32),
            torch.as_tensor(u_prev, dtype=torch.float32)[None],
            TorchLimits.of(lim),
        )
        .double()
        .numpy()
    )
    for sample, projected in zip(raw, batched, strict=True):
        one = project_moves(sample, u_prev, lim)
        np.testing.assert_allclose(projected, one, atol=1e-5)
        assert np.all(one >= lim.u_low) and np.all(one <= lim.u_high)
        moves = np.diff(np.vstack([u_prev, one]), axis=0)
        assert np.all(np.abs(moves) <= lim.rate + 1e-12)


# -- one way to fail ---------------------------------------------------------------------------


def _bad(twin: Twin, what: str) -> PlanningProblem:
    problem = _problem(twin, metric=False)
    if what == "nan-z0":
        problem.z0[0] = np.nan
    elif what == "shape":
        problem.z_goal = problem.z_goal[:-1]
    elif what == "metric":
        problem.metric = np.eye(3)
    elif what == "pinned":
        problem.pinned = np.full((HORIZON, 1), 1e3)
    elif what == "goal-overflow":
        problem.z_goal = np.full_like(problem.z_goal, 1e30)
    return problem


@pytest.mark.parametrize("name", PLANNER_NAMES)
@pytest.mark.parametrize("what", ["nan-z0", "shape", "metric", "pinned", "goal-overflow"])
def test_every_planner_fails_the_same_way(twin: Twin, name: str, what: str) -> None:
    """A problem no planner can solve comes back ok=False with a reason and a plan that
    keeps the bounds, from every planner, never as an exception; a good one then plans."""
    planner = make_planner(name, twin, PlannerSettings(horizon=HORIZON))
    lim = planner.limits
    result = planner.plan(_bad(twin, what))
    if what == "goal-overflow" and result.ok:  # finite in float64: the NLP planners cope
        assert name in ("casadi", "casadi-ipopt", "casadi-fatrop", "hierarchical")
    else:
        assert not result.ok and result.message
        assert result.actions.shape == (HORIZON, 1)
        assert np.all(result.actions >= lim.u_low) and np.all(result.actions <= lim.u_high)
    assert planner.plan(_problem(twin, metric=False)).ok


# -- time against the budget -------------------------------------------------------------------


def test_a_timing_names_the_planner_its_figures_and_its_budget(twin: Twin) -> None:
    planner = CEMPlanner(twin, PlannerSettings(horizon=HORIZON), samples=32, iterations=2)
    timing = time_planner(planner, twin, plans=3)
    assert timing.plans == 3 and timing.failed == 0
    assert 0 < timing.median_ms <= timing.p99_ms <= timing.max_ms
    assert timing.budget_ms == min(1000.0, twin.spec.sample_period_s * 1e3)
    assert "planner cem takes" in timing.summary()
    assert planner._mean is None  # the loop starts the planner cold


def test_fits_is_the_p99_within_the_share_of_the_shorter_budget() -> None:
    def timing(p99: float, deadline: float, period: float) -> PlannerTiming:
        return PlannerTiming("cem", 10, p99 / 2, p99, p99, 0, deadline, period, 0.5)

    assert timing(400.0, 1000.0, 6.0).fits
    assert not timing(600.0, 1000.0, 6.0).fits  # over half the 1 s deadline
    assert not timing(600.0, 5000.0, 1.0).fits  # over half the 1 s sample period
    assert "over 50% of its 1000 ms budget" in timing(600.0, 5000.0, 1.0).summary()
    assert "within" in timing(400.0, 1000.0, 6.0).summary()


def test_a_sampling_planner_over_its_budget_is_rebuilt_smaller(twin: Twin) -> None:
    """A deadline no plan can meet: CEM steps down to the floor and says it does not fit;
    a deadline any plan meets keeps the defaults."""
    tight = PlannerSettings(horizon=HORIZON, deadline_ms=1e-3)
    planner, timing = planner_that_fits("cem", twin, tight, plans=2)
    assert isinstance(planner, CEMPlanner) and not timing.fits
    assert (planner.samples, planner.iterations) == (32, 2)
    assert "over" in timing.summary()
    roomy = PlannerSettings(horizon=HORIZON, deadline_ms=1e7)
    planner, timing = planner_that_fits("mppi", twin, roomy, plans=2)
    assert isinstance(planner, MPPIPlanner) and (planner.samples, planner.iterations) == (256, 4)
    assert timing.budget_ms == twin.spec.sample_period_s * 1e3


def test_a_sampling_planner_stops_iterating_at_its_deadline_share(twin: Twin) -> None:
    settings = PlannerSettings(horizon=HORIZON, deadline_ms=1e-3)
    for planner in (CEMPlanner(twin, settings), MPPIPlanner(twin, settings)):
        result = planner.plan(_problem(twin))
        assert result.ok and result.stats["iterations"] == 1
        assert "stopped early for the deadline (1 of" in result.message


def test_sampling_plans_run_torch_on_one_thread_and_restore_the_count(twin: Twin) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[int] = []
        planner = CEMPlanner(
            twin, PlannerSettings(horizon=HORIZON), samples=16, elites=4, iterations=1
        )
        original = planner.score

        def spying(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return original(*args, **kwargs)

        planner.score = spying  # type: ignore[method-assign]
        assert planner.plan(_problem(twin)).ok
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
