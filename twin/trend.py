"""Level and trend of each limited sensor, filtered: what the limit guard extrapolates.

An alpha-beta filter (the steady-state Kalman filter of a constant-velocity model) per
sensor, with gains from the ratio of the plant's manoeuvres to the sensor's measured
noise (Kalata's tracking index). The noise is measured online, from the sample's second
differences (white noise of std s gives second differences of std s * sqrt 6; a smooth
trend gives almost none), starting from the twin's held-out readout error, so a noisy
sensor is smoothed more and a clean one tracked closely. A real ramp is tracked without
lag (the filter carries its slope); a jitter moves the level by a fraction of itself and
the slope by less.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MANOEUVRE_STD = 0.01
"""The plant's manoeuvre (change of slope per sample) the filter expects, in training stds
of the sensor: with 1 % sensor noise (about 0.04 std of a sensor excited over its range)
the tracking index is 0.25, alpha 0.5 and beta 0.18: the level's noise drops to 0.65 of the
sensor's and the extrapolated value's two samples ahead to about 0.8 (raw extrapolation:
3.6)."""
NOISE_MEMORY = 0.1
"""Per-sample weight of the newest second difference in the online noise estimate."""
PRIOR_NOISE_STD = 0.02
"""The noise estimate starts at no more than this many training stds (less where the twin
reads the sensor out closer): an optimistic start keeps the guard as alert as the raw
samples' until the noise is measured (tens of samples, inside the warm-up); a twin's
held-out readout error alone (0.25 std for a barely trained CSTR twin) would blind it
then."""
NOISE_FLOOR = 1e-3
"""The noise estimate never drops below this many training stds (a quantised or frozen
signal would otherwise make the filter trust every sample blindly)."""
JUMP_SIGMAS = 4.0
"""A sample this many noise stds off the filter's prediction is no jitter: the filter takes
it whole (level and slope), as the raw samples would."""
SLOPE_SIGNIFICANCE = 2.0
"""A slope counts only by what it exceeds this many of its own noise stds: the part a
jitter explains is no trend."""


@dataclass(frozen=True)
class Trend:
    """A sensor's filtered state: level (engineering units), slope (units per sample) and
    the noise std of each, and the sensor's noise std itself."""

    level: float
    slope: float
    level_sd: float
    slope_sd: float
    noise: float

    def ahead(self, samples: float) -> float:
        """The level `samples` ahead along the slope's significant part only."""
        excess = max(abs(self.slope) - SLOPE_SIGNIFICANCE * self.slope_sd, 0.0)
        return self.level + samples * math.copysign(excess, self.slope)


def alpha_beta_gains(tracking_index: float) -> tuple[float, float]:
    """Kalata's steady-state gains of the constant-velocity filter."""
    lam = max(tracking_index, 1e-9)
    r = (4.0 + lam - math.sqrt(8.0 * lam + lam * lam)) / 4.0
    alpha = 1.0 - r * r
    beta = 2.0 * (2.0 - alpha) - 4.0 * math.sqrt(1.0 - alpha)
    return alpha, beta


def noise_ratios(alpha: float, beta: float) -> tuple[float, float]:
    """Steady-state std of the level and slope estimates per unit of white measurement
    noise (Kalata, Benedict-Bordner)."""
    denominator = alpha * (4.0 - 2.0 * alpha - beta)
    level = (2.0 * alpha * alpha + beta * (2.0 - 3.0 * alpha)) / denominator
    slope = 2.0 * beta * beta / denominator
    return math.sqrt(max(level, 0.0)), math.sqrt(max(slope, 0.0))


class TrendFilter:
    """The filtered level and slope of each named sensor, one sample at a time."""

    def __init__(self, scales: Mapping[str, float], noise: Mapping[str, float]) -> None:
        """`scales`: each sensor's training std; `noise`: its starting noise std, at most
        `PRIOR_NOISE_STD` (both in engineering units; the noise is then measured online)."""
        self.scales = {tag: float(s) for tag, s in scales.items()}
        self.prior = {
            tag: min(max(float(noise.get(tag, 0.0)), NOISE_FLOOR * s), PRIOR_NOISE_STD * s)
            for tag, s in self.scales.items()
        }
        self.reset()

    def reset(self) -> None:
        self.level: dict[str, float] = {}
        self.slope: dict[str, float] = {}
        self.variance = {tag: n * n for tag, n in self.prior.items()}
        self.recent: dict[str, tuple[float, ...]] = {}  # the last raw samples (second diffs)

    def update(self, measurements: Mapping[str, float | None], samples: int = 1) -> None:
        """Take this sample; `samples`: sample periods since the last one (a gap is
        bridged along the slope)."""
        steps = max(int(samples), 1)
        for tag in self.scales:
            value = measurements.get(tag)
            if value is None or not math.isfinite(value):
                continue
            self._update(tag, float(value), steps)

    def _update(self, tag: str, value: float, steps: int) -> None:
        if tag not in self.level:
            self.level[tag], self.slope[tag], self.recent[tag] = value, 0.0, (value,)
            return
        recent = (self.recent[tag] + (value,))[-3:] if steps == 1 else (value,)
        self.recent[tag] = recent
        if len(recent) == 3:
            second = recent[2] - 2.0 * recent[1] + recent[0]
            # Huber step: one kink (a setpoint step, a valve jump) moves it a little only
            sample = min(second * second / 6.0, 9.0 * self.variance[tag])
            floor = (NOISE_FLOOR * self.scales[tag]) ** 2
            self.variance[tag] = max(
                (1.0 - NOISE_MEMORY) * self.variance[tag] + NOISE_MEMORY * sample, floor
            )
        alpha, beta = self.gains(tag)
        predicted = self.level[tag] + steps * self.slope[tag]
        innovation = value - predicted
        if abs(innovation) > JUMP_SIGMAS * math.sqrt(self.variance[tag]):
            alpha, beta = 1.0, 1.0
        self.level[tag] = predicted + alpha * innovation
        self.slope[tag] += beta * innovation / steps

    def gains(self, tag: str) -> tuple[float, float]:
        noise = math.sqrt(self.variance[tag])
        return alpha_beta_gains(MANOEUVRE_STD * self.scales[tag] / noise)

    def trends(self, tags: Iterable[str] | None = None) -> dict[str, Trend]:
        out = {}
        for tag in self.level if tags is None else tags:
            if tag not in self.level:
                continue
            noise = math.sqrt(self.variance[tag])
            level_ratio, slope_ratio = noise_ratios(*self.gains(tag))
            out[tag] = Trend(
                self.level[tag], self.slope[tag], level_ratio * noise, slope_ratio * noise, noise
            )
        return out
