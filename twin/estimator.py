"""The controller's state estimator: the context window, the twin's one-step forecast, its
steady bias and the trust that its forecasts earn.

Updates (`observe`, `append`, `forecast`) change state; queries (`encode`, `trusted`,
`limit_shift`, `error_scale`) only read it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from statistics import NormalDist

import numpy as np

from .data import window_from_rows
from .records import EventKind, SafetyEvent
from .trend import Trend, TrendFilter
from .twin_model import Twin

MISMATCH_TRIP_SIGMAS = 4.0
"""The mismatch trip in multiples of a sensor's usual one-step forecast error (the error
scale is built so that the trip is 4 of them, the clear 2; `error_scale`). At 3, chance
alone tripped it about once an episode (a 3-sigma miss comes every 370 samples), and each
trip hands the loop to the baseline for ten samples: on the zoo's level tank and van de
Vusse reactor 3-10 % of the samples fell back on misses of 3.0-3.6 of the twin's held-out
RMSE; at 4 none did, at the same or lower cost (`benchmarks/new_plant.py`)."""
FORECAST_BIAS_TRIPS = 3.0
"""A forecast bias beyond this many mismatch trips (0.9 error units by default) is a
mismatch in itself, however steady: the twin is then too far from this plant to be
corrected by an offset. Judged on the sensors the plan answers to (controlled or limited):
elsewhere a steady offset is a disturbance the twin's context carries, not a plan it
spoils. Under the Tennessee Eastman's cooling-water step (IDV 4) the reactor's cooling
outlet temperature, a context sensor, kept the twin out on 681 of 800 samples."""


@cache  # the same few arguments every control step
def family_threshold(threshold: float, trip: float, sensors: int) -> float:
    """The per-sensor threshold at which the worst of `sensors` forecast errors crosses as
    often as one sensor's error crosses `threshold` (Sidak; errors taken as independent
    and normal, with `trip` at `MISMATCH_TRIP_SIGMAS` of them).

    The mismatch check judges the worst sensor. With the thresholds of one sensor, the
    Tennessee Eastman twin, judged on 41, never earned trust: its worst error had a median
    of 0.146 against the clear of 0.15, so ten clear steps in a row came about once in a
    thousand, and the baseline ran 779 of 800 samples of an episode (base case, seed 7)."""
    if sensors <= 1 or not (0 < threshold < math.inf) or not (0 < trip < math.inf):
        return threshold
    unit = NormalDist()
    sigmas = MISMATCH_TRIP_SIGMAS * threshold / trip
    one = 2.0 * (1.0 - unit.cdf(sigmas))  # the chance that one sensor crosses
    each = 1.0 - (1.0 - one) ** (1.0 / sensors)
    if not 0.0 < each < 1.0:  # a threshold so far out no error reaches it: keep it
        return threshold
    return threshold * unit.inv_cdf(1.0 - each / 2.0) / sigmas


@dataclass(frozen=True)
class ForecastCheck:
    """How the twin's last forecast met this sample, net of its bias (error units)."""

    errors: dict[str, float] = field(default_factory=dict)
    biases: dict[str, float] = field(default_factory=dict)
    good_steps: int = 0


