"""Alarm conditions of one stored step, pure (no database): which points a step raises
(see api.services.alarms for the kinds and their priorities)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from api.orm import AlarmKind
from twin.records import FALLBACK_REASONS, EventKind, StepRecord, StepStatus
from twin.spec import ProcessSpec, Tag

APPROACH_FRACTION = 0.1  # of a sensor's operating span
LOOP = ""  # the tag of a point that belongs to the whole loop
STALE_EVENTS = ("stale_data", "missing_data")


@dataclass(frozen=True)
class StepView:
    """What alarm evaluation reads of one stored step."""

    step: int
    time_s: float
    status: str
    sensors: Mapping[str, float]
    setpoints: Mapping[str, float] = field(default_factory=dict)
    events: Sequence[tuple[str, str, str | None]] = ()  # (kind, message, tag)
    gap_s: float | None = None  # seconds since the previous step (loop time)

    @classmethod
    def of(cls, step: int, record: StepRecord, gap_s: float | None) -> StepView:
        return cls(
            step,
            float(record.time_s),
            str(record.status),
            _finite(record.measurements),
            _finite(record.setpoints),
            [(e.kind, e.message, e.tag) for e in record.events],
            gap_s,
        )


@dataclass(frozen=True)
class Condition:
    """An alarm condition present in a step; `value` in `unit`, `direction` says which
    way is worse (+1: larger values, -1: smaller) for `worst_value`."""

    tag: str
    kind: AlarmKind
    message: str
    value: float | None = None
    unit: str = ""
    direction: int = 1


def approach_band(
    tag: Tag, setpoint: float | None = None, fraction: float = APPROACH_FRACTION
) -> float | None:
    """Distance to a limit (tag unit) inside which an approach alarm is raised."""
    if tag.low is not None and tag.high is not None:
        return fraction * (tag.high - tag.low)
    limit = tag.high if tag.high is not None else tag.low
    reference = tag.nominal if tag.nominal is not None else setpoint
    if limit is None or reference is None or reference == limit:
        return None
    return fraction * abs(limit - reference)


def step_conditions(
    spec: ProcessSpec, view: StepView, fraction: float = APPROACH_FRACTION
) -> list[Condition]:
    """Every alarm condition present in one step."""
    found = []
    for tag in spec.sensors:
        value = view.sensors.get(tag.name)
        if value is not None:
            found.extend(_limit_conditions(tag, value, view.setpoints.get(tag.name), fraction))
    if view.status == StepStatus.FALLBACK and not _only_warming_up(view):
        why = [f"{kind}: {message}" for kind, message, _ in view.events if kind not in STALE_EVENTS]
        found.append(
            Condition(LOOP, AlarmKind.FALLBACK, "; ".join(why) or "the controller fell back")
        )
    stale = [message for kind, message, _ in view.events if kind in STALE_EVENTS]
    if view.status == StepStatus.STALE or stale:
        found.append(
            Condition(
                LOOP,
                AlarmKind.STALE_DATA,
                "; ".join(stale) or "stale data: actuators held",
                view.gap_s,
                "s",
            )
        )
    return found


def _only_warming_up(view: StepView) -> bool:
    """A loop still filling its history runs the baseline by design: an event on the run,
    not an alarm (ISA-18.2: an alarm needs an operator response, and a new loop needs none)."""
    reasons = {kind for kind, _, _ in view.events if kind in FALLBACK_REASONS}
    return reasons == {EventKind.WARMING_UP}


def _limit_conditions(
    tag: Tag, value: float, setpoint: float | None, fraction: float
) -> list[Condition]:
    sides = [(tag.high - value, "high", tag.high, 1)] if tag.high is not None else []
    if tag.low is not None:
        sides.append((value - tag.low, "low", tag.low, -1))
    if not sides:
        return []
    margin, side, limit, direction = min(sides, key=lambda s: s[0])
    reading = f"{tag.name} {value:.6g} {tag.unit}"
    if margin < 0:
        word = "above" if side == "high" else "below"
        return [
            Condition(
                tag.name,
                AlarmKind.LIMIT_VIOLATION,
                f"{reading} {word} its {side} limit {limit:g} {tag.unit}",
                value,
                tag.unit,
                direction,
            ),
            _approach(tag, reading, side, limit, direction, value, margin),
        ]
    band = approach_band(tag, setpoint, fraction)
    if band is not None and margin < band:
        return [_approach(tag, reading, side, limit, direction, value, margin, band)]
    return []


def _approach(
    tag: Tag,
    reading: str,
    side: str,
    limit: float,
    direction: int,
    value: float,
    margin: float,
    band: float | None = None,
) -> Condition:
    detail = f" (approach band {band:.3g} {tag.unit})" if band is not None else ""
    text = (
        f"{reading} is past its {side} limit {limit:g} {tag.unit}"
        if margin < 0
        else f"{reading} within {margin:.3g} {tag.unit} of its {side} limit "
        f"{limit:g} {tag.unit}{detail}"
    )
    return Condition(tag.name, AlarmKind.LIMIT_APPROACH, text, value, tag.unit, direction)


def _finite(values: Mapping[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
