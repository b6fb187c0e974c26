"""The setpoint watch hands the loop to the baseline where the twin has shown it cannot
hold its setpoints: only after the plan's horizon to answer a setpoint change, only for a
miss that is large and not closing, through later setpoint changes, and back to the twin
once the baseline has settled the plant."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from test_offset_free import GoalRecorder
from twin_fixtures import cold_controller, tiny_twin

from processes import cstr
from twin.planning import PlannerSettings
from twin.records import EventKind, StepStatus
from twin.setpoint_watch import CLEAR_BAND, MISS_TRIP, SetpointWatch
from twin.spec_control import PILoop
from twin.twin_model import Twin

HORIZON = 8  # the controller's plan, samples: its watch's settle time
SETTLE = 20  # samples: the trip needs SETTLE + SETTLE // 2 after a setpoint change


def _feed(watch: SetpointWatch, misses: list[float], setpoint: float = 0.0) -> list[str | None]:
    return [watch.observe({"y": setpoint}, {"y": setpoint + m}) for m in misses]


def test_a_steady_large_miss_trips_once_the_plan_had_its_horizon() -> None:
    watch = SetpointWatch({"y": 2.0}, SETTLE)  # 2 units per training std
    verdicts = _feed(watch, [2.0 * 1.5] * 40)  # 1.5 training stds off, not closing
    first = next(k for k, v in enumerate(verdicts) if v)
    assert first == SETTLE + SETTLE // 2 - 1  # not before: the grace after the change
    assert "y off its setpoint by 1.50 training std" in str(verdicts[-1])


def test_no_trip_for_a_small_miss_a_closing_miss_or_a_missing_sensor() -> None:
    small = SetpointWatch({"y": 1.0}, SETTLE)
    assert not any(_feed(small, [0.9 * MISS_TRIP] * 60))
    closing = SetpointWatch({"y": 1.0}, SETTLE)  # large but shrinking, as after a meal
    assert not any(_feed(closing, list(np.linspace(4.0, 1.2, 60))))
    missing = SetpointWatch({"y": 1.0}, SETTLE)
    assert not any(missing.observe({"y": 0.0}, {"y": None}) for _ in range(60))


def test_a_setpoint_change_restarts_the_grace_but_does_not_release_a_trip() -> None:
    watch = SetpointWatch({"y": 1.0}, SETTLE)
    assert not any(_feed(watch, [3.0] * 25) + _feed(watch, [3.0] * 25, setpoint=1.0))
    assert _feed(watch, [3.0] * 10, setpoint=1.0)[-1]  # tripped, 35 samples after
    still = _feed(watch, [3.0] * 5 + [0.9 * CLEAR_BAND] * (SETTLE - 1), setpoint=2.0)
    assert all(still)  # the change and SETTLE - 1 settled samples keep the baseline
    assert _feed(watch, [0.0], setpoint=2.0) == [None]  # SETTLE settled samples release
    assert not any(_feed(watch, [0.0] * 40, setpoint=2.0))


@pytest.fixture(scope="module")
def twin() -> Twin:
    return tiny_twin()[0]


def _with_loop(twin: Twin) -> Twin:
    """The twin under a spec whose baseline declares a PI loop on T (a tag file's pairing)."""
    loops = [PILoop(sensor="T", actuator="Tc", kp=-1.0, ti_s=60.0)]
    return dataclasses.replace(twin, spec=twin.spec.model_copy(update={"baseline": loops}))


def _steps(twin: Twin, with_baseline: bool, samples: int) -> list:
    planner = GoalRecorder(settings=PlannerSettings(horizon=HORIZON))
    baseline = (lambda m, s, a: {"Tc": 301.0}) if with_baseline else None
    controller = cold_controller(
        twin,
        planner,
        baseline,
        mismatch_trip=math.inf,
        guard_band=0.0,
        disagreement_trip=math.inf,
    )
    std = twin.norm.std[twin.norm.index("T")]
    measured = {**cstr.CSTRSimulator(seed=0).measure(), "T": 350.0 + 2.0 * std}
    return [controller.step(6.0 * k, measured, {"T": 350.0}) for k in range(samples)]


def test_the_controller_hands_a_missed_setpoint_to_its_baseline(twin: Twin) -> None:
    samples = HORIZON + HORIZON // 2 + 3
    records = _steps(_with_loop(twin), True, samples)
    tripped = [r for r in records if r.status is StepStatus.FALLBACK]
    assert tripped and records[0].status is StepStatus.OK
    kinds = {e.kind for r in tripped for e in r.events}
    assert EventKind.SETPOINT_MISSED in kinds
    # without a baseline the twin keeps the loop: holding the actuators is no remedy
    alone = _steps(_with_loop(twin), False, samples)
    assert all(r.status is StepStatus.OK for r in alone)
    # nor is a baseline without a loop on the missed sensor (the glucose basal-bolus)
    unregulated = _steps(twin, True, samples)
    assert all(r.status is StepStatus.OK for r in unregulated)


def test_a_baseline_that_misses_no_less_gives_the_loop_back() -> None:
    watch = SetpointWatch({"y": 1.0}, SETTLE)
    assert _feed(watch, [1.0] * (SETTLE + SETTLE // 2))[-1]  # tripped at 1.0 std
    # the baseline does better, though not inside the band: it keeps the loop
    assert all(_feed(watch, [0.8] * (2 * SETTLE)))
    # then it misses by more than the twin did: the twin has the loop again
    verdicts = _feed(watch, [1.2] * SETTLE)
    released = verdicts.index(None)
    assert released < SETTLE // 2 and not any(verdicts[released:])
    # the twin keeps it, however it misses, until a setpoint moves
    assert not any(_feed(watch, [2.5] * (3 * SETTLE)))
    assert _feed(watch, [2.5] * (SETTLE + SETTLE // 2), setpoint=1.0)[-1]
