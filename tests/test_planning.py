"""Latent planning: the CasADi export equals the torch model; plans keep actuator bounds and
rate limits whatever the goal."""

from __future__ import annotations

import math
from functools import lru_cache

import casadi as ca
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twin_fixtures import tiny_twin, with_control

from processes import cstr
from twin.data import Normalizer
from twin.goals import GoalIntegrator
from twin.model import JEPA, JEPAConfig
from twin.planning import (
    PLANNER_NAMES,
    CasadiPlanner,
    CEMPlanner,
    Constraints,
    HierarchicalPlanner,
    MPPIPlanner,
    PlannerSettings,
    PlanningProblem,
    PlanResult,
    RTIPlanner,
    StructuredNLPPlanner,
    TorchProblem,
    casadi_dynamics,
    find_compiler,
    make_planner,
    torch_mlp_to_casadi,
)
from twin.safety import SafetyLayer
from twin.spec import ProcessSpec, Tag, TagRole
from twin.twin_model import GoalBank, Twin

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
    f_err = max(
        float(np.abs(np.asarray(f(zd[i], ud[i])).ravel() - z_next[i]).max()) for i in range(n)
    )
    h_err = max(float(np.abs(np.asarray(h(zd[i])).ravel() - y[i]).max()) for i in range(n))
    return f_err, h_err


def test_casadi_export_equals_torch(twin: Twin) -> None:
    f_err, h_err = _max_export_error(twin)
    assert f_err < 1e-5 and h_err < 1e-5


def test_casadi_export_with_deep_predictor_and_tanh_readout(twin: Twin) -> None:
    config = JEPAConfig(
        window=8,
        embed_dim=6,
        encoder_hidden=16,
        predictor_hidden=12,
        predictor_layers=2,
        readout_hidden=5,
    )
    torch.manual_seed(3)
    model = JEPA(config, twin.layout.feature_dim, 1, len(twin.layout.observed))
    other = Twin(twin.spec, config, twin.norm, model, twin.bank)
    f_err, h_err = _max_export_error(other)
    assert f_err < 1e-5 and h_err < 1e-5


def test_casadi_export_with_a_linear_dose_path(twin: Twin) -> None:
    config = JEPAConfig(
        window=8, embed_dim=6, encoder_hidden=16, predictor_hidden=12, dose_actions=(0,)
    )
    torch.manual_seed(4)
    model = JEPA(config, twin.layout.feature_dim, 1, len(twin.layout.observed))
    with torch.no_grad():
        model.predictor.action_gain.weight.mul_(10.0)  # a path the export cannot round away
    f_err, h_err = _max_export_error(Twin(twin.spec, config, twin.norm, model, twin.bank))
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
        torch_mlp_to_casadi(
            torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GELU()), ca.SX.sym("x", 2)
        )


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
@pytest.mark.parametrize("name", ["casadi", "casadi-ipopt", "cem", "mppi"])
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
    hold_z = (
        twin.model.predictor.rollout(
            z, torch.as_tensor(np.tile(hold.u_prev, (10, 1)), dtype=torch.float32).unsqueeze(0)
        )[0]
        .detach()
        .numpy()
    )
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


# -- the real-time-iteration planner (the default `casadi`), MPPI, and what reaches the plant --


def _rti(twin: Twin, **kwargs) -> RTIPlanner:
    return RTIPlanner(twin, PlannerSettings(horizon=10), **kwargs)


@pytest.fixture(scope="module")
def rti_planner(twin: Twin) -> RTIPlanner:
    return RTIPlanner(twin)


@pytest.fixture(scope="module")
def mppi_planner(twin: Twin) -> MPPIPlanner:
    return MPPIPlanner(twin)


def _bank_problem(
    twin: Twin, index: int = 100, setpoint_k: float = 370.0, tc: float = 330.0
) -> PlanningProblem:
    z0 = twin.bank.embeddings[index].double().numpy()
    return PlanningProblem(
        z0, twin.normalise_actions(np.array([tc])), twin.goal_embedding({"T": setpoint_k})
    )


