"""The safety layer: the last word on every setpoint, trusting neither model nor solver.

Guarantee: every value returned lies within the actuator's bounds, and within its rate
limit of the previously applied value whenever that value was itself within bounds
(if it was not, bounds win and the value is moved to the nearest bound).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .records import SafetyEvent
from .spec import ProcessSpec

Fallback = Callable[[Mapping[str, float | None], Mapping[str, float], Mapping[str, float]],
                    Mapping[str, float]]
"""(measurements, setpoints, last applied actuators) -> proposed actuators."""

Protection = Callable[[Mapping[str, float | None], Mapping[str, float], Mapping[str, float]],
                      Mapping[str, float]]
"""(measurements, proposed actuators, last applied actuators) -> the proposal, cut where the
plant's own limit protection would cut it (an engine control's min/max select)."""


@dataclass
class SafeOutput:
    actuators: dict[str, float]
    events: list[SafetyEvent]


class SafetyLayer:
    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec

    def initial(self) -> dict[str, float]:
        """A safe first value: the nominal, else mid-range."""
        return {t.name: float(t.nominal if t.nominal is not None else (t.low + t.high) / 2)
                for t in self.spec.actuators}

    def enforce(self, proposed: Mapping[str, float | None],
                previous: Mapping[str, float]) -> SafeOutput:
        """Clip `proposed` to bounds and rate limits around `previous`; report every change."""
        out, events = {}, []
        for tag in self.spec.actuators:
            lo, hi = float(tag.low), float(tag.high)  # type: ignore[arg-type]
            rate = self.spec.rate_limit_per_sample(tag)
            prev = _finite_or(previous.get(tag.name), None)
            if prev is None:
                prev = self.initial()[tag.name]
                events.append(SafetyEvent("no_previous", "no valid previous value; "
                                          "rate limit taken around the nominal", tag.name))
            value = _finite_or(proposed.get(tag.name), None)
            if value is None:
                events.append(SafetyEvent("invalid_proposal", "proposal missing or not finite; "
                                          "holding previous value", tag.name))
                value = prev
            limited = min(max(value, prev - rate), prev + rate)
            if limited != value:
                events.append(SafetyEvent("rate_limited", f"{value:.6g} -> {limited:.6g} "
                                          f"{tag.unit} (max step {rate:.6g})", tag.name))
            bounded = min(max(limited, lo), hi)
            if bounded != limited:
                events.append(SafetyEvent("clipped_bounds", f"{limited:.6g} -> {bounded:.6g} "
                                          f"{tag.unit} (bounds [{lo:.6g}, {hi:.6g}])", tag.name))
            out[tag.name] = bounded
        return SafeOutput(out, events)


def _finite_or(value: float | None, default: float | None) -> float | None:
    if value is None:
        return default
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) else default
