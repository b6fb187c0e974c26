"""Closed loop: a twin trained here drives the simulated CSTR through the benchmark scenario
with the CasADi planner and the PI fallback."""

from __future__ import annotations

import numpy as np
import pytest
from twin_fixtures import assert_within_bounds_and_rate, train, training_log

from processes import cstr
from twin.controller import TwinController
from twin.records import EpisodeResult, StepStatus
from twin.train import TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def episode() -> EpisodeResult:
    """The twin `make demo` trains (12 h of log, 20 epochs, defaults) on the benchmark."""
    twin, history = train(training_log(12.0, 1), TrainConfig(epochs=20, seed=0))
    assert history[-1].effective_rank > 4.0  # 16 dims; collapse would be ~1
    controller = TwinController.from_twin(twin, "casadi", fallback=cstr.pi_fallback())
    return cstr.run_episode(cstr.twin_policy(controller), "twin/casadi")


def test_applied_coolant_keeps_bounds_and_rates(episode: EpisodeResult) -> None:
    steps = episode.steps
    assert len(steps) == cstr.benchmark_scenario().steps
    tc = np.array([s.actuators["Tc"] for s in steps])
    assert_within_bounds_and_rate(
        tc, cstr.TC_NOMINAL, cstr.TC_LOW, cstr.TC_HIGH, cstr.RATE_PER_SAMPLE
    )
    # the twin is in charge (not only the fallback) and plans were recorded
    ok = [s for s in steps if s.status is StepStatus.OK]
    assert len(ok) > 0.8 * len(steps)
    assert all(s.plan is not None and len(s.plan.actuators["Tc"]) == 20 for s in ok)
    # the planned moves themselves respect the actuator bounds (rates: first move only,
    # later moves are relative to planned values)
    for s in ok:
        planned = np.array(s.plan.actuators["Tc"])
        assert planned.min() >= cstr.TC_LOW - 1e-4 and planned.max() <= cstr.TC_HIGH + 1e-4


def test_true_temperature_stays_under_limit(episode: EpisodeResult) -> None:
    metrics = episode.metrics
    assert metrics["violations"] == 0, metrics
    assert metrics["max_T_K"] <= cstr.T_LIMIT_K


def test_tracks_the_setpoint_roughly(episode: EpisodeResult) -> None:
    assert episode.metrics["mean_abs_error_K"] < 10.0
