"""Defaults that control: a tag file that gives only physical facts plans on its setpoint
errors, and the built-in processes keep a control setting of their own only where it
differs from the default (and say why)."""

from __future__ import annotations

import numpy as np
import pytest
from twin_fixtures import cold_controller, tiny_twin, with_control

from processes import cstr, glucose, tennessee_eastman, turbofan
from twin.planning import PlannerSettings, PlanningProblem, PlanResult
from twin.spec import TRACKING_WEIGHT, ControlWeights, ProcessSpec


def test_a_tag_file_without_control_settings_tracks_its_setpoints() -> None:
    data = cstr.SPEC.to_dict()
    data.pop("control")
    spec = ProcessSpec.model_validate(data)
    assert spec.control.tracking_weight == TRACKING_WEIGHT > 0
    assert ControlWeights().tracking_weight == TRACKING_WEIGHT


def test_built_in_processes_override_only_what_they_measured() -> None:
    """The CSTR and the turbofan run on the default tracking weight and the log's horizon
    (the CSTR with its heavier move weight, the turbofan with its smaller limit margin);
    glucose keeps the tracking weight its committed figures were measured with and takes
    the log's horizon; the Tennessee Eastman keeps both."""
    for spec in (cstr.SPEC, turbofan.SPEC):
        assert spec.control.tracking_weight == TRACKING_WEIGHT
        assert not {"tracking_weight", "horizon"} & spec.control.model_fields_set
    assert glucose.SPEC.control.tracking_weight == 0.0
    assert "horizon" not in glucose.SPEC.control.model_fields_set
    assert tennessee_eastman.SPEC.control.tracking_weight == 0.0
    assert tennessee_eastman.SPEC.control.horizon == 20


class _MetricRecorder:
    name = "recorder"
    settings = PlannerSettings(horizon=3)

    def __init__(self) -> None:
        self.metrics: list[np.ndarray | None] = []

    def plan(self, problem: PlanningProblem) -> PlanResult:
        self.metrics.append(problem.metric)
        h = self.settings.horizon
        return PlanResult(
            True, np.tile(problem.u_prev, (h, 1)), np.tile(problem.z0, (h, 1)), 0.0, 1.0
        )


@pytest.mark.parametrize("weight", [TRACKING_WEIGHT, 0.0])
def test_the_plan_weighs_the_setpoint_error_by_default(weight: float) -> None:
    twin = with_control(tiny_twin()[0], tracking_weight=weight)
    recorder = _MetricRecorder()
    controller = cold_controller(twin, recorder)
    controller.step(0.0, cstr.CSTRSimulator(seed=0).measure(), {"T": 350.0})
    assert (recorder.metrics[-1] is not None) == (weight > 0)
