"""What a live loop checks at its edge, before a controller sees a request.

Every check here either refuses the request (an `Invalid`, 422, naming the likely cause)
or hands back the input the controller may trust plus the events to store with the step:

* tags, finiteness and setpoint limits (a setpoint at or beyond a sensor's limit is
  refused when the loop starts, not at every step after);
* time plausibility: `time_s` is seconds, relative or Unix, never further from the
  server clock than `max_clock_lead_s`, and never further ahead of the last step than
  `max_gap_periods` sample periods plus the server time that passed since it (so a real
  outage is accepted, a millisecond clock or 1.8e308 is not);
* actuator read-backs: one outside the actuator's bounds, or farther from the last
  command than its rate limit allows in the time since, is implausible: it is ignored
  (the rate limit counts from the last command), stored as an event, and the step is
  marked `fallback`, which raises the loop's fallback alarm. A plausible read-back may
  only narrow a move: the value sent stays within the rate limit of the last command;
* units: a measurement far outside its tag's range (the training log's mean and std
  where the twin holds them, else the tag's limits and nominal) that a common unit
  mix-up would explain is refused with the mix-up named.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from api.errors import Invalid
from twin.records import EventKind, SafetyEvent
from twin.safety import clip_setpoint, max_move
from twin.spec import ProcessSpec, SpecError, Tag, TagRole

READBACK_TOLERANCE = 1e-9  # of the actuator's span: read-backs rounded by the plant pass
MILLISECONDS = 1000.0


@dataclass(frozen=True)
class TimeWindow:
    """How far `time_s` may run ahead (settings `max_clock_lead_s`, `max_gap_periods`)."""

    max_clock_lead_s: float = 3600.0
    max_gap_periods: float = 100.0


@dataclass(frozen=True)
class Range:
    """A tag's expected values: centre and spread in its own unit."""

    mean: float
    std: float
    positive: bool  # a quantity that is never negative (judged on a ratio scale too)


# ---------------------------------------------------------------- tags and numbers


def check_finite(
    what: str, values: Mapping[str, float | None], *, allow_null: bool = False
) -> None:
    bad = sorted(
        tag
        for tag, v in values.items()
        if not (v is None and allow_null) and not is_finite_number(v)
    )
    if bad:
        raise Invalid(f"{what}: not a finite number for {', '.join(bad)}")


def is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def role_of(spec: ProcessSpec, tag: str) -> TagRole:
    try:
        return spec.tag(tag).role
    except SpecError as exc:
        raise Invalid(str(exc)) from None


def check_measurements(spec: ProcessSpec, measurements: Mapping[str, float | None]) -> None:
    """Every tag known; every sensor present. An explicit null is a missing sample (the twin
    masks it); an absent key is a client bug, refused. A measured disturbance may be absent
    or null: it is then not measured this sample (see StepIn.measurements)."""
    for tag in measurements:
        role_of(spec, tag)
    missing = [t.name for t in spec.sensors if t.name not in measurements]
    if missing:
        raise Invalid(
            f"missing sensor measurements: {', '.join(missing)} "
            "(send null for a sample that is really missing)"
        )


def check_setpoint_tags(spec: ProcessSpec, setpoints: Mapping[str, float]) -> None:
    for tag in setpoints:
        if role_of(spec, tag) is not TagRole.SENSOR:
            raise Invalid(f"setpoint for '{tag}': only sensors take setpoints")


def check_setpoint_limits(spec: ProcessSpec, setpoints: Mapping[str, float]) -> None:
    """A setpoint must lie strictly inside its sensor's limits (as the controller demands)."""
    for name, value in setpoints.items():
        tag = spec.tag(name)
        if (tag.high is not None and value >= tag.high) or (
            tag.low is not None and value <= tag.low
        ):
            raise Invalid(
                f"setpoint {value:g} {tag.unit} for '{name}' is not inside its "
                f"limits ({_bound(tag.low)}, {_bound(tag.high)}) {tag.unit}"
            )


def initial_setpoints(spec: ProcessSpec, given: Mapping[str, float]) -> dict[str, float]:
    check_setpoint_tags(spec, given)
    out = dict(given)
    for tag in spec.controlled:
        if tag.name not in out:
            if tag.nominal is None:
                raise Invalid(f"no setpoint for controlled sensor '{tag.name}'")
            out[tag.name] = tag.nominal
    check_setpoint_limits(spec, out)
    return out


def initial_actuators(spec: ProcessSpec, given: Mapping[str, float]) -> dict[str, float]:
    """What the plant applies when the loop starts: the values given, else each actuator's
    nominal from the tag file. An actuator with neither has no initial value: its first
    step must carry its read-back (see `first_step_reference`)."""
    for name, value in given.items():
        if role_of(spec, name) is not TagRole.ACTUATOR:
            raise Invalid(f"initial_actuators: '{name}' is not an actuator")
        tag = spec.tag(name)
        if not tag.low <= value <= tag.high:  # type: ignore[operator]
            raise Invalid(
                f"initial_actuators: {name} {value:g} {tag.unit} is outside its "
                f"bounds [{tag.low:g}, {tag.high:g}] {tag.unit}"
            )
    out = {t.name: float(t.nominal) for t in spec.actuators if t.nominal is not None}
    out.update({k: float(v) for k, v in given.items()})
    return out


