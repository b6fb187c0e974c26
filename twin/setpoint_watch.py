"""The setpoint watch: where the twin has shown it cannot hold its setpoints, the loop goes
to the baseline's PI loops until they have settled the plant.

The other guards judge the twin's forecasts and plans; this one judges the result. A twin
whose one-step forecasts are fine can still be wrong about where its moves lead (a
measured disturbance at the edge of its log), or be kept by the data envelope from the
moves the setpoints need, and hold the plant far from its setpoints for as long as
nothing changes (the held-out mixing tank: docs/benchmarks.md).

- Watched: the controlled sensors a PI loop of the spec's baseline regulates. A baseline
  without feedback on a sensor is no remedy for missing it (watching the glucose CGM
  handed basal-bolus half the samples and cost time in range).
- Trip: at least `settle` samples after the last setpoint change, a sensor's mean miss
  over the last `settle // 2` samples exceeds `MISS_TRIP` training stds and is not
  shrinking (a twin already closing the miss, as after a meal, keeps the loop).
- Release: the baseline has held every miss inside `CLEAR_BAND` for `settle` samples (a
  setpoint change does not release: the same twin then failed again on the mixing tank's
  next segment); or, a horizon after the trip and after any setpoint change since, the
  baseline misses by no less than the twin did, and the twin keeps the loop until a
  setpoint moves (no lock-in on a PI worse than the twin).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

MISS_TRIP = 0.5
"""Training stds: the offset estimate closes misses inside this band
(`twin.goals.OFFSET_BAND`); a mean miss beyond it, a horizon after a setpoint change, is a
twin that cannot hold the plant there. 1.0 tripped 20 samples later on the mixing tank's
failing twins (docs/benchmarks.md)."""
CLEAR_BAND = 0.5
"""Training stds: the baseline has settled the plant when every miss stays inside this
(the offset estimate's own band, `twin.goals.OFFSET_BAND`)."""


class SetpointWatch:
    def __init__(self, stds: Mapping[str, float], settle_samples: int) -> None:
        self.stds = dict(stds)
        self.settle = max(int(settle_samples), 2)
        self.reset()

    def reset(self) -> None:
        self._setpoints: tuple | None = None
        self._misses: list[np.ndarray] = []  # since the last setpoint change, training stds
        self._settled = 0  # samples in a row with every miss inside CLEAR_BAND
        self._since_trip = 0
        self._trip_miss: np.ndarray | None = None  # the window's mean misses at the trip
        self._idle = False  # the baseline proved no better: no trip until a setpoint moves
        self.reason: str | None = None

    def observe(
        self,
        setpoints: Mapping[str, float],
        measurements: Mapping[str, float | None],
    ) -> str | None:
        """Record this sample's misses; why the twin is set aside now (None: it is not)."""
        tags = sorted(t for t in setpoints if t in self.stds)
        key = tuple((t, float(setpoints[t])) for t in tags)
        if key != self._setpoints:  # a transient the plan is given time for
            self._setpoints, self._misses, self._settled, self._idle = key, [], 0, False
        miss = np.array(
            [
                np.nan
                if measurements.get(t) is None
                else (float(measurements[t]) - float(setpoints[t])) / self.stds[t]  # type: ignore[arg-type]
                for t in tags
            ]
        )
        self._misses.append(miss)
        if len(self._misses) > 2 * self.settle:
            self._misses.pop(0)
        inside = bool(np.all(np.nan_to_num(np.abs(miss)) <= CLEAR_BAND))
        self._settled = self._settled + 1 if inside else 0
        if self.reason is not None:
            self._since_trip += 1
            if self._settled >= self.settle:
                self.reason = None
            elif self._baseline_no_better():
                self.reason, self._idle = None, True  # the twin's, until a setpoint moves
        if self.reason is None and tags and not self._idle:
            self.reason = self._verdict(tags)
        return self.reason

    def _baseline_no_better(self) -> bool:
        """A horizon after the trip and after any setpoint change since, the baseline
        misses by no less than the twin did when it tripped: it is no remedy either."""
        window = self.settle // 2
        if self._since_trip < self.settle or len(self._misses) < self.settle:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            now = np.nanmean(np.abs(np.array(self._misses[-window:])), axis=0)
        if self._trip_miss is None or now.shape != self._trip_miss.shape:
            return False
        return bool(np.nanmax(now - self._trip_miss) >= 0.0)

    def _verdict(self, tags: list[str]) -> str | None:
        window = self.settle // 2
        if len(self._misses) < self.settle + window or window < 2:
            return None
        recent = np.abs(np.array(self._misses[-window:]))
        with warnings.catch_warnings():  # a sensor missing all window: NaN, no verdict
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(recent, axis=0)
            earlier = np.nanmean(recent[: window // 2], axis=0)
            later = np.nanmean(recent[window // 2 :], axis=0)
        for i, tag in enumerate(tags):
            if mean[i] > MISS_TRIP and later[i] >= earlier[i]:
                self._settled, self._since_trip, self._trip_miss = 0, 0, mean
                return (
                    f"setpoint missed: {tag} off its setpoint by {mean[i]:.2f} training std "
                    f"on average over the last {window} samples, not closing; the baseline "
                    f"holds the loop until it has kept every miss within {CLEAR_BAND} std "
                    f"for {self.settle} samples"
                )
        return None
