"""The real-time-iteration planner's numerics: the numpy linearisation equals CasADi's, the
warm-started DAQP solve equals a cold one, and the warm start carries the active set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from twin_fixtures import tiny_twin

from twin.data import Normalizer
from twin.model import JEPA, JEPAConfig
from twin.planning import (
    CasadiLinearisation,
    PlannerSettings,
    PlanningProblem,
    RTIPlanner,
)
from twin.planning.dense_qp import CasadiQPSolver, DAQPSolver
from twin.planning.linearisation import NumpyLinearisation, mlp_layers
from twin.spec import ProcessSpec, Tag, TagRole
from twin.twin_model import GoalBank, Twin


@pytest.fixture(scope="module")
def twin() -> Twin:
    return tiny_twin()[0]


def _random_twin(
    n_actuators: int,
    embed_dim: int,
    layers: int,
    readout_hidden: int,
    limited: bool,
    seed: int,
    dose_actions: tuple[int, ...] = (),
) -> Twin:
    tags = [
        Tag(name="y_hi", role=TagRole.SENSOR, unit="1", high=1.5 if limited else None),
        Tag(name="y_lo", role=TagRole.SENSOR, unit="1", low=-1.5 if limited else None),
    ]
    tags += [
        Tag(
            name=f"u{i}",
            role=TagRole.ACTUATOR,
            unit="1",
            low=-2.0,
            high=2.0,
            rate_limit=0.25,
            nominal=0.0,
        )
        for i in range(n_actuators)
    ]
    spec = ProcessSpec(name="random", sample_period_s=1.0, tags=tuple(tags))
    names = tuple(t.name for t in spec.tags)
    norm = Normalizer(names, tuple(0.0 for _ in names), tuple(1.0 for _ in names))
    config = JEPAConfig(
        window=4,
        embed_dim=embed_dim,
        encoder_hidden=8,
        predictor_hidden=24,
        predictor_layers=layers,
        readout_hidden=readout_hidden,
        dose_actions=dose_actions,
    )
    torch.manual_seed(seed)
    model = JEPA(config, len(names), n_actuators, 2)
    bank = GoalBank(torch.randn(8, embed_dim), torch.randn(8, 2), torch.zeros(8))
    return Twin(spec, config, norm, model, bank)


@pytest.mark.parametrize(
    ("n_actuators", "layers", "readout_hidden", "limited"),
    [(1, 1, 0, True), (3, 2, 0, True), (2, 2, 5, True), (2, 1, 0, False)],
)
def test_numpy_linearisation_equals_casadis(
    n_actuators: int, layers: int, readout_hidden: int, limited: bool
) -> None:
    twin = _random_twin(n_actuators, 6, layers, readout_hidden, limited, seed=n_actuators)
    planner = RTIPlanner(twin, PlannerSettings(horizon=7))
    rows = planner.limits.limit_rows.tolist()
    assert len(rows) == (2 if limited else 0)
    fast = NumpyLinearisation(twin.model.predictor.net, twin.model.readout.net, 6, rows)
    exact = CasadiLinearisation(twin, 7, rows, compile=False)
    rng = np.random.default_rng(0)
    z0, U = rng.normal(0, 2, 6), rng.normal(0, 1, (n_actuators, 7))
    for ours, theirs in zip(fast.linearise(z0, U), exact.linearise(z0, U), strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-10)
    for ours, theirs in zip(fast.simulate(z0, U), exact.simulate(z0, U), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-10)


def test_linear_dose_path_in_both_linearisations_equals_torch() -> None:
    """The predictor's linear path B u of its doses is in the step and in d z_next / d u,
    in numpy and CasADi alike, and both roll out what torch's predictor does."""
    twin = _random_twin(2, 6, 1, 0, True, seed=4, dose_actions=(0,))
    gain = twin.model.predictor.action_matrix().double().numpy()
    assert np.abs(gain[:, 0]).max() > 0.05  # the path is there to be missed
    assert not gain[:, 1].any()  # u1 is no dose: no linear path
    planner = RTIPlanner(twin, PlannerSettings(horizon=5))
    rows = planner.limits.limit_rows.tolist()
    fast = NumpyLinearisation(twin.model.predictor.net, twin.model.readout.net, 6, rows, gain)
    exact = CasadiLinearisation(twin, 5, rows, compile=False)
    rng = np.random.default_rng(1)
    z0, U = rng.normal(0, 1, 6), rng.normal(0, 1, (2, 5))
    for ours, theirs in zip(fast.linearise(z0, U), exact.linearise(z0, U), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-10)
    with torch.no_grad():
        rolled = (
            twin.model.predictor.rollout(
                torch.tensor(z0, dtype=torch.float32)[None],
                torch.tensor(U.T, dtype=torch.float32)[None],
            )[0]
            .double()
            .numpy()
        )
    np.testing.assert_allclose(fast.simulate(z0, U)[0].T, rolled, atol=1e-5)
    without = NumpyLinearisation(twin.model.predictor.net, twin.model.readout.net, 6, rows)
    assert np.abs(without.simulate(z0, U)[0].T - rolled).max() > 1e-3
    # B_0 (both start at z0): the MLP's own input Jacobian plus the path's gain
    b_with, b_without = fast.linearise(z0, U)[2][0], without.linearise(z0, U)[2][0]
    assert np.abs(b_with - b_without - gain).max() < 1e-10


