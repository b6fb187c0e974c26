"""Latent planning: the CasADi export equals the torch model; plans keep actuator bounds and
rate limits whatever the goal."""

from __future__ import annotations

import casadi as ca
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twin_fixtures import tiny_twin

from processes import cstr
from twin.model import JEPA, JEPAConfig
from twin.planning import (
    CasadiPlanner,
    CEMPlanner,
    Constraints,
    PlannerSettings,
    PlanningProblem,
    PlanResult,
    casadi_dynamics,
    make_planner,
    torch_mlp_to_casadi,
)
from twin.twin_model import Twin

TOL = 1e-6
D = 8  # embed_dim of the tiny twin


@pytest.fixture(scope="module")
def twin() -> Twin:
    return tiny_twin()[0]


@pytest.fixture(scope="module")
def casadi_planner(twin: Twin) -> CasadiPlanner:
    return CasadiPlanner(twin)


@pytest.fixture(scope="module")
def cem_planner(twin: Twin) -> CEMPlanner:
    return CEMPlanner(twin)


def _max_export_error(model_twin: Twin, n: int = 64) -> tuple[float, float]:
    f, h = casadi_dynamics(model_twin)
    gen = torch.Generator().manual_seed(1)
    d = model_twin.config.embed_dim
    z = 3.0 * torch.randn(n, d, generator=gen)
    u = 2.0 * torch.randn(n, 1, generator=gen)
    with torch.no_grad():
        z_next = model_twin.model.predictor(z, u).double().numpy()
        y = model_twin.model.readout(z).double().numpy()
    zd, ud = z.double().numpy(), u.double().numpy()
    f_err = max(float(np.abs(np.asarray(f(zd[i], ud[i])).ravel() - z_next[i]).max())
                for i in range(n))
    h_err = max(float(np.abs(np.asarray(h(zd[i])).ravel() - y[i]).max()) for i in range(n))
    return f_err, h_err


def test_casadi_export_equals_torch(twin: Twin) -> None:
    f_err, h_err = _max_export_error(twin)
    assert f_err < 1e-5 and h_err < 1e-5


def test_casadi_export_with_deep_predictor_and_tanh_readout(twin: Twin) -> None:
    config = JEPAConfig(window=8, embed_dim=6, encoder_hidden=16, predictor_hidden=12,
                        predictor_layers=2, readout_hidden=5)
    torch.manual_seed(3)
    model = JEPA(config, twin.layout.feature_dim, 1, len(twin.layout.observed))
    other = Twin(twin.spec, config, twin.norm, model, twin.bank)
    f_err, h_err = _max_export_error(other)
    assert f_err < 1e-5 and h_err < 1e-5


def test_export_differs_from_a_different_model(twin: Twin) -> None:
    """The comparison above can fail: perturbing one weight is visible."""
    model = JEPA(twin.config, twin.layout.feature_dim, 1, len(twin.layout.observed))
    model.load_state_dict(twin.model.state_dict())
    with torch.no_grad():
        model.predictor.net[0].bias[0] += 1e-3
    f, _ = casadi_dynamics(Twin(twin.spec, twin.config, twin.norm, model, twin.bank))
    z, u = np.ones(D), np.array([0.5])
    with torch.no_grad():
        expected = twin.model.predictor(torch.ones(1, D), torch.tensor([[0.5]]))[0].numpy()
    assert np.abs(np.asarray(f(z, u)).ravel() - expected).max() > 1e-6


def test_export_rejects_unknown_layers() -> None:
    with pytest.raises(TypeError, match=r"cannot export layer GELU"):
        torch_mlp_to_casadi(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GELU()),
                            ca.SX.sym("x", 2))


def test_constraints_in_normalised_units(twin: Twin) -> None:
    lim = Constraints.from_twin(twin, margin_fraction=0.25)
    norm = twin.norm
    mean_u, std_u = norm.mean[norm.index("Tc")], norm.std[norm.index("Tc")]
    assert lim.u_low == pytest.approx([(cstr.TC_LOW - mean_u) / std_u])
    assert lim.u_high == pytest.approx([(cstr.TC_HIGH - mean_u) / std_u])
    assert lim.rate == pytest.approx([cstr.RATE_PER_SAMPLE / std_u])
    # Ca has low=0, T has high=T_LIMIT: both limited, each on one side, with the margin
    assert lim.limit_rows.tolist() == [0, 1]
    assert lim.y_low[0] == pytest.approx(twin.normalise_sensor("Ca", 0.0) + 0.25)
    assert lim.y_high[0] == np.inf and lim.y_low[1] == -np.inf
    assert lim.y_high[1] == pytest.approx(twin.normalise_sensor("T", cstr.T_LIMIT_K) - 0.25)


