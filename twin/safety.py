"""The safety clip: the last word on every setpoint, trusting neither model nor solver.

`clip_setpoint` is the one function every outgoing actuator value passes, in the
controller (`SafetyLayer`) and again at the API's edge. Guarantee: the value lies within
the actuator's bounds, and within its rate limit of the previous value whenever that
value was itself within bounds (if it was not, bounds win and the value is moved to the
nearest bound).

One rate-limit semantics: a tag's `rate_limit` is per second, and a step may move an
actuator by `rate_limit * min(elapsed, sample period)`: no more than the time since the
previous value allows, and never more than one sample's worth after a gap (the plant did
not move the actuator while no value came).

A hold keeps a level where it is and gives a dose of zero (`ActuatorKind`): holding a
bolus must not give it again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .records import EventKind, SafetyEvent
from .spec import ActuatorKind, ProcessSpec, Tag

Fallback = Callable[
    [Mapping[str, float | None], Mapping[str, float], Mapping[str, float]], Mapping[str, float]
]
"""(measurements, setpoints, last applied actuators) -> proposed actuators."""

Protection = Callable[
    [Mapping[str, float | None], Mapping[str, float], Mapping[str, float]], Mapping[str, float]
]
"""(measurements, proposed actuators, last applied actuators) -> the proposal, cut where the
plant's own limit protection would cut it (an engine control's min/max select)."""


PERIOD_ROUND_OFF = 1e-9
"""Relative shortfall of an elapsed time from the sample period still taken as a period."""


@dataclass
class SafeOutput:
    actuators: dict[str, float]
    events: list[SafetyEvent]


def initial_value(tag: Tag) -> float:
    """A safe first value: the nominal, else mid-range."""
    return float(tag.nominal if tag.nominal is not None else (tag.low + tag.high) / 2)  # type: ignore[operator]


def held_value(tag: Tag, previous: float) -> float:
    """What holding the actuator sends: a level stays, a dose is none."""
    return 0.0 if tag.kind is ActuatorKind.DOSE else float(previous)


def hold(spec: ProcessSpec, previous: Mapping[str, float]) -> dict[str, float]:
    """Every actuator held: levels as they are, doses at zero."""
    return {
        tag.name: held_value(tag, previous[tag.name])
        for tag in spec.actuators
        if tag.name in previous
    }


def max_move(tag: Tag, sample_period_s: float, elapsed_s: float | None = None) -> float:
    """The largest change this step allows (see the module docstring). An elapsed time
    within round-off of the sample period (k * 0.2 - (k - 1) * 0.2 is not 0.2) counts as
    the full period, so timestamps' float noise never narrows a move."""
    assert tag.rate_limit is not None
    if (
        elapsed_s is None
        or not math.isfinite(elapsed_s)
        or (elapsed_s >= sample_period_s * (1.0 - PERIOD_ROUND_OFF))
    ):
        return tag.rate_limit * sample_period_s
    return tag.rate_limit * max(elapsed_s, 0.0)


def clip_setpoint(
    tag: Tag,
    proposed: object,
    previous: float | None,
    sample_period_s: float,
    elapsed_s: float | None = None,
) -> tuple[float, list[SafetyEvent]]:
    """`proposed` inside the bounds and the rate limit around `previous`; every change
    reported. A missing or non-finite proposal holds (`held_value`). Without a previous
    value (a loop's first step at the API) only the bounds apply."""
    lo, hi = float(tag.low), float(tag.high)  # type: ignore[arg-type]
    events = []
    value = _finite_or_none(proposed)
    if value is None:
        value = held_value(tag, initial_value(tag) if previous is None else previous)
        what = "no dose" if tag.kind is ActuatorKind.DOSE else f"holding {value:.6g}"
        events.append(
            SafetyEvent(
                EventKind.INVALID_PROPOSAL,
                f"proposal {proposed!r:.40} missing or not finite; {what}",
                tag.name,
            )
        )
    limited = value
    if previous is not None:
        rate = max_move(tag, sample_period_s, elapsed_s)
        # a dose is given anew each sample: its rate limit counts from none
        start = 0.0 if tag.kind is ActuatorKind.DOSE else previous
        limited = min(max(value, start - rate), start + rate)
        if limited != value:
            events.append(
                SafetyEvent(
                    EventKind.RATE_LIMITED,
                    f"rate limited {value:.6g} -> {limited:.6g} {tag.unit} (max step {rate:.6g})",
                    tag.name,
                )
            )
    bounded = min(max(limited, lo), hi)
    if bounded != limited:
        events.append(
            SafetyEvent(
                EventKind.CLIPPED_BOUNDS,
                f"clipped {limited:.6g} -> {bounded:.6g} {tag.unit} (bounds [{lo:.6g}, {hi:.6g}])",
                tag.name,
            )
        )
    return bounded, events


class SafetyLayer:
    """`clip_setpoint` over every actuator of a spec."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec

    def initial(self) -> dict[str, float]:
        return {t.name: initial_value(t) for t in self.spec.actuators}

    def enforce(
        self,
        proposed: Mapping[str, object],
        previous: Mapping[str, object],
        elapsed_s: float | None = None,
    ) -> SafeOutput:
        """Clip `proposed` to bounds and rate limits around `previous`; report every change."""
        out, events = {}, []
        for tag in self.spec.actuators:
            prev = _finite_or_none(previous.get(tag.name))
            if prev is None:
                prev = initial_value(tag)
                events.append(
                    SafetyEvent(
                        EventKind.NO_PREVIOUS,
                        "no valid previous value; rate limit taken around the nominal",
                        tag.name,
                    )
                )
            out[tag.name], why = clip_setpoint(
                tag, proposed.get(tag.name), prev, self.spec.sample_period_s, elapsed_s
            )
            events += why
        return SafeOutput(out, events)


def sensor_margins(spec: ProcessSpec, values: Mapping[str, float | None]) -> dict[str, float]:
    """Distance of each limited sensor to its nearest limit (negative: violated)."""
    margins = {}
    for tag in spec.sensors:
        value = values.get(tag.name)
        if value is None or (tag.low is None and tag.high is None):
            continue
        sides = [
            tag.high - value if tag.high is not None else math.inf,
            value - tag.low if tag.low is not None else math.inf,
        ]
        margins[tag.name] = float(min(sides))
    return margins


def _finite_or_none(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None