def first_step_reference(
    spec: ProcessSpec, measurements: Mapping[str, float | None], known: Mapping[str, float]
) -> None:
    """Refuse a first step that would have to guess an actuator's current value (no
    read-back, none `known` from the start, no nominal in the tag file)."""
    blind = [
        t.name
        for t in spec.actuators
        if measurements.get(t.name) is None and t.name not in known and t.nominal is None
    ]
    if blind:
        raise Invalid(
            f"no current value for actuator(s) {', '.join(blind)}: send the "
            "read-back in this first step's measurements, or start the loop with "
            "initial_actuators (the tag file gives no nominal to assume)"
        )


def is_dose(tag: Tag) -> bool:
    """An actuator given anew each sample (a bolus), not a level that stays applied."""
    return str(getattr(tag, "kind", "level")) == "dose"


def _bound(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:g}"


# ---------------------------------------------------------------- time


def check_time(
    time_s: float,
    previous_time_s: float | None,
    *,
    now_epoch_s: float,
    wall_elapsed_s: float,
    sample_period_s: float,
    window: TimeWindow,
) -> None:
    """Refuse a `time_s` no clock could give (see the module docstring)."""
    horizon = now_epoch_s + window.max_clock_lead_s
    if abs(time_s) > horizon:
        hint = (
            " It looks like milliseconds: send seconds."
            if abs(time_s) / MILLISECONDS <= horizon
            else ""
        )
        raise Invalid(
            f"time_s {time_s:.6g} s is implausible: further from zero than the "
            f"server clock ({now_epoch_s:.0f} s since 1970) plus "
            f"{window.max_clock_lead_s:g} s.{hint} time_s is seconds, relative "
            "or Unix time, strictly increasing"
        )
    if previous_time_s is None or time_s <= previous_time_s:
        return  # time order is the caller's check (409)
    gap = time_s - previous_time_s
    allowed = window.max_gap_periods * sample_period_s + max(wall_elapsed_s, 0.0)
    if gap > allowed:
        hint = (
            " It looks like milliseconds (the gap / 1000 is about one sample period): send seconds."
            if gap / MILLISECONDS <= 2 * sample_period_s
            else ""
        )
        raise Invalid(
            f"time_s {time_s:.6g} s is {gap:.6g} s after the last step's "
            f"{previous_time_s:.6g} s, but only {wall_elapsed_s:.3g} s passed on "
            f"the server: more than {window.max_gap_periods:g} sample periods "
            f"({sample_period_s:g} s) ahead is implausible.{hint}"
        )


# ---------------------------------------------------------------- actuator read-backs


def plausible_readbacks(
    spec: ProcessSpec,
    measurements: Mapping[str, float | None],
    last_command: Mapping[str, float],
    dt: float | None,
) -> tuple[dict[str, float | None], list[SafetyEvent]]:
    """The measurements with implausible read-backs removed, and an event for each."""
    out, events = dict(measurements), []
    for tag in spec.actuators:
        value = out.get(tag.name)
        if value is None:
            continue
        why = _implausible_readback(
            tag, value, last_command.get(tag.name), dt, spec.sample_period_s
        )
        if why:
            out.pop(tag.name)
            events.append(
                SafetyEvent(
                    "implausible_readback",
                    f"{tag.name} read-back {value:.6g} {tag.unit} ignored: {why}",
                    tag.name,
                )
            )
    return out, events


def _implausible_readback(
    tag: Tag, value: float, command: float | None, dt: float | None, sample_period_s: float
) -> str:
    low, high = float(tag.low), float(tag.high)  # type: ignore[arg-type]
    tolerance = READBACK_TOLERANCE * (high - low)
    if not low - tolerance <= value <= high + tolerance:
        return f"outside the actuator's bounds [{low:g}, {high:g}] {tag.unit}"
    if command is None or dt is None or is_dose(tag):  # a dose is given anew each sample
        return ""
    reach = max_move(tag, sample_period_s, dt) + tolerance
    if abs(value - command) > reach:
        return (
            f"{abs(value - command):.6g} {tag.unit} from the last command "
            f"{command:.6g} {tag.unit}, farther than the rate limit allows in "
            f"{dt:.6g} s; the rate limit counts from the last command"
        )
    return ""