class Estimator:
    def __init__(
        self,
        twin: Twin,
        mismatch_trip: float,
        mismatch_clear: float,
        trust_after_steps: int,
        stale_after_s: float,
    ) -> None:
        self.twin, self.spec = twin, twin.spec
        self.mismatch_trip, self.mismatch_clear = mismatch_trip, mismatch_clear
        self.trust_after_steps, self.stale_after_s = trust_after_steps, stale_after_s
        limited = [t.name for t in self.spec.sensors if t.low is not None or t.high is not None]
        self.answered = set(limited) | {t.name for t in self.spec.controlled}
        readout_rmse = twin.metrics.get("readout_rmse", {})
        # the held-out readout error is the sensor's noise or more: a cautious start
        self.trend = TrendFilter(
            {tag: self.twin.norm.std[self.twin.norm.index(tag)] for tag in limited},
            {tag: float(readout_rmse.get(tag) or 0.0) for tag in limited},
        )
        self.reset()

    def reset(self) -> None:
        w = self.twin.config.window
        self.rows: deque[dict[str, float | None]] = deque([{}] * w, maxlen=w)
        self.before: deque[dict[str, float] | None] = deque([None] * w, maxlen=w)
        self.last_time_s: float | None = None
        self.last_measured: dict[str, float] = {}  # the previous sample's finite values
        self.expected: dict[str, float] = {}  # the twin's forecast for the next sample
        self.forecast_bias: dict[str, float] = {}  # measured minus forecast, smoothed
        self.good_steps = self.trust_after_steps
        self.trend.reset()

    # -- updates -------------------------------------------------------------------------
    def append(
        self, time_s: float, measurements: Mapping[str, float | None], previous: Mapping[str, float]
    ) -> list[SafetyEvent]:
        """Add the sample to the window; the events say why it is too stale to plan on."""
        events, missed = [], 0
        if self.last_time_s is not None:
            gap = time_s - self.last_time_s
            missed = int(round(gap / self.spec.sample_period_s)) - 1
            for _ in range(min(max(missed, 0), self.twin.config.window)):
                self.rows.append({})  # missed samples are masked, never invented
                self.before.append(None)
            if gap > self.stale_after_s:
                events.append(
                    SafetyEvent(
                        EventKind.STALE_DATA,
                        f"{gap:.3g} s since the "
                        f"previous sample (limit {self.stale_after_s:.3g} "
                        "s); holding actuators",
                    )
                )
        self.rows.append({k: (None if v is None else float(v)) for k, v in measurements.items()})
        self.before.append(dict(previous))
        self.last_time_s = float(time_s)
        self.trend.update(measurements, max(missed, 0) + 1)
        sensors = self.twin.layout.sensors
        if all(measurements.get(t) is None for t in sensors) and sensors:
            events.append(
                SafetyEvent(
                    EventKind.MISSING_DATA, "no sensor value in this sample; holding actuators"
                )
            )
        return events

    def remember(self, measurements: Mapping[str, float | None]) -> None:
        """Keep this sample's finite values as the previous sample of the next step."""
        self.last_measured.update(
            {
                tag: float(value)
                for tag, value in measurements.items()
                if value is not None and math.isfinite(value)
            }
        )

    def observe(self, measurements: Mapping[str, float | None]) -> ForecastCheck:
        """Judge the last forecast against this sample: the bias moves towards the miss
        (`control.forecast_bias_gain`), and the count of good steps (errors below the
        clear threshold; reset by one beyond the trip or by a bias too large) moves on."""
        errors, biases = {}, {}
        for tag, forecast in self.expected.items():
            value = measurements.get(tag)
            if value is None:
                continue
            scale, miss = self.error_scale(tag), float(value) - forecast
            bias = self.forecast_bias.get(tag, 0.0)
            errors[tag] = abs(miss - bias) / scale
            # a Huber step: one wild sample moves the bias by a trip's worth at most
            step = float(
                np.clip(miss - bias, -self.mismatch_trip * scale, self.mismatch_trip * scale)
            )
            bias += self.spec.control.forecast_bias_gain * step
            self.forecast_bias[tag] = bias
            if tag in self.answered:
                biases[tag] = abs(bias) / scale
        worst = max(errors.values(), default=0.0)
        trip, clear = (
            family_threshold(t, self.mismatch_trip, len(errors))
            for t in (self.mismatch_trip, self.mismatch_clear)
        )
        if worst > trip or max(biases.values(), default=0.0) > self.bias_limit:
            self.good_steps = 0
        elif worst < clear:
            self.good_steps += 1
        return ForecastCheck(errors, biases, self.good_steps)

    def forecast(self, z0: np.ndarray | None, applied: Mapping[str, float]) -> None:
        """What the twin expects to measure next, given what was really applied (the
        baseline's move when it acted): the mismatch check judges the model, not the plan."""
        if z0 is None:
            self.expected = {}
            return
        u = np.array([applied[a] for a in self.twin.layout.actions])
        ahead = self.twin.readout(self.twin.predict_next(z0, u))
        self.expected = {tag: float(v) for tag, v in ahead.items()}

    def prime(
        self, history: Sequence[tuple[float, Mapping[str, float | None], Mapping[str, float]]]
    ) -> dict[str, float] | None:
        """Refill the window from stored steps, oldest first, each (time_s, measurements,
        actuators applied then); returns the actuators last applied (None: no history)."""
        window = list(history)[-self.twin.config.window :]
        self.reset()
        if not window:
            return None
        previous = dict(window[0][2])
        for time_s, measurements, applied in window:
            self.append(time_s, measurements, previous)
            previous = dict(applied)
        self.remember(window[-1][1])
        return previous

    # -- queries -------------------------------------------------------------------------
    @property
    def bias_limit(self) -> float:
        return FORECAST_BIAS_TRIPS * self.mismatch_trip

    def trends(self) -> dict[str, Trend]:
        """The filtered level and slope of each limited sensor (the limit guard's view)."""
        return self.trend.trends()

    def trusted(self) -> bool:
        return self.good_steps >= self.trust_after_steps

    def history_samples(self) -> int:
        return sum(bool(row) for row in self.rows)

    def encode(self) -> np.ndarray:
        """The twin's embedding of the window."""
        window = window_from_rows(
            list(self.rows), list(self.before), self.twin.layout, self.twin.norm
        )
        return self.twin.encode(window)

    def limit_shift(self, names: Sequence[str]) -> np.ndarray:
        """The forecast bias of each named sensor, normalised (the plan's limits move by it)."""
        return np.array(
            [
                self.forecast_bias.get(name, 0.0) / self.twin.norm.std[self.twin.norm.index(name)]
                for name in names
            ]
        )

    def error_scale(self, tag: str) -> float:
        """The unit of forecast error for `tag`: its training std, widened for a sensor the
        twin reads out or forecasts poorly (noisy, weakly observable, fast) so that a miss
        within four of its held-out readout or one-step forecast RMSEs never trips (errors
        then read in "std" of that scale). The turbofan twin's surge-margin forecast missed
        its own held-out data by 1.06 % RMS (0.38 std): judged on the training std alone it
        tripped on the data it learned from. `forecast_tail` (the held-out miss's 99th
        percentile as a normal's std) covers misses that are rare but large, as a sampled
        analyser's jump at each update."""
        std = self.twin.norm.std[self.twin.norm.index(tag)]
        usual = [
            float(rmse)
            for rmse in (
                self.twin.metrics.get(key, {}).get(tag)
                for key in ("readout_rmse", "forecast_rmse", "forecast_tail")
            )
            if rmse is not None and math.isfinite(rmse)
        ]
        if not usual:
            return std
        return max(std, MISMATCH_TRIP_SIGMAS * max(usual) / self.mismatch_trip)

    def mismatch_reason(self, check: ForecastCheck) -> str | None:
        """Why the twin is not trusted, if its forecasts have not yet earned it."""
        if self.trusted():
            return None
        detail = ", ".join(f"{t} {e:.2f}" for t, e in check.errors.items())
        bias = ", ".join(f"{t} {b:.2f}" for t, b in check.biases.items() if b > self.bias_limit)
        return (
            f"model mismatch: one-step forecast error beyond its bias (in std) {detail}"
            + (f"; bias beyond {self.bias_limit:.3g} std: {bias}" if bias else "")
            + f"; {check.good_steps}/{self.trust_after_steps} good steps to trust again"
        )
