"""The operator's controls of a live loop, as every APC console has them: the controller's
mode, each actuator in or out of service, each controlled sensor enabled or dropped, and
each sensor's operator range (low/high limits inside its engineering limits).

- `on`: the twin plans. `standby`: the baseline drives (a hold without one) while the twin
  keeps estimating, so that switching back is bumpless. `off`: the actuators hold at what
  the plant reports (its read-back, else the last command), doses at zero.
- An actuator out of service is fixed in the plan at its measured value, through the
  planners' pinned moves (`PlanningProblem.pinned`, as the baseline's actuators of a hybrid
  loop are), and what goes out for it is that value whoever proposed a move.
- A dropped sensor's setpoint is left out of the plan's goal and tracking metric (its
  tracking weight is zero); it is still measured, limited and stored.
- A ranged sensor with a setpoint chases that setpoint, moved to the range's nearest bound
  when it lies outside. Without a setpoint it is range-controlled: left free (as if dropped)
  while its measurement is inside the range, chased to the nearest bound once outside.
  Once chased it stays chased until it is back inside by `RANGE_DEADBAND` of the range's
  width (the loop's `RangeChase` remembers it across steps). When nothing is left to chase
  because every such sensor is inside its range, the actuators hold (a hybrid loop's
  baseline still drives its own).
- An economic direction (`economic`: actuator or sensor -> maximise/minimise) adds a small
  linear push to the plan's cost (`PlanningProblem.economic`), so the plan moves that tag
  the chosen way as far as the setpoints, limits and move suppression allow. A ranged
  sensor without a setpoint that has one of its own is chased to the range's bound in its
  direction (pushed to its constraint, as an APC's economic optimiser does), and so is the
  free one a pushed actuator's push binds first (`economic_push`; else the loop holds).

Moves from one mode to the next are bumpless because every move leaves through the same
safety clip, rate-limited from the value last applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from .economic_push import ActuatorPush
from .errors import InvalidInput
from .hybrid import BaselineMove
from .planning import Constraints, project_moves
from .records import SafetyEvent
from .safety import held_value
from .spec import ProcessSpec
from .twin_model import Twin

Moves = dict[str, float]
Range = tuple[float, float]  # (low, high), engineering units
OPERATOR_EVENT = "operator"
"""The event kind of an operator's change, recorded with the step it takes effect at."""
DIRECTIONS = {"maximise": -1.0, "minimise": 1.0}
"""Each economic direction's sign on its tag's weight in the plan's (minimised) cost."""
ECONOMIC_GIVE = 0.01
"""Training stds of setpoint error the economic push is worth: its weight per stage is the
slope of the tracking cost (1 + tracking weight) e^2 at e = 0.01, so a setpoint gives up at
most about 1 % of a training std to it (well inside sensor noise) and always wins."""
RANGE_DEADBAND = 0.05
"""Fraction of a range's width a chased sensor must come back inside it by before it is left
free: noise at a bound would otherwise flip it between free and chased every sample."""


class Mode(StrEnum):
    ON = "on"
    STANDBY = "standby"
    OFF = "off"


class RangeChase:
    """Which range-controlled sensors are being chased back to a bound, across steps (the
    deadband's memory): state of the loop the settings run in, not a setting, so it is
    neither stored nor compared; new settings start with none chased."""

    def __init__(self) -> None:
        self.bounds: dict[str, float] = {}  # sensor -> the bound it is chased to

    def bound(self, tag: str, bounds: Range, measured: float | None) -> float | None:
        """The bound `tag` is chased to at this measurement, None while it is free. Not
        measured: free this sample, remembered for the next."""
        if measured is None:
            return None
        low, high = bounds
        margin = RANGE_DEADBAND * (high - low)
        chased = self.bounds.get(tag)
        if measured < low:
            self.bounds[tag] = low
        elif measured > high:
            self.bounds[tag] = high
        elif not (
            (chased == low and measured < low + margin)
            or (chased == high and measured > high - margin)
        ):
            self.bounds.pop(tag, None)
        return self.bounds.get(tag)

    def forget(self, tag: str) -> None:
        self.bounds.pop(tag, None)


