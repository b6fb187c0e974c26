"""Offset-free tracking: the goal embedding moves by the integral of the setpoint error,
in the direction that raises (or lowers) the goal's readout, restarts with a new setpoint,
only integrates near the setpoint and never shifts more than its limit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from twin_fixtures import cold_controller, tiny_twin

from processes import cstr
from twin.goals import OFFSET_BAND, OFFSET_LIMIT
from twin.planning import PlannerSettings, PlanningProblem, PlanResult
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
    base = cstr.CSTRSimulator(seed=0).measure()
    for k, (temperature, setpoint) in enumerate(zip(temperatures, setpoints, strict=True)):
        controller.step(6.0 * k, {**base, "T": temperature}, {"T": setpoint})
    return recorder


def test_a_plant_below_its_setpoint_raises_the_goal_until_the_limit(twin: Twin) -> None:
    std = twin.norm.std[twin.norm.index("T")]
    low = 350.0 - 0.3 * std  # inside the integration band
    goals = _run(twin, 0.1, [low] * 40, [350.0] * 40).goals
    plain = _goal_t(twin, _run(twin, 0.0, [low], [350.0]).goals[0])
    shifts = [_goal_t(twin, g) - plain for g in goals]
    # 0.1 * 0.3 std more per sample: 0.03 std at the first, the 0.5 std limit at the 17th
    assert shifts[0] == pytest.approx(0.03 * std, rel=0.05)
    assert all(b > a for a, b in zip(shifts[:16], shifts[1:17], strict=True))
    assert shifts[16] == pytest.approx(OFFSET_LIMIT * std, rel=0.05)
    assert shifts[-1] == pytest.approx(shifts[16], rel=1e-6)


def test_a_plant_above_its_setpoint_lowers_the_goal(twin: Twin) -> None:
    std = twin.norm.std[twin.norm.index("T")]
    goals = _run(twin, 0.1, [350.0 + 0.2 * std] * 5, [350.0] * 5).goals
    shift = _goal_t(twin, goals[-1]) - _goal_t(twin, goals[0])
    assert shift == pytest.approx(-0.1 * 0.2 * std * 4, rel=0.05)  # 4 more samples


def test_no_integration_far_from_the_setpoint_nor_without_gain(twin: Twin) -> None:
    std = twin.norm.std[twin.norm.index("T")]
    far = _run(twin, 0.1, [350.0 - 2 * OFFSET_BAND * std] * 6, [350.0] * 6).goals
    off = _run(twin, 0.0, [350.0 - 0.3 * std] * 6, [350.0] * 6).goals
    for goals in (far, off):
        np.testing.assert_allclose(goals[-1], goals[0])


def test_a_new_setpoint_restarts_the_integral(twin: Twin) -> None:
    std = twin.norm.std[twin.norm.index("T")]
    temperatures = [350.0 - 0.3 * std] * 6 + [360.0] * 2
    setpoints = [350.0] * 6 + [360.0] * 2
    goals = _run(twin, 0.1, temperatures, setpoints).goals
    plain = _run(twin, 0.0, temperatures, setpoints).goals
    assert _goal_t(twin, goals[5]) > _goal_t(twin, plain[5])
    np.testing.assert_allclose(goals[-1], plain[-1])  # at the setpoint: no error to add


def test_several_setpoints_leave_the_goal_alone(twin: Twin) -> None:
    recorder = GoalRecorder()
    controller = cold_controller(
        twin,
        recorder,
        mismatch_trip=math.inf,
        guard_band=0.0,
        disagreement_trip=math.inf,
        offset_gain=0.1,
    )
    base = cstr.CSTRSimulator(seed=0).measure()
    std = twin.norm.std[twin.norm.index("T")]
    for k in range(4):
        controller.step(
            6.0 * k, {**base, "T": 350.0 - 0.3 * std}, {"T": 350.0, "Ca": float(base["Ca"])}
        )
    np.testing.assert_allclose(recorder.goals[-1], recorder.goals[0])