def test_numpy_linearisation_sees_a_changed_weight(twin: Twin) -> None:
    """The comparison above can fail: a perturbed weight changes the Jacobians."""
    rows = [0, 1]
    before = NumpyLinearisation(twin.model.predictor.net, twin.model.readout.net, 8, rows)
    model = JEPA(twin.config, twin.layout.feature_dim, 1, len(twin.layout.observed))
    model.load_state_dict(twin.model.state_dict())
    with torch.no_grad():
        model.predictor.net[0].weight[0, 0] += 1e-3
    after = NumpyLinearisation(model.predictor.net, model.readout.net, 8, rows)
    z0, U = np.ones(8), np.full((1, 5), 0.3)
    assert np.abs(before.linearise(z0, U)[1] - after.linearise(z0, U)[1]).max() > 1e-7


def test_linearisation_rejects_layers_it_cannot_differentiate() -> None:
    with pytest.raises(TypeError, match="cannot linearise layer GELU"):
        mlp_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GELU()))
    with pytest.raises(TypeError, match="starts and ends with a Linear"):
        mlp_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh()))


def _random_qp(seed: int, n: int = 12, m: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    root = rng.normal(size=(n, n))
    rows = rng.normal(size=(m, n))
    return {
        "hess": root @ root.T + n * np.eye(n),
        "grad": rng.normal(0, 5, n),
        "rows": rows,
        "lba": np.full(m, -1.0),
        "uba": rng.uniform(0.2, 1.0, m),
        "lbx": np.full(n, -0.3),
        "ubx": np.full(n, 0.3),
    }


@pytest.mark.parametrize("seed", range(4))
def test_daqp_equals_casadis_qp_solver_and_ignores_a_bad_warm_start(seed: int) -> None:
    qp = _random_qp(seed)
    reference = CasadiQPSolver("qpoases", 12, 10).solve(**qp)
    cold = DAQPSolver().solve(**qp)
    assert reference is not None and cold is not None
    np.testing.assert_allclose(cold.x, reference.x, atol=1e-6)
    # the multipliers of the same problem: DAQP starts at the solution's active set
    warm = DAQPSolver().solve(**qp, start=cold.multipliers)
    assert warm is not None and warm.iterations <= max(1, cold.iterations // 2)
    np.testing.assert_allclose(warm.x, cold.x, atol=1e-8)
    # nonsense multipliers (every constraint claimed active) still end at the optimum
    nonsense = np.random.default_rng(seed).choice([-1.0, 1.0], size=22)
    wild = DAQPSolver().solve(**qp, start=nonsense)
    assert wild is not None
    np.testing.assert_allclose(wild.x, cold.x, atol=1e-6)
    # multipliers that are not numbers, or of another problem's size, are not used at all
    for broken in (np.full(22, np.nan), np.full(22, np.inf), np.ones(5)):
        solution = DAQPSolver().solve(**qp, start=broken)
        assert solution is not None
        np.testing.assert_allclose(solution.x, cold.x, atol=1e-8)


def test_daqp_reports_an_infeasible_qp() -> None:
    qp = _random_qp(0)
    qp["lba"], qp["uba"] = np.full(10, 5.0), np.full(10, 6.0)  # unreachable inside the box
    assert DAQPSolver().solve(**qp) is None


def test_daqp_retries_a_cycling_active_set_with_proximal_iterations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A solve that cycles (DAQP exit flag -2, as on ill-conditioned Hessians) is tried
    once more with proximal regularisation, which solves the same QP."""
    import twin.planning.dense_qp as dense_qp

    qp = _random_qp(2)
    exact = DAQPSolver().solve(**qp)
    solve, calls = dense_qp.daqp.solve, []

    def cycling_unless_proximal(*args: object, **kwargs: object) -> tuple:
        calls.append(kwargs.get("eps_prox"))
        x, fval, flag, info = solve(*args, **kwargs)
        return (x, fval, flag if "eps_prox" in kwargs else -2, info)

    monkeypatch.setattr(dense_qp.daqp, "solve", cycling_unless_proximal)
    solution = DAQPSolver().solve(**qp)
    assert calls == [None, dense_qp.PROXIMAL]
    assert solution is not None and exact is not None
    np.testing.assert_allclose(solution.x, exact.x, atol=1e-6)


def test_daqp_holds_equal_bounds_exactly() -> None:
    qp = _random_qp(1)
    qp["lbx"][3] = qp["ubx"][3] = 0.123
    solution = DAQPSolver().solve(**qp)
    assert solution is not None and solution.x[3] == pytest.approx(0.123, abs=1e-12)


def _loop(planner: RTIPlanner, twin: Twin, steps: int) -> tuple[list[float], list[np.ndarray]]:
    """Closed sequence on the twin itself: plan, apply the first move, step the predictor."""
    z = twin.bank.embeddings[100].double().numpy()
    u = twin.normalise_actions(np.array([330.0]))
    goal = twin.goal_embedding({"T": 372.0})
    iterations, moves = [], []
    for _ in range(steps):
        result = planner.plan(PlanningProblem(z, u, goal))
        assert result.ok, result.message
        iterations.append(result.stats["qp_iterations"])
        u = result.actions[0]
        moves.append(u)
        z = result.embeddings[0]
    return iterations, moves


def test_the_warm_start_carries_the_active_set_and_changes_no_plan(twin: Twin) -> None:
    settings = PlannerSettings(horizon=20)
    warm = RTIPlanner(twin, settings)
    cold = RTIPlanner(twin, settings)
    cold._shifted_multipliers = lambda: None  # type: ignore[method-assign]
    via_casadi = RTIPlanner(twin, settings, qp_solver="casadi-daqp", linearisation="casadi")
    warm_iterations, warm_moves = _loop(warm, twin, 30)
    cold_iterations, cold_moves = _loop(cold, twin, 30)
    _, casadi_moves = _loop(via_casadi, twin, 30)
    np.testing.assert_allclose(warm_moves, cold_moves, atol=1e-5)
    np.testing.assert_allclose(warm_moves, casadi_moves, atol=1e-4)
    assert sum(warm_iterations[1:]) < 0.5 * sum(cold_iterations[1:])


def test_unknown_qp_solver_or_linearisation_is_refused(twin: Twin) -> None:
    with pytest.raises(ValueError, match="unknown QP solver"):
        RTIPlanner(twin, qp_solver="gurobi")
    with pytest.raises(ValueError, match="linearisation"):
        RTIPlanner(twin, linearisation="jax")
    with pytest.raises(ValueError, match="compile=True"):
        RTIPlanner(twin, compile=True, linearisation="numpy")
