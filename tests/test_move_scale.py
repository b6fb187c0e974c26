"""The move a plan's move penalty counts as one: the rate limit, or less where the twin's
own step response says a move that large would shift a controlled sensor by more than
`MOVE_EFFECT` training stds over the plan; every form of the cost uses it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from twin_fixtures import tiny_twin

from twin.gains import start_states
from twin.planning import PlannerSettings
from twin.planning.constraints import Constraints
from twin.planning.cost import PlanningCost
from twin.response import MOVE_EFFECT, move_scales
from twin.spec import ProcessSpec
from twin.twin_model import Twin

HORIZON = 20


@pytest.fixture(scope="module")
def twin() -> Twin:
    return tiny_twin()[0]


def _with_rate(twin: Twin, rate_limit: float) -> Twin:
    data = twin.spec.to_dict()
    for tag in data["tags"]:
        if tag["name"] == "Tc":
            tag["rate_limit"] = rate_limit
    return dataclasses.replace(twin, spec=ProcessSpec.from_dict(data))


def _effect(twin: Twin, move: float) -> float:
    """The largest change of a controlled sensor (training stds) at the horizon's end
    after a held move of `move` (normalised) on the coolant."""
    z, held = start_states(twin, count=1)
    base = np.repeat(held.numpy().astype(float), HORIZON, axis=0)
    stepped = base.copy()
    stepped[:, 0] += move
    rows = [twin.layout.observed.index(t.name) for t in twin.spec.controlled]
    ends = [twin.ensemble_rollout(z[0].numpy(), u).mean(axis=0)[-1] for u in (base, stepped)]
    with torch.no_grad():
        read = [twin.model.readout(torch.as_tensor(e, dtype=torch.float32)).numpy() for e in ends]
    return float(np.max(np.abs(read[1][rows] - read[0][rows])))


def test_a_rate_limit_that_moves_the_plant_far_is_counted_smaller(twin: Twin) -> None:
    rate = Constraints.from_twin(twin, 0.0).rate
    scale = move_scales(twin, HORIZON)
    assert scale is not None and scale[0] < rate[0]
    # the counted move shifts the controlled sensor by MOVE_EFFECT stds (a half-std step
    # measured it: the twin is near linear over that range)
    assert _effect(twin, float(scale[0])) == pytest.approx(MOVE_EFFECT, rel=0.25)


def test_a_slow_actuator_keeps_its_rate_limit(twin: Twin) -> None:
    slow = _with_rate(twin, 1e-3)
    rate = Constraints.from_twin(slow, 0.0).rate
    np.testing.assert_allclose(move_scales(slow, HORIZON), rate)


def test_every_form_of_the_cost_counts_moves_by_the_scale(twin: Twin) -> None:
    settings = PlannerSettings.for_twin(twin)
    assert settings.move_scale is not None
    limits = Constraints.from_twin(twin, settings.limit_margin)
    cost = PlanningCost.of(settings, limits)
    np.testing.assert_allclose(cost.move_scale, settings.move_scale)
    u_prev, move = np.zeros(1), np.array([[0.1], [0.1]])
    least_squares = cost.move_least_squares(2) @ move.ravel() - cost.move_offset(u_prev, 2)
    expected = settings.move_weight * (0.1 / settings.move_scale[0]) ** 2
    assert float(least_squares @ least_squares) == pytest.approx(expected)


def test_a_scale_of_the_wrong_size_is_refused(twin: Twin) -> None:
    settings = PlannerSettings(move_scale=(0.1, 0.2))
    with pytest.raises(ValueError, match="move scale"):
        PlanningCost.of(settings, Constraints.from_twin(twin, 0.0))