def test_make_planner_knows_every_name(twin: Twin) -> None:
    kinds = {
        "casadi": RTIPlanner,
        "casadi-ipopt": CasadiPlanner,
        "casadi-fatrop": StructuredNLPPlanner,
        "cem": CEMPlanner,
        "mppi": MPPIPlanner,
        "hierarchical": HierarchicalPlanner,
    }
    assert set(kinds) == set(PLANNER_NAMES)
    for name, kind in kinds.items():
        planner = make_planner(name, twin, PlannerSettings(horizon=4))
        assert isinstance(planner, kind) and planner.name == name


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_rti_plans_keep_bounds_and_rates(rti_planner: RTIPlanner, data) -> None:
    lim = rti_planner.limits
    problem = _problem(data, rti_planner.twin, lim)
    if data.draw(st.booleans()):
        rti_planner.reset()
    result = rti_planner.plan(problem)
    _check_plan(result, lim, problem.u_prev, rti_planner.settings.horizon)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mppi_plans_keep_bounds_and_rates(mppi_planner: MPPIPlanner, data) -> None:
    lim = mppi_planner.limits
    problem = _problem(data, mppi_planner.twin, lim)
    if data.draw(st.booleans()):
        mppi_planner.reset()
    result = mppi_planner.plan(problem)
    assert result.ok
    _check_plan(result, lim, problem.u_prev, mppi_planner.settings.horizon)


def test_rti_reaches_the_ipopt_optimum(twin: Twin) -> None:
    problem = _bank_problem(twin)
    reference = CasadiPlanner(twin, PlannerSettings(horizon=10)).plan(problem)
    converged = _rti(twin, sqp_iterations=60, step_tolerance=1e-9).plan(problem)
    assert reference.ok and converged.ok, (reference.message, converged.message)
    assert converged.cost == pytest.approx(reference.cost, rel=0.02)
    np.testing.assert_allclose(converged.actions[0], reference.actions[0], atol=0.05)


def test_rti_plan_follows_the_twin_dynamics_and_reports_its_cost(twin: Twin) -> None:
    planner = _rti(twin)
    problem = _bank_problem(twin)
    result = planner.plan(problem)
    assert result.ok, result.message
    z = torch.as_tensor(problem.z0, dtype=torch.float32).unsqueeze(0)
    u = torch.as_tensor(result.actions, dtype=torch.float32).unsqueeze(0)
    with torch.no_grad():
        rolled = twin.model.predictor.rollout(z, u)[0].double().numpy()
    np.testing.assert_allclose(result.embeddings, rolled, atol=1e-4)
    y = twin.model.readout(torch.as_tensor(rolled, dtype=torch.float32)).detach().double()
    y = y.numpy()[:, planner.limits.limit_rows]
    slack = np.maximum(np.maximum(y - planner.limits.y_high, planner.limits.y_low - y), 0)
    moves = np.diff(np.vstack([problem.u_prev, result.actions]), axis=0) / planner.limits.rate
    expected = ((rolled - problem.z_goal) ** 2).sum() + 0.5 * (moves**2).sum() + 1e4 * slack.sum()
    assert result.cost == pytest.approx(expected, rel=1e-4)


def test_rti_keeps_sensor_limits_when_it_can(twin: Twin) -> None:
    """A goal beyond the temperature limit: the plan stops at the (backed-off) limit."""
    planner = _rti(twin, sqp_iterations=30)
    lim = planner.limits
    problem = _bank_problem(twin, setpoint_k=cstr.T_LIMIT_K - 0.01)
    problem.z_goal = problem.z_goal + 3.0 * (problem.z_goal - problem.z0)  # further out
    hold = np.tile(problem.u_prev, (10, 1))
    with torch.no_grad():
        z_hold = twin.model.predictor.rollout(
            torch.as_tensor(problem.z0, dtype=torch.float32).unsqueeze(0),
            torch.as_tensor(hold, dtype=torch.float32).unsqueeze(0),
        )
        y_hold = twin.model.readout(z_hold)[0].double().numpy()[:, lim.limit_rows]
    assert np.all(y_hold <= lim.y_high) and np.all(y_hold >= lim.y_low)  # feasible start
    result = planner.plan(problem)
    assert result.ok, result.message
    y = twin.model.readout(torch.as_tensor(result.embeddings, dtype=torch.float32))
    y = y.detach().double().numpy()[:, lim.limit_rows]
    assert np.all(y <= lim.y_high + 1e-3) and np.all(y >= lim.y_low - 1e-3)