def _check_plan(result: PlanResult, lim: Constraints, u_prev: np.ndarray, horizon: int) -> None:
    assert isinstance(result, PlanResult)
    assert result.actions.shape == (horizon, 1)
    assert result.embeddings.shape == (horizon, D)
    u = result.actions
    # bounds hold for every plan the solver returns (interior point keeps simple bounds)
    assert np.all(u >= lim.u_low - TOL), (u.min(), lim.u_low)
    assert np.all(u <= lim.u_high + TOL), (u.max(), lim.u_high)
    if result.ok:
        assert np.all(np.isfinite(u)) and np.isfinite(result.cost)
        moves = np.diff(np.vstack([u_prev[None, :], u]), axis=0)
        worst = float(np.abs(moves).max() - lim.rate.max())
        assert np.all(np.abs(moves) <= lim.rate + TOL), f"rate exceeded by {worst}"


def _problem(data: st.DataObject, twin: Twin, lim: Constraints) -> PlanningProblem:
    big = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
    z_goal = np.array(data.draw(st.lists(big, min_size=D, max_size=D)))
    z0 = np.array(data.draw(st.lists(st.floats(-5.0, 5.0), min_size=D, max_size=D)))
    u_prev = np.array([data.draw(st.floats(float(lim.u_low[0]), float(lim.u_high[0])))])
    return PlanningProblem(z0, u_prev, z_goal)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_casadi_plans_keep_bounds_and_rates(casadi_planner: CasadiPlanner, data) -> None:
    lim = casadi_planner.limits
    problem = _problem(data, casadi_planner.twin, lim)
    if data.draw(st.booleans()):
        casadi_planner.reset()  # else warm-started from the previous (unrelated) example
    result = casadi_planner.plan(problem)
    _check_plan(result, lim, problem.u_prev, casadi_planner.settings.horizon)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cem_plans_keep_bounds_and_rates(cem_planner: CEMPlanner, data) -> None:
    lim = cem_planner.limits
    problem = _problem(data, cem_planner.twin, lim)
    if data.draw(st.booleans()):
        cem_planner.reset()
    result = cem_planner.plan(problem)
    assert result.ok
    _check_plan(result, lim, problem.u_prev, cem_planner.settings.horizon)


@pytest.mark.parametrize("side", ["low", "high"])
@pytest.mark.parametrize("name", ["casadi", "cem"])
def test_plans_from_the_bounds_pushed_outwards(twin: Twin, name: str, side: str) -> None:
    """u_prev exactly at a bound with a goal that wants to go further out."""
    planner = make_planner(name, twin, PlannerSettings(horizon=8))
    lim = planner.limits
    u_prev = lim.u_low.copy() if side == "low" else lim.u_high.copy()
    for sign in (1.0, -1.0):
        result = planner.plan(PlanningProblem(np.zeros(D), u_prev, np.full(D, sign * 1e3)))
        _check_plan(result, lim, u_prev, 8)


def test_casadi_plan_follows_the_twin_dynamics(twin: Twin) -> None:
    planner = CasadiPlanner(twin, PlannerSettings(horizon=10))
    z0 = twin.bank.embeddings[100].double().numpy()
    goal = twin.goal_embedding({"T": 370.0})
    u_prev = twin.normalise_actions(np.array([330.0]))
    result = planner.plan(PlanningProblem(z0, u_prev, goal))
    assert result.ok, result.message
    z = torch.as_tensor(z0, dtype=torch.float32).unsqueeze(0)
    u = torch.as_tensor(result.actions, dtype=torch.float32).unsqueeze(0)
    with torch.no_grad():
        rolled = twin.model.predictor.rollout(z, u)[0].double().numpy()
    np.testing.assert_allclose(result.embeddings, rolled, atol=1e-4)
    # no worse than holding the last action (a feasible point for bounds and rates)
    hold = PlanningProblem(z0, u_prev, goal)
    hold_z = twin.model.predictor.rollout(z, torch.as_tensor(
        np.tile(hold.u_prev, (10, 1)), dtype=torch.float32).unsqueeze(0))[0].detach().numpy()
    y = twin.model.readout(torch.as_tensor(hold_z)).detach().numpy()[:, planner.limits.limit_rows]
    slack = np.maximum(y - planner.limits.y_high, 0) + np.maximum(planner.limits.y_low - y, 0)
    hold_cost = float(((hold_z - goal) ** 2).sum() + 1e4 * slack.sum())
    assert result.cost <= hold_cost * (1 + 1e-5) + 1e-6


def test_cem_is_deterministic_by_seed(twin: Twin) -> None:
    problem = PlanningProblem(np.zeros(D), np.array([0.1]), np.full(D, 2.0))
    a = CEMPlanner(twin, seed=4).plan(problem)
    b = CEMPlanner(twin, seed=4).plan(problem)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.cost == b.cost


def test_make_planner(twin: Twin) -> None:
    assert make_planner("cem", twin).name == "cem"
    with pytest.raises(ValueError, match=r"unknown planner 'lqr'"):
        make_planner("lqr", twin)


@pytest.mark.parametrize("goal", [1e20, float("nan")])
def test_cem_with_non_finite_costs_reports_failure(cem_planner: CEMPlanner, goal: float) -> None:
    result = cem_planner.plan(PlanningProblem(np.zeros(D), np.zeros(1), np.full(D, goal)))
    assert not result.ok
