"""The limit guard knows noise from trend: it extrapolates each limited sensor's filtered
level along the part of its filtered slope that the sensor's noise does not explain
(`twin.trend`), so a steady plant with 1 % sensor noise does not trip it, and a real ramp
towards a limit still does, before the plant enters the guard band."""

from __future__ import annotations

import math

import numpy as np
import pytest
from twin_fixtures import tiny_twin

from twin.estimator import Estimator
from twin.supervisor import GUARD_LOOKAHEAD, Supervisor
from twin.trend import SLOPE_SIGNIFICANCE, TrendFilter, alpha_beta_gains, noise_ratios
from twin.twin_model import Twin

GUARD_BAND = 0.3
PERIOD = 6.0


@pytest.fixture(scope="module")
def twin() -> Twin:
    return tiny_twin()[0]


def _parts(twin: Twin) -> tuple[Estimator, Supervisor]:
    estimator = Estimator(twin, 0.3, 0.15, 10, 3 * PERIOD)
    supervisor = Supervisor(twin, GUARD_BAND, 0.5, 3, 0, 0.5, None)
    return estimator, supervisor


def _guard_trips(twin: Twin, temperatures: np.ndarray) -> list[bool]:
    estimator, supervisor = _parts(twin)
    trips = []
    for k, value in enumerate(temperatures):
        sample = {"T": float(value), "Ca": 0.5}
        estimator.append(PERIOD * k, sample, {"Tc": 300.0})
        trips.append(supervisor.limit_guard(sample, estimator.trends()).reason is not None)
    return trips


def _noise_blind_trips(temperatures: np.ndarray, high: float, band: float) -> list[bool]:
    """The guard as it was: raw samples extrapolated from their last change."""
    ahead = temperatures[1:] + GUARD_LOOKAHEAD * np.diff(temperatures)
    return [False] + list(ahead > high - band)


def _setting(twin: Twin) -> tuple[float, float, float]:
    """(the T limit, the guard band, 1 % of the span the log covered, as noise std)."""
    std = float(twin.norm.std[twin.norm.index("T")])
    high = twin.spec.tag("T").high
    assert high is not None
    return high, GUARD_BAND * std, 0.01 * 4.0 * std  # a log spans about 4 stds


def test_a_steady_plant_with_one_percent_noise_does_not_trip(twin: Twin) -> None:
    high, band, noise = _setting(twin)
    rng = np.random.default_rng(5)
    # steady, 3 noise stds outside the guard band: the raw extrapolation (3.6 noise stds)
    # reaches into the band often, the true state never
    level = high - band - 3.0 * noise
    temperatures = level + rng.normal(0.0, noise, 400)
    trips = _guard_trips(twin, temperatures)[50:]  # after the noise estimate settles
    blind = _noise_blind_trips(temperatures, high, band)[50:]
    assert sum(blind) / len(blind) > 0.1  # the case a noise-blind guard fails
    assert sum(trips) / len(trips) <= 0.01


def test_a_ramp_towards_the_limit_trips_before_the_band(twin: Twin) -> None:
    high, band, noise = _setting(twin)
    rng = np.random.default_rng(6)
    start = high - band - 12.0 * noise
    steady = start + rng.normal(0.0, noise, 80)
    rate = 0.5 * noise  # a slow drift: half a noise std per sample
    ramp = start + rate * np.arange(1, 60) + rng.normal(0.0, noise, 59)
    true = np.concatenate([np.full(80, start), start + rate * np.arange(1, 60)])
    trips = _guard_trips(twin, np.concatenate([steady, ramp]))
    assert not any(trips[50:80])  # steady: quiet
    entered = int(np.argmax(true > high - band))  # the true state enters the band
    first = int(np.argmax(trips[80:])) + 80
    assert trips[first]
    assert first < entered


def test_the_filter_measures_the_noise_and_follows_a_ramp_without_lag() -> None:
    rng = np.random.default_rng(7)
    trend = TrendFilter({"y": 1.0}, {"y": 0.2})  # the prior is capped, then measured
    for k in range(300):
        trend.update({"y": 0.02 * k + rng.normal(0.0, 0.04)})
    state = trend.trends()["y"]
    assert state.noise == pytest.approx(0.04, rel=0.35)
    assert state.slope == pytest.approx(0.02, abs=3 * state.slope_sd)
    assert state.level == pytest.approx(0.02 * 299, abs=4 * state.level_sd)
    # a jitter is no trend: a slope inside its significance extrapolates nowhere
    flat = type(state)(1.0, SLOPE_SIGNIFICANCE * 0.01 * 0.99, 0.0, 0.01, 0.04)
    assert flat.ahead(5) == 1.0


def test_kalata_gains_and_noise_ratios() -> None:
    alpha, beta = alpha_beta_gains(0.25)
    assert alpha == pytest.approx(0.505, abs=0.01) and beta == pytest.approx(0.176, abs=0.01)
    level, slope = noise_ratios(alpha, beta)
    assert 0.0 < slope < level < 1.0
    assert alpha_beta_gains(1e6)[0] == pytest.approx(1.0, abs=1e-3)  # clean: trust samples
    assert math.isfinite(noise_ratios(*alpha_beta_gains(1e-9))[0])