@dataclass(frozen=True)
class OperatorSettings:
    mode: Mode = Mode.ON
    out_of_service: frozenset[str] = field(default_factory=frozenset)  # actuators
    dropped: frozenset[str] = field(default_factory=frozenset)  # sensors
    ranges: Mapping[str, Range] = field(default_factory=dict, hash=False)  # sensor -> (low, high)
    # actuator or sensor -> "maximise" | "minimise"
    economic: Mapping[str, str] = field(default_factory=dict, hash=False)
    chase: RangeChase = field(default_factory=RangeChase, compare=False, hash=False, repr=False)
    push: ActuatorPush = field(default_factory=ActuatorPush, compare=False, hash=False, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> OperatorSettings:
        """From what `to_dict` stored (None or {}: the defaults)."""
        data = data or {}
        return cls(
            Mode(data.get("mode", Mode.ON)),
            frozenset(data.get("out_of_service", ())),
            frozenset(data.get("dropped", ())),
            {
                name: (float(bounds["low"]), float(bounds["high"]))
                for name, bounds in (data.get("ranges") or {}).items()
            },
            {name: str(way) for name, way in (data.get("economic") or {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON; `ranges` and `economic` only when there is one (settings stored
        before they existed read back unchanged)."""
        data: dict[str, Any] = {
            "mode": str(self.mode),
            "out_of_service": sorted(self.out_of_service),
            "dropped": sorted(self.dropped),
        }
        if self.ranges:
            data["ranges"] = {
                name: {"low": low, "high": high}
                for name, (low, high) in sorted(self.ranges.items())
            }
        if self.economic:
            data["economic"] = dict(sorted(self.economic.items()))
        return data

    def changed(
        self,
        spec: ProcessSpec,
        mode: str | None = None,
        out_of_service: Mapping[str, bool] | None = None,
        dropped: Mapping[str, bool] | None = None,
        ranges: Mapping[str, Range | None] | None = None,
        economic: Mapping[str, str | None] | None = None,
    ) -> OperatorSettings:
        """These settings with a change applied; an unknown mode, actuator or sensor, a
        range that is empty or reaches its sensor's engineering limits, or an economic
        direction on an unknown tag or not "maximise"/"minimise", raises `InvalidInput`
        naming it (nothing changes). `ranges`: sensor -> (low, high), or None to clear;
        `economic`: actuator or sensor -> direction, or None to clear."""
        if mode is not None and mode not in {m.value for m in Mode}:
            raise InvalidInput(
                f"unknown controller mode '{mode}' (known: {', '.join(m.value for m in Mode)})"
            )
        actuators = [t.name for t in spec.actuators]
        sensors = [t.name for t in spec.sensors]
        _check_names("actuator", out_of_service or {}, actuators, spec.name)
        _check_names("sensor", dropped or {}, sensors, spec.name)
        for name, bounds in (ranges or {}).items():
            _check_range(spec, name, bounds, sensors)
        for name, way in (economic or {}).items():
            _check_direction(spec.name, name, way, actuators + sensors)
        new_economic = dict(self.economic)
        for name, way in (economic or {}).items():
            if way is None:
                new_economic.pop(name, None)
            else:
                new_economic[name] = way
        new_ranges = dict(self.ranges)
        for name, bounds in (ranges or {}).items():
            if bounds is None:
                new_ranges.pop(name, None)
            else:
                new_ranges[name] = (float(bounds[0]), float(bounds[1]))
        return OperatorSettings(
            Mode(mode) if mode is not None else self.mode,
            _toggled(self.out_of_service, out_of_service or {}),
            _toggled(self.dropped, dropped or {}),
            new_ranges,
            new_economic,
        )

    def describe_change(
        self, before: OperatorSettings, spec: ProcessSpec | None = None
    ) -> list[str]:
        """What differs from `before`, in words (an annotation on the trends); ranges with
        their units when `spec` is given."""
        words = []
        if self.mode != before.mode:
            words.append(f"controller mode {before.mode} -> {self.mode}")
        for name in sorted(self.out_of_service - before.out_of_service):
            words.append(f"actuator {name} out of service")
        for name in sorted(before.out_of_service - self.out_of_service):
            words.append(f"actuator {name} back in service")
        for name in sorted(self.dropped - before.dropped):
            words.append(f"sensor {name} dropped")
        for name in sorted(before.dropped - self.dropped):
            words.append(f"sensor {name} enabled")
        for name in sorted({*self.ranges, *before.ranges}):
            old, new = before.ranges.get(name), self.ranges.get(name)
            unit = _unit(spec, name)
            if new is None and old is not None:
                words.append(f"sensor {name} range {_span(old, unit)} cleared")
            elif new is not None and old is None:
                words.append(f"sensor {name} range set to {_span(new, unit)}")
            elif new is not None and old is not None and new != old:
                words.append(f"sensor {name} range {_span(old, unit)} -> {_span(new, unit)}")
        for name in sorted({*self.economic, *before.economic}):
            old_way, new_way = before.economic.get(name), self.economic.get(name)
            if new_way is None and old_way is not None:
                words.append(f"economic direction on {name} ({old_way}) cleared")
            elif new_way is not None and new_way != old_way:
                words.append(f"{name} economic direction: {new_way}")
        return words

    # ------------------------------------------------------------ in the controller's step

    def tracked(
        self,
        setpoints: Mapping[str, float],
        measurements: Mapping[str, float | None] | None = None,
    ) -> dict[str, float]:
        """The setpoints the plan chases: those of sensors not dropped, each inside its
        sensor's range; and for a ranged sensor without one, the nearest bound while its
        measurement lies outside the range (and after, until it is back inside by the
        deadband), the bound of its economic direction inside it, or of an actuator's push
        (`ActuatorPush.target`, once `instead` has met the twin); otherwise, or not
        measured, it is left free. Calling it twice with one sample gives one answer."""
        out, free = {}, {}
        for tag, value in setpoints.items():
            if tag not in self.dropped:
                low, high = self.ranges.get(tag, (value, value))
                out[tag] = min(max(float(value), low), high)
        for tag, (low, high) in self.ranges.items():
            if tag in self.dropped or tag in setpoints:
                self.chase.forget(tag)
                continue
            measured = (measurements or {}).get(tag)
            if (bound := self.chase.bound(tag, (low, high), measured)) is not None:
                out[tag] = bound
            elif measured is not None and tag in self.economic:
                out[tag] = high if self.economic[tag] == "maximise" else low
            elif measured is not None:
                free[tag] = ((low, high), float(measured))
        if (pushed := self.push.target(self.economic, free, len(out))) is not None:
            out[pushed[0]] = pushed[1]
        return out

    def economic_weights(
        self, twin: Twin, z0: np.ndarray, tracking_weight: float
    ) -> np.ndarray | None:
        """The plan's economic push (`PlanningProblem.economic`: (A + D,) weights per stage
        on the normalised moves, then on the embedding), None without a direction. An
        actuator's weight is on its own move; a sensor's reaches the embedding through the
        readout's Jacobian at z0 (exact for the default linear readout). Each is
        `ECONOMIC_GIVE` of the tracking cost's slope, signed by its direction."""
        if not self.economic:
            return None
        actions, d = twin.layout.actions, len(z0)
        scale = 2.0 * ECONOMIC_GIVE * (1.0 + max(float(tracking_weight), 0.0))
        on_moves, on_embedding = np.zeros(len(actions)), np.zeros(d)
        sensors = [tag for tag in self.economic if tag not in actions]
        if sensors:
            jacobian = twin.readout_jacobian(np.asarray(z0, dtype=float), sensors)
            for row, tag in zip(jacobian, sensors, strict=True):
                on_embedding += scale * DIRECTIONS[self.economic[tag]] * row
        for tag, way in self.economic.items():
            if tag in actions:
                on_moves[actions.index(tag)] = scale * DIRECTIONS[way]
        return np.concatenate([on_moves, on_embedding])

    def instead(
        self, baseline: BaselineMove, setpoints: Mapping[str, float]
    ) -> tuple[Moves, SafetyEvent | None] | None:
        """The move in place of the twin's plan (None: the twin plans)."""
        if self.mode is Mode.OFF:
            return baseline.hold(), None
        if self.mode is Mode.STANDBY:
            return (baseline() if baseline.fallback is not None else baseline.hold()), None
        held = self.out_of_service | {*baseline.driven_names}
        self.push.learn(baseline.twin, self.economic, held)
        if self.tracked(setpoints, baseline.measurements):
            return None
        if any(tag not in self.dropped for tag in self.ranges):
            # every ranged sensor is where the operator wants it: nothing to chase, a normal
            # state of range control, so no event
            return {**baseline.hold(), **baseline.driven()}, None
        move, event = baseline.instead(OPERATOR_EVENT, "every setpoint's sensor is dropped")
        return move, event

    def pinned(
        self,
        pinned: np.ndarray | None,
        twin: Twin,
        previous: Mapping[str, float],
        limits: Constraints,
        horizon: int,
    ) -> np.ndarray | None:
        """The plan's pinned moves ((H, A) normalised, NaN where the planner chooses) with
        each out-of-service actuator held at its measured value for the whole horizon."""
        actions = twin.layout.actions
        columns = [i for i, a in enumerate(actions) if a in self.out_of_service]
        if not columns:
            return pinned
        held = self.fixed(dict(previous), previous, twin.spec)
        before = twin.normalise_actions(np.array([previous[a] for a in actions], dtype=float))
        target = twin.normalise_actions(np.array([held[a] for a in actions], dtype=float))
        path = project_moves(np.tile(target, (horizon, 1)), before, limits)
        out = np.full((horizon, len(actions)), np.nan) if pinned is None else pinned.copy()
        out[:, columns] = path[:, columns]
        return out

    def fixed(
        self, proposal: Mapping[str, float], previous: Mapping[str, float], spec: ProcessSpec
    ) -> Moves:
        """`proposal` with every out-of-service actuator at its measured value (a dose at
        zero: holding a dose would repeat it every sample)."""
        out = dict(proposal)
        for tag in spec.actuators:
            if tag.name in self.out_of_service and tag.name in previous:
                out[tag.name] = held_value(tag, previous[tag.name])
        return out


def _check_names(kind: str, changes: Mapping[str, bool], known: list[str], process: str) -> None:
    for name, value in changes.items():
        if name not in known:
            raise InvalidInput(
                f"unknown {kind} '{name}' for process '{process}' (known: {', '.join(known)})"
            )
        if not isinstance(value, bool):
            raise InvalidInput(f"{kind} '{name}' must be true or false, got {value!r}")


def _check_direction(process: str, name: str, way: str | None, known: list[str]) -> None:
    if name not in known:
        raise InvalidInput(
            f"unknown actuator or sensor '{name}' for an economic direction of process "
            f"'{process}' (known: {', '.join(known)})"
        )
    if way is not None and (not isinstance(way, str) or way not in DIRECTIONS):
        raise InvalidInput(
            f"economic direction of '{name}' must be {' or '.join(DIRECTIONS)}, got {way!r}"
        )


def _check_range(spec: ProcessSpec, name: str, bounds: Range | None, sensors: list[str]) -> None:
    """A range lies strictly inside the sensor's engineering limits, as a setpoint must (its
    bounds become setpoints), and its low is below its high."""
    if name not in sensors:
        raise InvalidInput(
            f"unknown sensor '{name}' for process '{spec.name}' (known: {', '.join(sensors)})"
        )
    if bounds is None:
        return
    tag = spec.tag(name)
    low, high = bounds
    for label, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise InvalidInput(f"range of sensor '{name}': {label} must be a finite number")
    if low >= high:
        raise InvalidInput(
            f"range of sensor '{name}': low {low:g} {tag.unit} must be below high "
            f"{high:g} {tag.unit}"
        )
    if tag.low is not None and low <= tag.low:
        raise InvalidInput(
            f"range of sensor '{name}': low {low:g} {tag.unit} must be above its "
            f"engineering low limit {tag.low:g} {tag.unit}"
        )
    if tag.high is not None and high >= tag.high:
        raise InvalidInput(
            f"range of sensor '{name}': high {high:g} {tag.unit} must be below its "
            f"engineering high limit {tag.high:g} {tag.unit}"
        )


def _unit(spec: ProcessSpec | None, name: str) -> str:
    if spec is None:
        return ""
    return next((f" {t.unit}" for t in spec.sensors if t.name == name and t.unit), "")


def _span(bounds: Range, unit: str) -> str:
    return f"[{bounds[0]:g}, {bounds[1]:g}]{unit}"


def _toggled(current: Iterable[str], changes: Mapping[str, bool]) -> frozenset[str]:
    """`changes`: name -> True to add it to the set, False to take it out."""
    out = set(current)
    for name, value in changes.items():
        (out.add if value else out.discard)(name)
    return frozenset(out)
