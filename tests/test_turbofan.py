"""The turbofan process: gas-path model, degradation, training log, baseline, oracle, twin."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import casadi as ca
import numpy as np
import pandas as pd
import pytest
import torch
from twin_fixtures import TINY_MODEL, assert_within_bounds_and_rate

from processes import get_process
from processes import turbofan as tf
from processes.base import CORE_METRICS, benchmark_cases
from twin.controller import TwinController
from twin.data import check_log
from twin.planning import PlannerSettings
from twin.records import StepRecord
from twin.spec import ProcessSpec
from twin.train import TrainConfig, train_twin

RATE = tf.RATE_PER_SAMPLE
GROUND_HOT = tf.Flight(0.0, 0.0, 15.0)

# idle to takeoff and back in one step each: what the limit protection is for
SLAM = tf.Scenario(
    steps=200,
    setpoints=[(0, 20.0), (10, 110.0), (100, 20.0), (150, 110.0)],
    flight_points=[(0, GROUND_HOT)],
)
# the same at cruise altitude, where the fan overspeeds first
SLAM_ALTITUDE = tf.Scenario(
    steps=200,
    setpoints=[(0, 8.0), (10, 40.0), (100, 8.0), (150, 40.0)],
    flight_points=[(0, tf.Flight(9000.0, 0.75, -10.0))],
)


def _applied(steps: list[StepRecord]) -> np.ndarray:
    return np.array([s.actuators["Wf"] for s in steps])


def _initial_fuel(scenario: tf.Scenario, cycle: float = 0.0) -> float:
    return tf.trim_fuel(scenario.setpoint(0), scenario.flight(0), tf.health_at(cycle))[0]


# -- spec and contract -------------------------------------------------------------------


def test_spec_validates_and_names_the_limits() -> None:
    assert ProcessSpec.from_dict(tf.SPEC.to_dict()) == tf.SPEC
    assert get_process("turbofan") is tf
    assert [t.name for t in tf.SPEC.controlled] == ["Fn"]
    assert [t.name for t in tf.SPEC.actuators] == ["Wf"]
    assert [t.name for t in tf.SPEC.disturbances] == ["alt", "Mach", "dT_isa"]
    assert tf.LIMITS == {
        "T50": (None, 930.0),
        "Nf": (None, 5250.0),
        "Nc": (None, 15100.0),
        "phi": (0.15, None),
        "SM_hpc": (10.0, None),
    }
    wf = tf.SPEC.tag("Wf")
    assert (wf.low, wf.high) == (tf.WF_LOW, tf.WF_HIGH)
    assert tf.SPEC.rate_limit_per_sample(wf) == pytest.approx(RATE)
    assert len(benchmark_cases(tf)) == 2


# -- the model -----------------------------------------------------------------------------


def test_design_point_is_matched() -> None:
    n1, n2 = tf.steady_state(tf.DESIGN.wf)
    assert n1 == pytest.approx(tf.N1_DESIGN_RPM, rel=3e-3)
    assert n2 == pytest.approx(tf.N2_DESIGN_RPM, rel=3e-3)
    g = tf.gas_path(n1, n2, tf.DESIGN.wf, tf.SEA_LEVEL_STATIC)
    assert g.t4 == pytest.approx(tf.T4_DESIGN_K, abs=3.0)
    assert g.p3 / 1e3 == pytest.approx(3020.0, rel=0.01)  # OPR 30
    assert (g.w2 - g.w25) / g.w25 == pytest.approx(5.0, abs=0.1)  # bypass ratio
    assert g.thrust / 1e3 == pytest.approx(118.0, abs=2.0)
    assert tf.DESIGN.wf == pytest.approx(1.38, abs=0.02)  # TSFC ~ 11.7 g/(kN s)


def test_model_is_the_same_on_casadi_symbols() -> None:
    """The oracle differentiates exactly the code the plant runs."""
    x, u, p = ca.SX.sym("x", 2), ca.SX.sym("u"), ca.SX.sym("p", 9)
    flight, health = tf.Flight(p[0], p[1], p[2]), tf.Health(*[p[i] for i in range(3, 9)])
    symbolic = tf.sensors(x[0], x[1], u, flight, health)
    nxt = tf.rk4_step((x[0], x[1]), u, flight, health)
    f = ca.Function("f", [x, u, p], [ca.vertcat(*symbolic.values(), *nxt)])
    plant = tf.Flight(4000.0, 0.5, 7.0)
    h = tf.health_at(200.0, 3)
    state, wf = (4300.0, 13600.0), 0.7
    numeric = [*tf.sensors(*state, wf, plant, h).values(), *tf.rk4_step(state, wf, plant, h)]
    symbolic_value = np.array(f(np.array(state), wf, np.array([*plant, *h]))).ravel()
    np.testing.assert_allclose(symbolic_value, numeric, rtol=1e-10)
    jac = ca.Function("j", [x, u, p], [ca.jacobian(nxt[0], ca.vertcat(x, u))])
    assert np.all(np.isfinite(np.array(jac(np.array(state), wf, np.array([*plant, *h])))))


def test_steady_states_are_sane_and_thrust_rises_with_fuel() -> None:
    for flight in (tf.SEA_LEVEL_STATIC, tf.Flight(0.0, 0.3, 20.0), tf.Flight(10000.0, 0.8, -15.0)):
        thrust, x = [], None
        for wf in np.linspace(tf.WF_LOW, 1.0, 6):
            x = tf.steady_state(float(wf), flight, start=x)
            assert np.abs(tf.derivatives(*x, float(wf), flight)).max() < 1e-6  # really steady
            s = tf.sensors(*x, float(wf), flight)
            thrust.append(s["Fn"])
            assert 1000.0 < s["Nf"] < 6100.0 and 10000.0 < s["Nc"] < 15000.0
            assert 250.0 < s["T24"] < s["T30"] < 900.0
            assert 450.0 < s["T50"] < 900.0
            assert 15.0 < s["SM_hpc"] < 30.0  # steady working line well below surge
            assert 0.25 < s["phi"] < 0.6
        assert np.all(np.diff(thrust) > 0.0)
        assert thrust[0] > 0.0


def test_fuel_step_costs_surge_margin_and_heats_the_turbine() -> None:
    """An acceleration moves the HPC working line towards surge before the spool follows."""
    x = tf.steady_state(0.3)
    before = tf.sensors(*x, 0.3, tf.SEA_LEVEL_STATIC)
    after = tf.sensors(*x, 0.5, tf.SEA_LEVEL_STATIC)
    assert after["SM_hpc"] < before["SM_hpc"] - 10.0
    assert after["T50"] > before["T50"] + 100.0
    assert after["Nf"] == before["Nf"]  # the speeds are states: they move later


def test_degradation_changes_the_plant() -> None:
    new, worn = tf.health_at(0.0, 1), tf.health_at(250.0, 1)
    assert all(w > n >= 0.0 for n, w in zip(new, worn, strict=True))
    assert all(loss < 0.05 for loss in tf.health_at(tf.CYCLE_END_OF_LIFE, 1))
    assert tf.health_at(250.0, 1) == worn and tf.health_at(250.0, 2) != worn  # unit variation
    wf = 1.2
    s_new = tf.sensors(*tf.steady_state(wf, health=new), wf, tf.SEA_LEVEL_STATIC, new)
    s_worn = tf.sensors(*tf.steady_state(wf, health=worn), wf, tf.SEA_LEVEL_STATIC, worn)
    assert s_worn["T50"] > s_new["T50"] + 20.0
    assert s_worn["Fn"] < s_new["Fn"] - 2.0
    assert s_worn["SM_hpc"] < s_new["SM_hpc"]
    # the same thrust costs a worn engine more fuel and a hotter turbine
    wf_new, x_new = tf.trim_fuel(100.0, health=new)
    wf_worn, x_worn = tf.trim_fuel(100.0, health=worn)
    assert wf_worn > wf_new
    assert (
        tf.sensors(*x_worn, wf_worn, tf.SEA_LEVEL_STATIC, worn)["T50"]
        > tf.sensors(*x_new, wf_new, tf.SEA_LEVEL_STATIC, new)["T50"] + 20.0
    )


def _trajectory(seed: int, noise: bool = True) -> list[dict[str, float]]:
    sim = tf.TurbofanSimulator(seed=seed, noise=noise, wf0=0.5, cycle=100.0)
    return [sim.step(wf) for wf in (0.5, 0.6, 0.7, 0.7, 0.6, 0.5) * 3]


def test_simulator_is_deterministic_by_seed() -> None:
    assert _trajectory(3) == _trajectory(3)
    assert _trajectory(3) != _trajectory(4)
    assert _trajectory(3, noise=False) == _trajectory(4, noise=False)
    sim = tf.TurbofanSimulator(seed=1, noise=False, wf0=0.5, flight=tf.Flight(2000.0, 0.4, 5.0))
    meas = sim.step(0.6)
    assert (meas["Nf"], meas["Nc"]) == sim.state
    assert meas["phi"] == pytest.approx(1e3 * 0.6 / meas["Ps30"])
    assert (meas["alt"], meas["Mach"], meas["dT_isa"]) == (2000.0, 0.4, 5.0)
    assert sim.time_s == tf.SAMPLE_PERIOD_S
    clipped = tf.TurbofanSimulator(seed=1, noise=False, wf0=0.5)
    clipped.step(5.0)
    assert clipped.wf == tf.WF_HIGH


# -- training data -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return tf.generate_training_log(hours=0.25, seed=3)


def test_training_log_keeps_bounds_rates_and_limits(log: pd.DataFrame) -> None:
    assert len(log) == 4500
    assert list(log.columns) == ["time_s", *(t.name for t in tf.SPEC.tags)]
    assert log.notna().all().all()
    check_log(log, tf.SPEC)
    steps = np.diff(log["time_s"])
    contiguous = steps < 1.5 * tf.SAMPLE_PERIOD_S
    np.testing.assert_allclose(steps[contiguous], tf.SAMPLE_PERIOD_S)
    assert (~contiguous).sum() == 2  # three 5-minute flights
    wf = log["Wf"].to_numpy()
    assert wf.min() >= tf.WF_LOW and wf.max() <= tf.WF_HIGH
    assert np.abs(np.diff(wf))[contiguous].max() <= RATE + 1e-9
    # the measured limited sensors never come near their limits (noise is a few units)
    assert log["T50"].max() < tf.T50_MAX_K - 3.0
    assert log["Nf"].max() < tf.NF_MAX_RPM - 10.0 and log["Nc"].max() < tf.NC_MAX_RPM - 10.0
    assert log["SM_hpc"].min() > tf.SM_MIN_PCT + 0.5 and log["phi"].min() > tf.PHI_MIN
    # it is excitation: fuel and thrust really move; the flight condition drifts slowly
    assert wf.std() > 0.1 and log["Fn"].std() > 5.0
    assert log["alt"].between(0.0, tf.ALT_MAX_M).all()
    assert log["Mach"].between(0.0, 0.8).all() and log["dT_isa"].between(-15.0, 20.0).all()
    assert np.abs(np.diff(log["alt"]))[contiguous].max() <= 2.0 + 1e-9
    # and the engine ages between flights
    cycles = log.attrs["cycles"]
    assert len(cycles) == 3 and cycles == sorted(cycles)
    assert 0.0 <= cycles[0] and cycles[-1] <= tf.CYCLE_END_OF_LIFE


def test_training_log_is_deterministic_by_seed() -> None:
    first = tf.generate_training_log(hours=0.05, seed=5)
    pd.testing.assert_frame_equal(tf.generate_training_log(hours=0.05, seed=5), first)
    assert not tf.generate_training_log(hours=0.05, seed=6).equals(first)


# -- baseline -------------------------------------------------------------------------------


@pytest.mark.parametrize("cycle", [0.0, 250.0])
def test_baseline_on_benchmark(cycle: float) -> None:
    ep = tf.run_episode(tf.baseline_policy(), "fadec", cycle=cycle)
    assert len(ep.steps) == 300 and [s.step for s in ep.steps] == list(range(300))
    assert set(CORE_METRICS) <= set(ep.metrics)
    assert ep.metrics["violations"] == 0 and ep.metrics["worst_violation"] == 0.0
    assert ep.metrics["mean_abs_error_kN"] < 9.0
    assert ep.process == "turbofan" and ep.config["cycle"] == cycle and ep.config["seed"] == 7
    scenario = tf.benchmark_scenario()
    assert_within_bounds_and_rate(
        _applied(ep.steps), _initial_fuel(scenario, cycle), tf.WF_LOW, tf.WF_HIGH, RATE
    )
    step = ep.steps[100]
    assert set(step.margins) == set(tf.LIMITS)
    assert step.margins["T50"] == pytest.approx(tf.T50_MAX_K - step.measurements["T50"])
    assert step.margins["SM_hpc"] == pytest.approx(step.measurements["SM_hpc"] - tf.SM_MIN_PCT)
    assert step.setpoints == {"Fn": 100.0}
    again = tf.run_episode(tf.baseline_policy(), "fadec", cycle=cycle)
    np.testing.assert_array_equal(_applied(again.steps), _applied(ep.steps))


def test_worn_engine_is_egt_limited_at_takeoff() -> None:
    new = tf.run_episode(tf.baseline_policy(), "fadec", cycle=0.0)
    worn = tf.run_episode(tf.baseline_policy(), "fadec", cycle=250.0)
    assert worn.metrics["max_T50_K"] > new.metrics["max_T50_K"] + 10.0
    assert worn.metrics["max_T50_K"] > tf.T50_MAX_K - 15.0  # riding the limit regulator
    assert worn.metrics["fuel_burned_kg"] > new.metrics["fuel_burned_kg"]


@pytest.mark.parametrize("scenario", [SLAM, SLAM_ALTITUDE], ids=["ground", "altitude"])
@pytest.mark.parametrize("cycle", [0.0, 250.0])
def test_limit_protection_is_what_keeps_the_limits(scenario: tf.Scenario, cycle: float) -> None:
    protected = tf.run_episode(tf.fadec_policy(), "fadec", scenario=scenario, cycle=cycle)
    bare = tf.run_episode(tf.fadec_policy(protect=False), "pi", scenario=scenario, cycle=cycle)
    assert protected.metrics["violations"] == 0
    assert bare.metrics["violations"] > 10
    assert bare.metrics["violations_SM_hpc"] > 0 and bare.metrics["min_SM_hpc_pct"] < 5.0
    if scenario is SLAM:
        assert bare.metrics["violations_T50"] > 0
    else:
        assert bare.metrics["violations_Nf"] > 0
    for ep in (protected, bare):
        assert_within_bounds_and_rate(
            _applied(ep.steps), _initial_fuel(scenario, cycle), tf.WF_LOW, tf.WF_HIGH, RATE
        )


def test_fuel_control_selects_the_most_limiting_demand() -> None:
    control = tf.FuelControl()
    calm = {"Fn": 50.0, "T50": 800.0, "Nf": 4000.0, "Nc": 13500.0, "SM_hpc": 22.0, "Ps30": 1500.0}
    assert control(calm, 50.0, 0.7) == pytest.approx(0.7)  # on target, nothing to do
    assert control(calm, 90.0, 0.7) == pytest.approx(0.7 + RATE)  # far below: rate-limited
    control.reset()
    near_surge = {**calm, "SM_hpc": tf.SM_CONTROL_PCT - 1.0}
    assert control(near_surge, 90.0, 0.7) < 0.7  # surge regulator wins the min-select
    control.reset()
    hot = {**calm, "T50": tf.T50_CONTROL_K + 5.0}
    assert control(hot, 90.0, 0.7) < 0.7
    control.reset()
    flameout = {**calm, "Ps30": 1e3 * 0.5 / tf.PHI_CONTROL}  # floor at 0.5 kg/s
    assert control(flameout, 0.0, 0.55) == pytest.approx(0.5)  # max-select beats the PI


def test_limit_protection_cuts_any_fuel_demand_as_the_baseline_would() -> None:
    """The twin's moves pass the baseline's limit selection: a surge-margin or EGT ceiling
    and the flame-out floor, whatever the demand; a calm engine is left alone."""
    protect = tf.limit_protection()
    calm = {"Fn": 50.0, "T50": 800.0, "Nf": 4000.0, "Nc": 13500.0, "SM_hpc": 22.0, "Ps30": 1500.0}
    assert protect(calm, {"Wf": 0.75}, {"Wf": 0.7}) == {"Wf": pytest.approx(0.75)}
    near_surge = {**calm, "SM_hpc": tf.SM_CONTROL_PCT - 1.0}
    assert protect(near_surge, {"Wf": 0.8}, {"Wf": 0.7})["Wf"] < 0.7
    flameout = {**calm, "Ps30": 1e3 * 0.5 / tf.PHI_CONTROL}
    assert protect(flameout, {"Wf": 0.3}, {"Wf": 0.55})["Wf"] == pytest.approx(0.5)
    assert protect({**calm, "SM_hpc": None}, {"Wf": 0.8}, {"Wf": 0.7})["Wf"] <= 0.7


def test_only_the_turbofan_lends_a_limit_protection() -> None:
    from processes import get_spec, protection_for

    assert protection_for(tf.SPEC) is not None
    assert protection_for(get_spec("cstr")) is None


def test_fallback_is_bumpless_and_copes_with_missing_measurements() -> None:
    fallback = tf.baseline_fallback()
    meas = {"Fn": 60.0, "T50": 800.0, "Nf": 4000.0, "Nc": 13500.0, "SM_hpc": 22.0, "Ps30": 1500.0}
    assert fallback(meas, {"Fn": 60.0}, {"Wf": 0.81}) == {"Wf": pytest.approx(0.81)}
    assert fallback({**meas, "Fn": None}, {"Fn": 90.0}, {"Wf": 0.8}) == {"Wf": 0.8}
    assert fallback(meas, {}, {"Wf": 0.8}) == {"Wf": 0.8}
    # a missing limit sensor allows no increase, however far the thrust is below demand
    assert fallback({**meas, "SM_hpc": None}, {"Fn": 100.0}, {"Wf": 0.8})["Wf"] <= 0.8
    assert fallback({**meas, "Nf": None}, {"Fn": 100.0}, {"Wf": 0.8})["Wf"] <= 0.8
    # taking over from another controller: no kick from errors seen before it acted
    integral_per_kn = tf.FN_KP * tf.SAMPLE_PERIOD_S / tf.FN_TI_S
    fresh = tf.baseline_fallback()
    first = fresh(meas, {"Fn": 100.0}, {"Wf": 0.8})["Wf"]
    assert first == pytest.approx(0.8 + 40.0 * integral_per_kn)  # integral only: bumpless
    again = fresh({**meas, "Fn": 99.0}, {"Fn": 100.0}, {"Wf": 0.85})["Wf"]
    assert again == pytest.approx(0.85 + 1.0 * integral_per_kn)
    # while it stays in charge it is a PI: thrust overshooting by 5 kN pulls the fuel back
    assert fresh({**meas, "Fn": 105.0}, {"Fn": 100.0}, {"Wf": again})["Wf"] < again - 0.05


def test_episode_metrics_count_violations_on_every_limit() -> None:
    ok = {"T50": 900.0, "Nf": 5000.0, "Nc": 15000.0, "phi": 0.3, "SM_hpc": 15.0}
    excess = [
        tf._excess(ok),
        tf._excess({**ok, "T50": 935.0, "SM_hpc": 8.0}),
        tf._excess({**ok, "Nf": 5300.0}),
    ]
    extremes = {tag: [ok[tag], ok[tag], ok[tag]] for tag in tf.LIMITS}
    steps = [StepRecord(k, 0.2 * k, {}, {}, {"Wf": 0.5}, solve_ms=1.0) for k in range(3)]
    m = tf.episode_metrics(
        np.array([50.0, 60.0, 70.0]),
        np.array([60.0, 60.0, 60.0]),
        np.array([0.0, RATE, -RATE]),
        np.array([0.5, 0.6, 0.5]),
        excess,
        extremes,
        steps,
    )
    assert m["violations"] == 2
    assert m["violations_T50"] == 1 and m["violations_SM_hpc"] == 1 and m["violations_Nf"] == 1
    assert m["worst_violation_T50"] == pytest.approx(5.0)
    assert m["worst_violation_SM_hpc"] == pytest.approx(2.0)
    assert m["worst_violation"] == pytest.approx(50.0)  # the fan, in rpm
    assert m["tracking_cost"] == pytest.approx(2.0)
    assert m["move_cost"] == pytest.approx(0.1)
    assert m["fuel_burned_kg"] == pytest.approx(1.6 * tf.SAMPLE_PERIOD_S)
    assert m["mean_abs_error_kN"] == pytest.approx(20.0 / 3)


# -- oracle ---------------------------------------------------------------------------------

SHORT = tf.Scenario(
    steps=80,
    setpoints=[(0, 25.0), (5, 100.0), (50, 35.0)],
    flight_points=[(0, tf.Flight(0.0, 0.2, 10.0))],
)


def test_oracle_beats_baseline_and_keeps_limits() -> None:
    oracle = tf.run_episode(tf.oracle_policy(horizon=10), "oracle", scenario=SHORT, cycle=250.0)
    baseline = tf.run_episode(tf.baseline_policy(), "fadec", scenario=SHORT, cycle=250.0)
    assert oracle.metrics["violations"] == 0
    assert oracle.metrics["cost"] < 0.9 * baseline.metrics["cost"]
    assert_within_bounds_and_rate(
        _applied(oracle.steps), _initial_fuel(SHORT, 250.0), tf.WF_LOW, tf.WF_HIGH, RATE
    )
    assert oracle.metrics["max_T50_K"] > tf.T50_MAX_K - 10.0  # it uses the room it has


def _moves_the_protection_would_cut(steps: list[StepRecord], wf0: float) -> int:
    """Replays the plant's limit protection on each move an episode sent (its regulators see
    the same measurements, so they hold the same state): how many it would have cut."""
    protection, applied, cut = tf.FuelControl(), wf0, 0
    for step in steps:
        wf = step.actuators["Wf"]
        cut += not math.isclose(
            protection.protect_fuel(step.measurements, wf, applied), wf, rel_tol=1e-9, abs_tol=1e-12
        )
        applied = wf
    return cut


def test_protected_oracle_sends_only_moves_the_protection_allows() -> None:
    wf0 = _initial_fuel(SHORT, 250.0)
    bare = tf.run_episode(tf.oracle_policy(horizon=10), "oracle", scenario=SHORT, cycle=250.0)
    protected = tf.run_episode(
        tf.oracle_policy(horizon=10, protected=True),
        "oracle_protected",
        scenario=SHORT,
        cycle=250.0,
    )
    assert _moves_the_protection_would_cut(bare.steps, wf0) > 0  # the bare one rides past it
    assert _moves_the_protection_would_cut(protected.steps, wf0) == 0
    assert protected.metrics["violations"] == 0
    assert bare.metrics["cost"] < protected.metrics["cost"]


@pytest.mark.slow
def test_oracle_beats_baseline_on_the_benchmark() -> None:
    case = benchmark_cases(tf)[1]
    oracle = tf.run_episode(tf.oracle_policy(), "oracle", **case)
    baseline = tf.run_episode(tf.baseline_policy(), "fadec", **case)
    assert oracle.metrics["violations"] == 0
    assert oracle.metrics["cost"] < baseline.metrics["cost"]


# -- with a twin -------------------------------------------------------------------------------


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """A tiny model gains nothing from threads, which only contend on a shared machine
    (on 2 busy cores, 2 threads made this test 15x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_tiny_twin_drives_the_engine_end_to_end() -> None:
    df = tf.generate_training_log(hours=0.2, seed=2)
    check_log(df, tf.SPEC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        twin, _ = train_twin(
            df,
            tf.SPEC,
            TrainConfig(epochs=2, rollout_steps=4, model=TINY_MODEL),
            show_progress=False,
        )
    controller = TwinController.from_twin(
        twin,
        "cem",
        settings=PlannerSettings(horizon=8),
        fallback=tf.baseline_fallback(),
        protection=tf.limit_protection(),
    )
    scenario = tf.Scenario(
        steps=25, setpoints=[(0, 25.0), (5, 60.0)], flight_points=[(0, tf.Flight(0.0, 0.2, 10.0))]
    )
    ep = tf.run_episode(tf.twin_policy(controller), "twin+cem", scenario=scenario)
    assert len(ep.steps) == 25 and set(CORE_METRICS) <= set(ep.metrics)
    assert_within_bounds_and_rate(
        _applied(ep.steps), _initial_fuel(scenario), tf.WF_LOW, tf.WF_HIGH, RATE
    )
    assert ep.metrics["violations"] == 0
    assert all(set(s.margins) == set(tf.LIMITS) for s in ep.steps)