def within_reach_of_command(
    spec: ProcessSpec,
    actuators: Mapping[str, float],
    last_command: Mapping[str, float],
    dt: float | None,
) -> tuple[dict[str, float], list[SafetyEvent]]:
    """Keep every value within its rate limit of the last command: a read-back the plant
    reports may narrow a move, never widen it. Bounds stay with the safety layer."""
    out, events = dict(actuators), []
    if dt is None:
        return out, events
    for tag in spec.actuators:
        value, command = out.get(tag.name), last_command.get(tag.name)
        if value is None or command is None or is_dose(tag):
            continue  # a dose's rate limit counts from none (the safety layer's rule)
        # The safety clip around the last command; `value` already passed the clip around
        # the read-back, so it and the command are in bounds and only the rate limit acts.
        held, _ = clip_setpoint(tag, value, command, spec.sample_period_s, dt)
        if held != value:
            out[tag.name] = held
            reach = max_move(tag, spec.sample_period_s, dt)
            events.append(
                SafetyEvent(
                    EventKind.RATE_LIMITED,
                    f"{value:.6g} -> {held:.6g} {tag.unit}: within "
                    f"{reach:.6g} of the last command {command:.6g}",
                    tag.name,
                )
            )
    return out, events


# ---------------------------------------------------------------- units


Conversion = tuple[str, Callable[[float], float]]
# Per unit: (the unit a client may have used instead, value in our unit).
UNIT_MIX_UPS: dict[str, list[Conversion]] = {
    "mg/dl": [("mmol/L", lambda x: x * 18.016)],
    "mmol/l": [("mg/dL", lambda x: x / 18.016)],
    "k": [("degC", lambda x: x + 273.15), ("degF", lambda x: (x - 32.0) / 1.8 + 273.15)],
    "kpa": [
        ("Pa", lambda x: x / 1000.0),
        ("bar", lambda x: x * 100.0),
        ("psi", lambda x: x * 6.894757),
    ],
    "kg/s": [("kg/h", lambda x: x / 3600.0), ("g/s", lambda x: x / 1000.0)],
    "g/min": [("g/s", lambda x: x * 60.0)],
    "rpm": [("rad/s", lambda x: x * 60.0 / (2.0 * math.pi))],
}
# Any unit: a prefix slip (milli- where the base unit was meant, or the reverse).
PREFIX_MIX_UPS: list[Conversion] = [
    ("a unit 1000 x smaller (milli-)", lambda x: x / 1000.0),
    ("a unit 1000 x larger (kilo-)", lambda x: x * 1000.0),
]


def tag_range(tag: Tag, training: tuple[float, float] | None) -> Range | None:
    """From the training log's (mean, std) where known, else from the tag's limits and
    nominal; None where neither says anything."""
    # A ratio scale only for a quantity kept well away from zero (a positive lower limit,
    # or a training mean many spreads above it): near zero, ratios mean nothing.
    positive = tag.low is not None and tag.low > 0
    if training is not None and math.isfinite(training[0]) and training[1] > 0:
        mean, std = training
        return Range(mean, std, positive or mean > 3 * std)
    if tag.low is not None and tag.high is not None:
        return Range((tag.low + tag.high) / 2, (tag.high - tag.low) / 4, positive)
    limit = tag.high if tag.high is not None else tag.low
    if tag.nominal is not None and limit is not None and limit != tag.nominal:
        return Range(tag.nominal, abs(limit - tag.nominal) / 2, positive)
    return None


def plausible_span(r: Range, sigmas: float, ratio: float) -> tuple[float, float]:
    """[low, high] of plausible values: `sigmas` spreads about the mean, and for a positive
    quantity also no more than `ratio` times below its mean (a value 18 x too small is
    not a reading of this unit however wide the spread)."""
    low, high = r.mean - sigmas * r.std, r.mean + sigmas * r.std
    if r.positive and r.mean > 0:
        low, high = max(low, r.mean / ratio), max(high, r.mean * ratio)
    return low, high


def check_units(
    spec: ProcessSpec,
    measurements: Mapping[str, float | None],
    training: Mapping[str, tuple[float, float]],
    *,
    sigmas: float = 6.0,
    ratio: float = 4.0,
) -> list[SafetyEvent]:
    """Refuse a measurement outside its plausible span that a unit mix-up brings inside;
    name the mix-up. One that no mix-up explains goes on to the controller (a real
    excursion must reach its limit guard) with an `implausible_measurement` event."""
    events = []
    for name, value in measurements.items():
        tag = spec.tag(name)
        if value is None or tag.role is TagRole.ACTUATOR:
            continue
        expected = tag_range(tag, training.get(name))
        if expected is None:
            continue
        low, high = plausible_span(expected, sigmas, ratio)
        if low <= value <= high:
            continue
        for other_unit, convert in UNIT_MIX_UPS.get(tag.unit.lower(), []) + PREFIX_MIX_UPS:
            converted = convert(value)
            if low <= converted <= high:
                raise Invalid(
                    f"measurement {name} = {value:.6g} is implausible in "
                    f"{tag.unit} (expected {low:.4g} to {high:.4g} {tag.unit}); "
                    f"it looks like {other_unit}: {value:.6g} {other_unit} is "
                    f"{converted:.6g} {tag.unit}. Send {tag.unit}"
                )
        events.append(
            SafetyEvent(
                "implausible_measurement",
                f"{name} {value:.6g} {tag.unit} "
                f"is outside its plausible {low:.4g} to {high:.4g} "
                f"{tag.unit}; check the sensor and its unit",
                name,
            )
        )
    return events
