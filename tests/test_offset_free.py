"""Offset-free tracking for any number of setpoints: a disturbance estimate per controlled
sensor moves the plan's steady-state target (setpoint minus disturbance), the estimate
only moves near the setpoint, at a gain no faster than the twin's step response, never
beyond its limit, and a plant whose twin is off by a steady bias on two controlled sensors
reaches both setpoints in closed loop."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from twin_fixtures import cold_controller, tiny_config, tiny_twin

from processes import cstr
from twin.controller import TwinController
from twin.goals import OFFSET_BAND, OFFSET_LIMIT, GoalIntegrator
from twin.planning import PlannerSettings, PlanningProblem, PlanResult, make_planner
from twin.response import Response, disturbance_gain
from twin.spec import ProcessSpec, Tag, TagRole
from twin.train import train_twin
from twin.twin_model import Twin


@dataclass
class GoalRecorder:
    """Holds the actuators and remembers every goal it was asked to reach."""

    name: str = "recorder"
    settings: PlannerSettings = field(default_factory=lambda: PlannerSettings(horizon=3))
    goals: list[np.ndarray] = field(default_factory=list)

    def plan(self, problem: PlanningProblem) -> PlanResult:
        self.goals.append(problem.z_goal.copy())
        h = self.settings.horizon
        return PlanResult(
            True, np.tile(problem.u_prev, (h, 1)), np.tile(problem.z0, (h, 1)), 0.0, 1.0
        )


@pytest.fixture(scope="module")
def twin() -> Twin:
    return tiny_twin()[0]


def _goal_t(twin: Twin, goal: np.ndarray) -> float:
    return float(twin.readout(goal)["T"])


def _run(
    twin: Twin, gain: float, temperatures: list[float], setpoints: list[float]
) -> GoalRecorder:
    recorder = GoalRecorder()
    controller = cold_controller(
        twin,
        recorder,
        mismatch_trip=math.inf,
        guard_band=0.0,
        disagreement_trip=math.inf,
        offset_gain=gain,
    )
    controller.goals.gains = {}  # the gain as given, not scaled by the twin's response
    base = cstr.CSTRSimulator(seed=0).measure()
    for k, (temperature, setpoint) in enumerate(zip(temperatures, setpoints, strict=True)):
        controller.step(6.0 * k, {**base, "T": temperature}, {"T": setpoint})
    return recorder


def test_a_plant_below_its_setpoint_raises_the_target_until_the_limit(twin: Twin) -> None:
    std = twin.norm.std[twin.norm.index("T")]
    low = 350.0 - 0.3 * std  # inside the estimate's band
    goals = _run(twin, 0.1, [low] * 45, [350.0] * 45).goals
    plain = _goal_t(twin, _run(twin, 0.0, [low], [350.0]).goals[0])
    shifts = [_goal_t(twin, g) - plain for g in goals]
    # 0.1 * 0.3 std more per sample: 0.03 std at the first, the limit at the 34th
    assert shifts[0] == pytest.approx(0.03 * std, rel=0.05)
    assert all(b > a for a, b in zip(shifts[:32], shifts[1:33], strict=True))
    assert shifts[-1] == pytest.approx(OFFSET_LIMIT * std, rel=0.1)  # the readout bends
    assert shifts[-1] == pytest.approx(shifts[-5], rel=1e-6)


def test_a_plant_above_its_setpoint_lowers_the_target(twin: Twin) -> None:
    std = twin.norm.std[twin.norm.index("T")]
    goals = _run(twin, 0.1, [350.0 + 0.2 * std] * 5, [350.0] * 5).goals
    shift = _goal_t(twin, goals[-1]) - _goal_t(twin, goals[0])
    assert shift == pytest.approx(-0.1 * 0.2 * std * 4, rel=0.05)  # 4 more samples


def test_no_estimate_far_from_the_setpoint_nor_without_gain(twin: Twin) -> None:
    std = twin.norm.std[twin.norm.index("T")]
    far = _run(twin, 0.1, [350.0 - 2 * OFFSET_BAND * std] * 6, [350.0] * 6).goals
    off = _run(twin, 0.0, [350.0 - 0.3 * std] * 6, [350.0] * 6).goals
    for goals in (far, off):
        np.testing.assert_allclose(goals[-1], goals[0])


@dataclass
class Jumper(GoalRecorder):
    """Asks for a move far past the rate limit: the safety clip cuts every plan."""

    def plan(self, problem: PlanningProblem) -> PlanResult:
        result = super().plan(problem)
        result.actions[:] = problem.u_prev + 50.0
        return result


def _estimates(twin: Twin, planner: GoalRecorder, coolant: float | None) -> list[float]:
    """T's disturbance estimate over six samples 0.3 std below the setpoint, the plant
    reading the coolant back at `coolant` (None: what the controller sent)."""
    controller = cold_controller(
        twin, planner, mismatch_trip=math.inf, guard_band=0.0, disagreement_trip=math.inf
    )
    controller.goals.gains = {}
    base = cstr.CSTRSimulator(seed=0).measure()
    low = 350.0 - 0.3 * twin.norm.std[twin.norm.index("T")]
    out = []
    for k in range(6):
        read_back = {} if coolant is None else {"Tc": coolant}
        controller.step(6.0 * k, {**base, "T": low, **read_back}, {"T": 350.0})
        out.append(controller.goals.disturbance.get("T", 0.0))
    return out


def test_the_estimate_holds_while_the_moves_cannot_close_the_miss(twin: Twin) -> None:
    """Conditional integration: an actuator at its bound, or a plan cut on its way out,
    holds the estimate (it would wind up to its limit and swing the loop on release)."""
    tag = twin.spec.tag("Tc")
    free = _estimates(twin, GoalRecorder(), 0.5 * (tag.low + tag.high))
    assert free[-1] < free[0] < 0.0  # T reads low: the estimate grows each sample
    at_bound = _estimates(twin, GoalRecorder(), tag.high)
    assert at_bound[1:] == [at_bound[0]] * 5  # the first sample integrates, then it holds
    cut = _estimates(twin, Jumper(), None)
    assert cut[1:] == [cut[0]] * 5


def test_the_disturbance_outlives_a_setpoint_change(twin: Twin) -> None:
    """The offset is the plant's, not the setpoint's: a new setpoint keeps the estimate."""
    std = twin.norm.std[twin.norm.index("T")]
    temperatures = [350.0 - 0.3 * std] * 6 + [355.0] * 2
    setpoints = [350.0] * 6 + [355.0] * 2
    goals = _run(twin, 0.1, temperatures, setpoints).goals
    plain = _run(twin, 0.0, temperatures, setpoints).goals
    kept = 0.1 * 0.3 * std * 6  # at the setpoint: nothing more to add
    assert _goal_t(twin, goals[-1]) - _goal_t(twin, plain[-1]) == pytest.approx(kept, rel=0.1)


def test_each_of_several_setpoints_gets_its_own_estimate(twin: Twin) -> None:
    base = cstr.CSTRSimulator(seed=0).measure()
    std_t, std_ca = (twin.norm.std[twin.norm.index(t)] for t in ("T", "Ca"))
    setpoints = {"T": 350.0, "Ca": float(base["Ca"])}
    goals = GoalIntegrator(twin, 0.0, 0.1)
    goals.gains = {}  # the gain as given
    first = twin.readout(goals.goal_for(setpoints, {**base, "T": 350.0}))
    for _ in range(5):  # T reads 0.3 std low, Ca 0.2 std high
        last = twin.readout(
            goals.goal_for(
                setpoints, {**base, "T": 350.0 - 0.3 * std_t, "Ca": setpoints["Ca"] + 0.2 * std_ca}
            )
        )
    assert goals.disturbance["T"] == pytest.approx(-0.15) and goals.disturbance[
        "Ca"
    ] == pytest.approx(0.1)
    assert float(last["T"] - first["T"]) == pytest.approx(0.15 * std_t, rel=0.15)
    assert float(last["Ca"] - first["Ca"]) == pytest.approx(-0.1 * std_ca, rel=0.15)


# -- closed loop: two setpoints, a twin off by a steady bias on both ----------------------
TWO_BY_TWO_GAINS = np.array([[2.0, -0.8], [0.6, 1.5]])  # d y / d u, coupled both ways
TWO_BY_TWO_POLE = math.exp(-1.0 / 5.0)  # a 5-sample time constant
NOISE = 0.04  # sensor noise std (1 % of the 4-unit span the log covers)


def _two_by_two_spec() -> ProcessSpec:
    sensors = [
        Tag(
            name=f"y{i}",
            role=TagRole.SENSOR,
            unit="u",
            low=-20.0,
            high=20.0,
            nominal=0.0,
            controlled=True,
        )
        for i in (1, 2)
    ]
    actuators = [
        Tag(
            name=f"u{i}",
            role=TagRole.ACTUATOR,
            unit="%",
            low=-1.0,
            high=1.0,
            rate_limit=0.1,
            nominal=0.0,
        )
        for i in (1, 2)
    ]
    return ProcessSpec(
        name="two_by_two",
        description="coupled 2x2 first-order plant",
        sample_period_s=1.0,
        timestamp_column="time_s",
        tags=(*sensors, *actuators),
    )


def _advance(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return TWO_BY_TWO_POLE * x + (1.0 - TWO_BY_TWO_POLE) * TWO_BY_TWO_GAINS @ u


def _two_by_two_log(rows: int = 2500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x, u, out, hold = np.zeros(2), np.zeros(2), [], 0
    for k in range(rows):
        if hold == 0:
            target, hold = rng.uniform(-0.9, 0.9, 2), int(rng.integers(5, 25))
        hold -= 1
        u = u + np.clip(target - u, -0.1, 0.1)
        y = x + rng.normal(0.0, NOISE, 2)
        out.append({"time_s": float(k), "y1": y[0], "y2": y[1], "u1": u[0], "u2": u[1]})
        x = _advance(x, u)
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def two_by_two() -> Twin:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return train_twin(
            _two_by_two_log(), _two_by_two_spec(), tiny_config(epochs=6), show_progress=False
        )[0]


def _closed_loop_offsets(twin: Twin, offset_gain: float, steps: int = 240) -> np.ndarray:
    """Mean |error| over the last quarter, per sensor, in noise stds, with the plant's
    outputs off the twin's by a steady bias (an unmeasured disturbance after training).
    240 samples: moves counted by the twin's step response (`twin.response.move_scales`)
    settle this twin's loop slower than rate-counted moves did (y2 at 160 samples: 2.0
    noise stds, 1.0 at 240)."""
    rng = np.random.default_rng(1)
    controller = TwinController(
        twin, make_planner("casadi", twin), offset_gain=offset_gain, tracking_weight=40.0
    )
    bias = np.array([0.5, -0.4])
    u_target = np.array([0.3, -0.2])
    setpoint = (TWO_BY_TWO_GAINS @ u_target) + bias  # reachable inside the limits
    setpoints = {"y1": float(setpoint[0]), "y2": float(setpoint[1])}
    x, errors = np.zeros(2), []
    for k in range(steps):
        y = x + bias + rng.normal(0.0, NOISE, 2)
        record = controller.step(float(k), {"y1": y[0], "y2": y[1]}, setpoints)
        u = np.array([record.actuators["u1"], record.actuators["u2"]])
        x = _advance(x, u)
        errors.append(x + bias - setpoint)
    return np.mean(np.abs(np.array(errors[-steps // 4 :])), axis=0) / NOISE


@pytest.mark.slow
def test_two_setpoints_reach_zero_offset_despite_a_biased_twin(two_by_two: Twin) -> None:
    with_estimate = _closed_loop_offsets(two_by_two, 0.1)
    assert np.all(with_estimate <= 2.0), with_estimate
    # the case is a hard one: without the disturbance estimate the twin holds an offset
    without = _closed_loop_offsets(two_by_two, 0.0)
    assert np.max(without) > 2.0, without


def test_a_slow_response_gets_a_gentle_gain() -> None:
    fast, slow = Response(0.0, 1.0), Response(15.0, 6.0)
    assert disturbance_gain(fast, 0.1) == 0.1  # the ceiling
    assert disturbance_gain(slow, 0.1) == pytest.approx(1 / 36)
    assert disturbance_gain(Response(500.0, 500.0), 0.1) == 0.01  # the floor


def test_an_estimate_is_dropped_when_its_setpoint_moves_to_another_operating_point() -> None:
    """A twin's miss is local: an estimate survives a setpoint move within OFFSET_LIMIT
    training stds and is dropped beyond it (the turbofan from idle to takeoff thrust)."""
    twin = tiny_twin()[0]
    goals = GoalIntegrator(twin, 150.0, 0.1)
    std = float(twin.norm.std[twin.norm.index("T")])
    unmeasured = {k: v for k, v in cstr.CSTRSimulator(seed=0).measure().items() if k != "T"}
    goals.goal_for({"T": 350.0}, unmeasured)
    goals.disturbance["T"] = 0.5
    goals.goal_for({"T": 350.0 + 0.8 * OFFSET_LIMIT * std}, unmeasured)
    assert goals.disturbance["T"] == 0.5
    goals.goal_for({"T": 350.0 - 0.5 * OFFSET_LIMIT * std}, unmeasured)  # 1.3 limits away
    assert "T" not in goals.disturbance