def test_rti_warm_start_carries_across_steps(twin: Twin) -> None:
    """After a converged step, one iteration from the shifted plan does better than one
    iteration from holding, and no worse than the shifted plan itself."""
    warm, cold = _rti(twin, sqp_iterations=40), _rti(twin, sqp_iterations=1)
    problem = _bank_problem(twin, setpoint_k=375.0)
    first = warm.plan(problem)
    assert first.ok
    warm.sqp_iterations = 1
    advanced = PlanningProblem(first.embeddings[0], first.actions[0], problem.z_goal)
    shifted = np.vstack([first.actions[1:], first.actions[-1:]])
    Z, Y = warm._rollout(advanced.z0, shifted)
    shifted_cost = warm.cost.numpy(advanced, shifted, Z, Y)
    from_warm, from_hold = warm.plan(advanced), cold.plan(advanced)
    assert from_warm.ok and from_hold.ok
    assert from_warm.cost <= shifted_cost + 1e-9
    assert from_warm.cost < from_hold.cost


def test_rti_reports_a_failed_qp(twin: Twin) -> None:
    planner = _rti(twin)

    class FailingQP:
        name = "failing"

        def solve(self, *_: object, **__: object) -> None:
            return None  # what DAQPSolver and CasadiQPSolver answer when the solver fails

    planner._qp = FailingQP()
    problem = _bank_problem(twin)
    result = planner.plan(problem)
    assert not result.ok and "failed" in result.message
    _check_plan(result, planner.limits, problem.u_prev, 10)
    assert planner._warm is None  # a failed plan never seeds the next one


