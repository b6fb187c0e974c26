"""The CSTR process: simulator, training log, PI baseline and the oracle NMPC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from twin_fixtures import assert_within_bounds_and_rate, training_log

from processes import cstr
from twin.data import check_log
from twin.records import StepRecord

RATE = cstr.RATE_PER_SAMPLE


def _trajectory(seed: int, noise: bool = True) -> list[dict[str, float]]:
    sim = cstr.CSTRSimulator(seed=seed, noise=noise)
    return [sim.step(tc) for tc in (330.0, 333.0, 336.0, 333.0, 320.0) * 4]


def test_simulator_is_deterministic_by_seed() -> None:
    assert _trajectory(3) == _trajectory(3)
    assert _trajectory(3) != _trajectory(4)
    # without noise the seed does not matter and measurements are the true state
    assert _trajectory(3, noise=False) == _trajectory(4, noise=False)
    sim = cstr.CSTRSimulator(seed=1, noise=False)
    sim.step(335.0)
    meas = sim.measure()
    assert (meas["Ca"], meas["T"]) == sim.state
    assert sim.time_s == cstr.SAMPLE_PERIOD_S
    assert (meas["Caf"], meas["Tf"]) == (cstr.CAF_NOMINAL, cstr.TF_NOMINAL)


def test_simulator_clips_coolant_to_bounds() -> None:
    hot, clipped = (cstr.CSTRSimulator(seed=0, noise=False) for _ in range(2))
    hot.step(1000.0)
    clipped.step(cstr.TC_HIGH)
    assert hot.state == clipped.state


def test_steady_state_at_nominal_coolant() -> None:
    ca_, t_ = cstr.steady_state(330.0)
    assert ca_ == pytest.approx(0.5, abs=2e-3)
    assert t_ == pytest.approx(350.0, abs=0.1)
    # it really is steady: one more sample barely moves it
    ca1, t1 = cstr.rk4_step((ca_, t_), 330.0, cstr.CAF_NOMINAL, cstr.TF_NOMINAL, 0.1)
    assert abs(ca1 - ca_) < 1e-6 and abs(t1 - t_) < 1e-4
    # a warmer coolant gives a hotter reactor with less reactant left
    ca2, t2 = cstr.steady_state(335.0)
    assert t2 > t_ and ca2 < ca_


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return training_log(1.5, 3)


def test_training_log_keeps_bounds_rates_and_limit(log: pd.DataFrame) -> None:
    assert len(log) == 900
    assert list(log.columns) == ["time_s", "Ca", "T", "Tc", "Caf", "Tf"]
    np.testing.assert_allclose(np.diff(log["time_s"]), cstr.SAMPLE_PERIOD_S)
    tc = log["Tc"].to_numpy()
    assert_within_bounds_and_rate(tc, cstr.TC_NOMINAL, cstr.TC_LOW, cstr.TC_HIGH, RATE)
    assert log["T"].max() < cstr.T_LIMIT_K
    assert log.notna().all().all()
    check_log(log, cstr.SPEC)
    # it is excitation: Tc and T really move, disturbances vary within their ranges
    assert tc.std() > 3.0 and log["T"].std() > 3.0
    assert log["Caf"].between(0.9, 1.1).all() and log["Tf"].between(345.0, 355.0).all()
    assert log["Caf"].nunique() > 1


def test_training_log_is_deterministic_by_seed(log: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(cstr.generate_training_log(hours=1.5, seed=3), log)
    other = cstr.generate_training_log(hours=1.5, seed=4)
    assert not other.equals(log)
    assert_within_bounds_and_rate(
        other["Tc"].to_numpy(), cstr.TC_NOMINAL, cstr.TC_LOW, cstr.TC_HIGH, RATE
    )
    assert other["T"].max() < cstr.T_LIMIT_K


def test_scenario_schedule() -> None:
    sc = cstr.benchmark_scenario()
    assert [sc.setpoint(k) for k in (0, 19, 20, 89, 90, 160, 239)] == [
        350.0,
        350.0,
        365.0,
        365.0,
        375.0,
        355.0,
        355.0,
    ]
    assert sc.disturbances(119).caf == cstr.CAF_NOMINAL and sc.disturbances(120).caf == 1.08
    assert sc.disturbances(200).tf == 354.0
    assert max(v for _, v in sc.setpoints) < cstr.T_LIMIT_K


def _applied(steps: list[StepRecord]) -> np.ndarray:
    return np.array([s.actuators["Tc"] for s in steps])


def test_pi_baseline_on_benchmark() -> None:
    ep = cstr.run_episode(cstr.pi_policy(), "pi")
    assert len(ep.steps) == 240 and [s.step for s in ep.steps] == list(range(240))
    assert_within_bounds_and_rate(
        _applied(ep.steps), cstr.TC_NOMINAL, cstr.TC_LOW, cstr.TC_HIGH, RATE
    )
    assert ep.metrics["violations"] == 0
    assert ep.metrics["mean_abs_error_K"] < 5.0
    assert ep.process == "cstr" and ep.config["seed"] == 7
    assert all(
        s.margins["T"] == pytest.approx(cstr.T_LIMIT_K - s.measurements["T"]) for s in ep.steps
    )
    # deterministic for a given seed
    again = cstr.run_episode(cstr.pi_policy(), "pi")
    np.testing.assert_array_equal(_applied(again.steps), _applied(ep.steps))


def test_pi_controller_clamps() -> None:
    pi = cstr.PIController()
    assert pi(300.0, 380.0) == cstr.TC_NOMINAL + RATE  # big error: one rate step
    for _ in range(100):
        u = pi(300.0, 380.0)
    assert u == cstr.TC_HIGH
    pi.reset(cstr.TC_LOW)
    assert pi(400.0, 350.0) == cstr.TC_LOW


def test_pi_fallback_is_bumpless_and_holds_without_measurement() -> None:
    fallback = cstr.pi_fallback()
    assert fallback({"T": None}, {"T": 360.0}, {"Tc": 301.5}) == {"Tc": 301.5}
    assert fallback({"T": 350.0}, {}, {"Tc": 302.0}) == {"Tc": 302.0}
    out = fallback({"T": 359.0}, {"T": 360.0}, {"Tc": 310.0})["Tc"]
    assert out == pytest.approx(310.0 + 0.8 * 6.0 / 30.0 * 1.0)


# near the limit, with a feed disturbance pushing towards it
ORACLE_SCENARIO = cstr.Scenario(
    steps=100, setpoints=[(0, 350.0), (10, 365.0), (50, 378.0)], caf_steps=[(75, 1.08)]
)


def test_oracle_nmpc_keeps_limit_and_tracks() -> None:
    ep = cstr.run_episode(cstr.oracle_policy(horizon=10), "oracle", scenario=ORACLE_SCENARIO)
    assert ep.metrics["violations"] == 0
    assert ep.metrics["max_T_K"] <= cstr.T_LIMIT_K
    assert ep.metrics["mean_abs_error_K"] < 2.0
    assert_within_bounds_and_rate(
        _applied(ep.steps), cstr.TC_NOMINAL, cstr.TC_LOW, cstr.TC_HIGH, RATE
    )
    assert ep.metrics["max_T_K"] > 375.0  # it really went close to the limit


def test_episode_metrics_count_violations() -> None:
    true_t = np.array([350.0, 386.0, 390.0, 384.0])
    setpoints = np.full(4, 380.0)
    steps = [StepRecord(k, 6.0 * k, {}, {}, {"Tc": 300.0}, solve_ms=float(k)) for k in range(4)]
    metrics = cstr.episode_metrics(true_t, setpoints, np.array([0.0, 3.0, -3.0, 0.0]), steps)
    assert metrics["violations"] == 2
    assert metrics["worst_violation_K"] == pytest.approx(5.0)
    assert metrics["max_T_K"] == 390.0
    assert metrics["mean_abs_error_K"] == pytest.approx((30 + 6 + 10 + 4) / 4)
    assert metrics["move_cost"] == pytest.approx(0.05 * 2)
    assert metrics["cost"] == pytest.approx(metrics["tracking_cost"] + metrics["move_cost"])
