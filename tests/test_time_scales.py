"""The plan's horizon comes from the log's time scales (`twin.time_scales`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from twin.spec import ControlWeights, ProcessSpec, Tag, TagRole
from twin.time_scales import HORIZON_RANGE, dominant_responses, log_horizon, with_log_horizon


def _spec(controlled: bool = True, horizon: int | None = None) -> ProcessSpec:
    return ProcessSpec(
        name="lagged",
        description="a first-order lag behind a dead time",
        sample_period_s=1.0,
        timestamp_column="time_s",
        tags=(
            Tag(name="y", role=TagRole.SENSOR, unit="K", controlled=controlled),
            Tag(name="u", role=TagRole.ACTUATOR, unit="%", low=0.0, high=100.0, rate_limit=100.0),
        ),
        control=ControlWeights(horizon=horizon),
    )


def _log(dead: int, tau: float, rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Random steps through y' = (2 u(t - dead) - y) / tau, 1 % noise."""
    rng = np.random.default_rng(seed)
    u = np.repeat(rng.uniform(20.0, 80.0, rows // 40 + 1), 40)[:rows]
    a = np.exp(-1.0 / tau)
    y = np.zeros(rows)
    for k in range(1, rows):
        y[k] = a * y[k - 1] + (1 - a) * 2.0 * u[max(k - 1 - dead, 0)]
    y += rng.normal(0.0, 1.2, rows)
    return pd.DataFrame({"time_s": np.arange(rows, dtype=float), "y": y, "u": u})


def test_a_slow_plant_gets_a_horizon_past_its_dead_time_and_settling() -> None:
    model = dominant_responses(_log(dead=10, tau=6.0), _spec())["y"]
    assert 9.0 <= model.theta_s <= 13.0 and 4.0 <= model.tau_s <= 8.0
    horizon = log_horizon(_log(dead=10, tau=6.0), _spec())
    assert 26 <= horizon <= 34  # dead time + 3 time constants


def test_a_fast_plant_keeps_the_shortest_horizon_and_a_slow_one_the_longest() -> None:
    assert log_horizon(_log(dead=0, tau=2.0), _spec()) == HORIZON_RANGE[0]
    assert log_horizon(_log(dead=30, tau=25.0), _spec()) == HORIZON_RANGE[1]


def test_the_tag_file_horizon_wins_and_no_controlled_sensor_keeps_the_default() -> None:
    log = _log(dead=10, tau=6.0)
    assert with_log_horizon(_spec(horizon=7), log).control.horizon == 7
    assert with_log_horizon(_spec(), log).control.horizon == log_horizon(log, _spec())
    assert log_horizon(log, _spec(controlled=False)) == HORIZON_RANGE[0]


def test_a_log_without_any_effect_keeps_the_default() -> None:
    log = _log(dead=10, tau=6.0).assign(u=50.0)  # the actuator never moves
    assert log_horizon(log, _spec()) == HORIZON_RANGE[0]