@pytest.mark.parametrize("field", ["z0", "u_prev", "z_goal"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_rti_rejects_non_finite_problems(twin: Twin, field: str, bad: float) -> None:
    planner = _rti(twin)
    problem = _bank_problem(twin)
    getattr(problem, field)[0] = bad
    result = planner.plan(problem)
    assert not result.ok and "not finite" in result.message
    lim = planner.limits
    assert np.all(result.actions >= lim.u_low) and np.all(result.actions <= lim.u_high)


def test_compiled_linearisation_matches_and_falls_back(twin: Twin, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TWIN_CASADI_CACHE", str(tmp_path))
    problem = _bank_problem(twin)
    reference = _rti(twin).plan(problem)
    monkeypatch.setattr("twin.planning.compile_cache.find_compiler", lambda: None)
    without = _rti(twin, compile=True)
    assert not without.compiled and not list(tmp_path.iterdir())
    np.testing.assert_allclose(without.plan(problem).actions, reference.actions, atol=1e-9)
    monkeypatch.undo()
    monkeypatch.setenv("TWIN_CASADI_CACHE", str(tmp_path))
    if find_compiler() is None:
        pytest.skip("no C compiler on this machine")
    built = _rti(twin, compile=True)
    assert built.compiled and len(list(tmp_path.glob("*.so"))) == 2
    np.testing.assert_allclose(built.plan(problem).actions, reference.actions, atol=1e-6)
    cached = list(tmp_path.glob("*.so"))
    again = _rti(twin, compile=True)  # a second build reuses the cached libraries
    assert again.compiled and sorted(tmp_path.glob("*.so")) == sorted(cached)


def test_mppi_is_deterministic_by_seed_and_fails_on_non_finite_costs(twin: Twin) -> None:
    problem = PlanningProblem(np.zeros(D), np.array([0.1]), np.full(D, 2.0))
    a, b = MPPIPlanner(twin, seed=4).plan(problem), MPPIPlanner(twin, seed=4).plan(problem)
    np.testing.assert_array_equal(a.actions, b.actions)
    bad = MPPIPlanner(twin).plan(PlanningProblem(np.zeros(D), np.zeros(1), np.full(D, np.nan)))
    assert not bad.ok


def test_mppi_improves_on_holding(twin: Twin) -> None:
    planner = MPPIPlanner(twin, PlannerSettings(horizon=10))
    problem = _bank_problem(twin, setpoint_k=375.0)
    result = planner.plan(problem)
    hold = np.tile(problem.u_prev, (10, 1))
    u = torch.as_tensor(hold, dtype=torch.float32).unsqueeze(0)
    cost, _ = planner.score(u, TorchProblem.of(problem, planner.limits))
    assert result.ok and result.cost < float(cost[0])


# -- random small twins: whatever a planner returns, the safety layer's output is safe ---------


def _small_spec(n_actuators: int) -> ProcessSpec:
    tags = [
        Tag(name="y_hi", role=TagRole.SENSOR, unit="1", high=1.0),
        Tag(name="y_lo", role=TagRole.SENSOR, unit="1", low=-1.0),
    ]
    tags += [
        Tag(
            name=f"u{i}",
            role=TagRole.ACTUATOR,
            unit="bar",
            low=-1.0 - i,
            high=2.0,
            rate_limit=0.1 * (i + 1),
            nominal=0.0,
        )
        for i in range(n_actuators)
    ]
    return ProcessSpec(name=f"small-{n_actuators}", sample_period_s=2.0, tags=tuple(tags))


@lru_cache(maxsize=8)
def _small_twin(n_actuators: int, embed_dim: int, seed: int) -> Twin:
    spec = _small_spec(n_actuators)
    names = tuple(t.name for t in spec.tags)
    rng = np.random.default_rng(seed)
    norm = Normalizer(
        names,
        tuple(rng.normal(0, 0.3, len(names)).tolist()),
        tuple(rng.uniform(0.5, 2.0, len(names)).tolist()),
    )
    config = JEPAConfig(window=4, embed_dim=embed_dim, encoder_hidden=8, predictor_hidden=8)
    torch.manual_seed(seed)
    model = JEPA(config, len(names), n_actuators, 2)
    bank = GoalBank(torch.randn(4, embed_dim), torch.randn(4, 2), torch.zeros(4))
    return Twin(spec, config, norm, model, bank)


odd_float = st.one_of(
    st.floats(-1e6, 1e6), st.just(math.nan), st.just(math.inf), st.just(-math.inf)
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_actuators=st.integers(1, 2),
    embed_dim=st.sampled_from([2, 3]),
    seed=st.integers(0, 3),
    name=st.sampled_from(["casadi", "mppi", "cem"]),
    data=st.data(),
)
def test_any_plan_through_the_safety_layer_is_safe(
    n_actuators: int, embed_dim: int, seed: int, name: str, data
) -> None:
    twin = _small_twin(n_actuators, embed_dim, seed)
    planner = make_planner(name, twin, PlannerSettings(horizon=5))
    spec = twin.spec
    z0 = np.array(data.draw(st.lists(odd_float, min_size=embed_dim, max_size=embed_dim)))
    goal = np.array(data.draw(st.lists(odd_float, min_size=embed_dim, max_size=embed_dim)))
    previous = {
        t.name: data.draw(st.one_of(st.floats(t.low, t.high), odd_float)) for t in spec.actuators
    }
    u_prev = twin.normalise_actions(np.array([previous[t.name] for t in spec.actuators]))
    try:
        result = planner.plan(PlanningProblem(z0, u_prev, goal))
        first = twin.denormalise_actions(result.actions[0])
        proposal = {t.name: float(v) for t, v in zip(spec.actuators, first, strict=True)}
    except Exception:  # noqa: BLE001 - the controller treats a raising planner as failed
        proposal = {}
    safe = SafetyLayer(spec).enforce(proposal, previous).actuators
    for tag in spec.actuators:
        value = safe[tag.name]
        assert math.isfinite(value) and tag.low <= value <= tag.high
        before = previous[tag.name]
        if math.isfinite(before) and tag.low <= before <= tag.high:
            assert abs(value - before) <= spec.rate_limit_per_sample(tag) + 1e-9


def _weighted_problem(twin: Twin) -> PlanningProblem:
    """A goal with a strong weight on the temperature's readout (the controller's tracking
    metric, W'W = I + 30 J'J)."""
    problem = _bank_problem(twin)
    jacobian = twin.readout_jacobian(problem.z_goal, ["T"])
    gram = np.eye(len(problem.z_goal)) + 30.0 * jacobian.T @ jacobian
    problem.metric = np.linalg.cholesky(gram).T
    return problem


def _objective(
    twin: Twin, problem: PlanningProblem, actions: np.ndarray, limits: Constraints
) -> float:
    """The planners' objective recomputed from scratch: |W (z - z_goal)|^2 per stage."""
    with torch.no_grad():
        rolled = (
            twin.model.predictor.rollout(
                torch.as_tensor(problem.z0, dtype=torch.float32).unsqueeze(0),
                torch.as_tensor(actions, dtype=torch.float32).unsqueeze(0),
            )[0]
            .double()
            .numpy()
        )
    y = twin.model.readout(torch.as_tensor(rolled, dtype=torch.float32)).detach().double()
    y = y.numpy()[:, limits.limit_rows]
    slack = np.maximum(np.maximum(y - limits.y_high, limits.y_low - y), 0)
    moves = np.diff(np.vstack([problem.u_prev, actions]), axis=0) / limits.rate
    tracking = (((rolled - problem.z_goal) @ problem.metric_or_identity().T) ** 2).sum()
    return float(tracking + 0.5 * (moves**2).sum() + 1e4 * slack.sum())


def test_a_tracking_metric_reaches_every_planner(twin: Twin) -> None:
    """RTI, IPOPT, the fatrop layout and the sampling planners score the same weighted
    objective: the converged RTI meets IPOPT's optimum, each reports the cost of its own
    plan, and the metric changes the plan (it is not dropped on the way)."""
    problem = _weighted_problem(twin)
    settings = PlannerSettings(horizon=10)
    reference = CasadiPlanner(twin, settings).plan(problem)
    converged = _rti(twin, sqp_iterations=60, step_tolerance=1e-9).plan(problem)
    structured = StructuredNLPPlanner(twin, settings, solver="ipopt").plan(problem)
    assert reference.ok and converged.ok and structured.ok
    limits = Constraints.from_twin(twin, settings.limit_margin)
    for result in (reference, converged, structured):
        assert result.cost == pytest.approx(
            _objective(twin, problem, result.actions, limits), rel=1e-3
        )
    assert converged.cost == pytest.approx(reference.cost, rel=0.02)
    assert structured.cost == pytest.approx(reference.cost, rel=0.02)
    for sampler in (CEMPlanner(twin, settings), MPPIPlanner(twin, settings)):
        sampled = sampler.plan(problem)
        assert sampled.ok
        assert sampled.cost == pytest.approx(
            _objective(twin, problem, sampled.actions, limits), rel=1e-3
        )
        assert sampled.cost >= reference.cost * (1 - 0.02)  # IPOPT's optimum is the floor
    plain = PlanningProblem(problem.z0, problem.u_prev, problem.z_goal)
    unweighted = CasadiPlanner(twin, settings).plan(plain)
    assert _objective(twin, problem, unweighted.actions, limits) > reference.cost * 1.001


def test_the_controller_weighs_the_setpoint_error_as_its_spec_says(twin: Twin) -> None:
    """W'W = I + w J'J at the goal, with w from the spec unless the caller sets it; a zero
    weight plans on the plain embedding distance."""
    from twin.controller import TwinController

    setpoints = {"T": 370.0}
    measurements = {"Ca": 0.5, "T": 360.0, "Caf": 1.0, "Tf": 350.0}
    for weight, expected in ((None, twin.spec.control.tracking_weight), (3.0, 3.0)):
        controller = TwinController(twin, RTIPlanner(twin), tracking_weight=weight)
        assert controller.tracking_weight == expected > 0
        goal = controller.goals.goal_for(setpoints, measurements)
        metric = controller.goals.metric
        assert metric is not None
        jacobian = twin.readout_jacobian(controller.goals.goal, ["T"])
        np.testing.assert_allclose(
            metric.T @ metric, np.eye(D) + expected * jacobian.T @ jacobian, atol=1e-9
        )
        assert np.all(np.isfinite(goal))
    plain = TwinController(twin, RTIPlanner(twin), tracking_weight=0.0)
    plain.goals.goal_for(setpoints, measurements)
    assert plain.goals.metric is None


def _shifted_limit_problem(
    twin: Twin, lim: Constraints, shift_t: float
) -> tuple[PlanningProblem, int]:
    """A goal past the temperature limit, with `shift_t` (normalised) as T's limit shift."""
    problem = _bank_problem(twin, setpoint_k=cstr.T_LIMIT_K - 0.01)
    problem.z_goal = problem.z_goal + 3.0 * (problem.z_goal - problem.z0)
    row = list(lim.limit_rows).index(twin.layout.observed.index("T"))
    problem.limit_shift = np.zeros(len(lim.limit_rows))
    problem.limit_shift[row] = shift_t
    return problem, row


def _peak_t(twin: Twin, result: PlanResult, row: int, lim: Constraints) -> float:
    y = twin.model.readout(torch.as_tensor(result.embeddings, dtype=torch.float32))
    return float(y.detach().double().numpy()[:, lim.limit_rows][:, row].max())


def test_a_limit_shift_only_tightens(twin: Twin) -> None:
    lim = Constraints.from_twin(twin, 0.25)
    problem, row = _shifted_limit_problem(twin, lim, 0.3)
    low, high = problem.sensor_bounds(lim)
    assert high[row] == pytest.approx(lim.y_high[row] - 0.3)
    assert np.array_equal(low, lim.y_low)  # a plant reading high leaves low limits alone
    problem.limit_shift = -problem.limit_shift
    low, high = problem.sensor_bounds(lim)
    assert np.array_equal(high, lim.y_high) and np.array_equal(low, lim.y_low)


@pytest.mark.parametrize(
    "name", ["casadi", "casadi-ipopt", "casadi-fatrop", "cem", "mppi", "hierarchical"]
)
def test_a_limit_shift_reaches_every_planner(twin: Twin, name: str) -> None:
    """The plan keeps T's readout under the limit less the shift (the plant has read above
    the twin's forecasts), and reports the cost against those limits."""
    settings = PlannerSettings(horizon=10)
    planner = make_planner(name, twin, settings)
    if isinstance(planner, RTIPlanner):
        planner = _rti(twin, sqp_iterations=30)
    lim = planner.limits if hasattr(planner, "limits") else Constraints.from_twin(twin, 0.25)
    free, row = _shifted_limit_problem(twin, lim, 0.0)
    unshifted = planner.plan(free)
    assert unshifted.ok, unshifted.message
    peak = _peak_t(twin, unshifted, row, lim)
    # a shift that puts T's limit 0.3 std under the unshifted plan's peak
    shifted_problem, _ = _shifted_limit_problem(twin, lim, lim.y_high[row] - peak + 0.3)
    planner.reset()
    shifted = planner.plan(shifted_problem)
    assert shifted.ok, shifted.message
    assert _peak_t(twin, shifted, row, lim) <= peak - 0.3 + 0.02


def _pinned_ramp(planner_limits: Constraints, u_prev: np.ndarray, horizon: int) -> np.ndarray:
    """A feasible pinned column for the one actuator: down at half the rate limit."""
    steps = u_prev[0] - 0.5 * planner_limits.rate[0] * np.arange(1, horizon + 1)
    return np.clip(steps, planner_limits.u_low[0], planner_limits.u_high[0])[:, None]


@pytest.mark.parametrize(
    "name", ["casadi", "casadi-ipopt", "casadi-fatrop", "cem", "mppi", "hierarchical"]
)
def test_pinned_moves_bind_every_planner(twin: Twin, name: str) -> None:
    """Moves a baseline drives (`control.baseline_actuators`) come back as given, whatever
    the plan would have made of them, and the plan's embeddings follow them."""
    planner = make_planner(name, twin, PlannerSettings(horizon=6))
    problem = _bank_problem(twin)
    free = planner.plan(problem)
    problem.pinned = _pinned_ramp(planner.limits, problem.u_prev, 6)
    assert not np.allclose(free.actions, problem.pinned)  # pinning changes the plan
    planner.reset()
    pinned = planner.plan(problem)
    assert pinned.ok, pinned.message
    np.testing.assert_allclose(pinned.actions, problem.pinned, atol=1e-6)
    rolled = (
        twin.model.predictor.rollout(
            torch.as_tensor(problem.z0, dtype=torch.float32)[None],
            torch.as_tensor(problem.pinned, dtype=torch.float32)[None],
        )[0]
        .detach()
        .numpy()
    )
    np.testing.assert_allclose(pinned.embeddings, rolled, atol=1e-3)


@pytest.mark.parametrize(
    ("pinned", "words"),
    [
        (np.zeros((5, 1)), "pinned shape"),
        (np.array([[0.0], [np.nan], [0.0], [0.0], [0.0], [0.0]]), "some steps only"),
        (np.full((6, 1), 1e3), "bounds or rate limits"),
    ],
)
def test_pinned_moves_that_cannot_be_met_are_refused(
    twin: Twin, pinned: np.ndarray, words: str
) -> None:
    planner = RTIPlanner(twin, PlannerSettings(horizon=6))
    problem = _bank_problem(twin)
    problem.pinned = pinned
    result = planner.plan(problem)
    assert not result.ok and words in result.message


@pytest.mark.parametrize("shift", [[0.1, 0.2, 0.3], [math.nan, 0.0], [math.inf, 0.0]])
def test_a_bad_limit_shift_is_refused(twin: Twin, shift: list[float]) -> None:
    planner = _rti(twin)
    problem = _bank_problem(twin)
    problem.limit_shift = np.array(
        shift[: len(planner.limits.limit_rows)] if len(shift) == 2 else shift
    )
    result = planner.plan(problem)
    assert not result.ok and "limit_shift" in result.message


def test_the_spec_sets_the_plans_limit_margin(twin: Twin) -> None:
    tight = with_control(twin, limit_margin=0.1)
    assert PlannerSettings.for_twin(tight).limit_margin == 0.1
    assert PlannerSettings.for_twin(twin).limit_margin == 0.25
    row = RTIPlanner(tight).limits
    assert np.allclose(
        row.y_high[np.isfinite(row.y_high)],
        Constraints.from_twin(twin, 0.1).y_high[np.isfinite(row.y_high)],
    )


def test_the_goal_is_a_steady_state_at_the_setpoint_before_the_conditions(twin: Twin) -> None:
    """Eight bank states are steady at the asked temperature under a feed 2 std off the
    present one, eight at the present feed but 1 std off the temperature, eight at both
    but unsteady: the goal is made of the first. Weighing setpoint, steadiness and
    condition alike would take the unsteady ones."""
    d, observed = twin.config.embed_dim, twin.layout.observed
    t_col, feed_col = observed.index("T"), observed.index("Tf")
    target = 365.0
    rows = np.zeros((24, len(observed)))
    rows[:, t_col] = twin.normalise_sensor("T", target)
    rows[:8, feed_col] = 2.0  # steady at the setpoint, far from the present feed (0 std)
    rows[8:16, t_col] += 1.0  # steady at the present feed, off the setpoint
    unsteadiness = torch.zeros(24)
    unsteadiness[16:] = 1.0  # at the setpoint and the feed, but mid-transient
    embeddings = np.zeros((24, d))
    embeddings[:8, 0], embeddings[8:16, 0], embeddings[16:, 0] = 1.0, -1.0, 0.5
    bank = GoalBank(
        torch.tensor(embeddings, dtype=torch.float32),
        torch.tensor(rows, dtype=torch.float32),
        unsteadiness,
    )
    staged = Twin(twin.spec, twin.config, twin.norm, twin.model, bank, twin.metrics)
    feed = float(twin.norm.mean[twin.norm.index("Tf")])
    assert staged.goal_embedding({"T": target}, {"Tf": feed})[0] == pytest.approx(1.0)
    alike = with_control(staged, setpoint_priority=1.0)
    assert alike.goal_embedding({"T": target}, {"Tf": feed})[0] == pytest.approx(0.5)


def test_the_goal_is_the_cheapest_steady_state_near_the_setpoint(twin: Twin) -> None:
    """With Ca declared an economic sensor to maximise (`control.economic`), the goal is
    picked from the bank states near the temperature setpoint that hold the most Ca: 0.3
    std off the setpoint for 2 std more Ca (inside the give), not 1.2 std off for 4 std
    more (beyond it: worse than the states at the setpoint); without the declaration the
    states at the setpoint win."""
    d, observed = twin.config.embed_dim, twin.layout.observed
    t_col, ca_col = observed.index("T"), observed.index("Ca")
    target = 365.0
    rows = np.zeros((24, len(observed)))
    rows[:, t_col] = twin.normalise_sensor("T", target)
    rows[8:16, t_col] += 0.3
    rows[8:16, ca_col] = 2.0
    rows[16:, t_col] += 1.2
    rows[16:, ca_col] = 4.0
    embeddings = np.zeros((24, d))
    embeddings[:8, 0], embeddings[8:16, 0], embeddings[16:, 0] = 1.0, 2.0, 3.0
    bank = GoalBank(
        torch.tensor(embeddings, dtype=torch.float32),
        torch.tensor(rows, dtype=torch.float32),
        torch.zeros(24),
    )
    staged = Twin(twin.spec, twin.config, twin.norm, twin.model, bank, twin.metrics)
    assert GoalIntegrator(staged, 0.0, 0.0).goal_for({"T": target}, {})[0] == pytest.approx(1.0)
    priced = with_control(staged, economic={"Ca": "maximise"})
    assert GoalIntegrator(priced, 0.0, 0.0).goal_for({"T": target}, {})[0] == pytest.approx(2.0)
