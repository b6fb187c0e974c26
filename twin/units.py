"""Units checked against the data: a log in another unit of the tag's quantity is refused.

A historian export in degC under a tag declared in K, or in kPa under a tag in bar, is
the commonest mistake in a tag file; the twin would learn from it without complaint and
the controller would then plan against limits in the wrong unit. The check compares a
column's typical value (its median) with what the tag file expects of it (its nominal
value and limits): when the value is far from that in the declared unit but sits where
expected once read in another unit of the same quantity, the log is refused with the
likely mix-up named.

Only units listed here are judged, and only tags whose file gives something to compare
with (a nominal value or limits); a one-sided limit alone with no nominal says too little.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInput
from .spec import ProcessSpec, Tag

# A multiplicative unit counts as a mix-up when the declared reading is at least this many
# decades from the expected band and another unit's reading is within the second number.
FAR_DECADES, NEAR_DECADES = 0.7, 0.3
# Temperatures (offset units): in widths of the expected band, at least 20 K wide.
FAR_WIDTHS, NEAR_WIDTHS, MIN_WIDTH_K = 3.0, 1.0, 20.0


@dataclass(frozen=True)
class Unit:
    name: str
    quantity: str
    to_base: Callable[[float], float]
    from_base: Callable[[float], float]


def _scale(name: str, quantity: str, factor: float) -> Unit:
    return Unit(name, quantity, lambda v: v * factor, lambda v: v / factor)


def _offset(name: str, factor: float, offset: float) -> Unit:
    """A temperature: base (K) = value * factor + offset."""
    return Unit(name, "temperature", lambda v: v * factor + offset, lambda v: (v - offset) / factor)


_UNITS: list[Unit] = [
    _offset("K", 1.0, 0.0),
    _offset("degC", 1.0, 273.15),
    _offset("degF", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
    _scale("Pa", "pressure", 1.0),
    _scale("kPa", "pressure", 1e3),
    _scale("MPa", "pressure", 1e6),
    _scale("bar", "pressure", 1e5),
    _scale("mbar", "pressure", 1e2),
    _scale("psi", "pressure", 6894.757),
    _scale("atm", "pressure", 101_325.0),
    _scale("mol/L", "concentration", 1.0),
    _scale("mmol/L", "concentration", 1e-3),
    _scale("mol/m3", "concentration", 1e-3),
    _scale("kg/s", "mass flow", 1.0),
    _scale("kg/h", "mass flow", 1 / 3600),
    _scale("t/h", "mass flow", 1000 / 3600),
    _scale("g/s", "mass flow", 1e-3),
    _scale("m3/h", "volume flow", 1 / 3600),
    _scale("m3/s", "volume flow", 1.0),
    _scale("L/s", "volume flow", 1e-3),
    _scale("L/min", "volume flow", 1e-3 / 60),
    _scale("W", "power", 1.0),
    _scale("kW", "power", 1e3),
    _scale("MW", "power", 1e6),
]
UNITS: Mapping[str, Unit] = {u.name: u for u in _UNITS}
# Spellings found in tag files, mapped to the names above.
_ALIASES = {
    "°c": "degC",
    "c": "degC",
    "deg c": "degC",
    "celsius": "degC",
    "°f": "degF",
    "f": "degF",
    "deg f": "degF",
    "fahrenheit": "degF",
    "kelvin": "K",
    "m³/h": "m3/h",
    "m³/s": "m3/s",
    "mol/m³": "mol/m3",
    "mmol/l": "mmol/L",
    "mol/l": "mol/L",
    "l/s": "L/s",
    "l/min": "L/min",
}
_GAUGE = " gauge"


def parse_unit(text: str) -> tuple[Unit, bool] | None:
    """(unit, gauge) for a unit this module knows, else None. "kPa gauge" is kPa, gauge."""
    raw = text.strip()
    gauge = raw.lower().endswith(_GAUGE)
    if gauge:
        raw = raw[: -len(_GAUGE)].strip()
    name = _ALIASES.get(raw.lower(), raw)
    unit = UNITS.get(name) or next((u for u in _UNITS if u.name.lower() == name.lower()), None)
    return (unit, gauge) if unit is not None else None


def _expected_band(tag: Tag) -> tuple[float, float] | None:
    points = [v for v in (tag.nominal, tag.low, tag.high) if v is not None]
    if tag.nominal is None and len(points) < 2:
        return None  # a one-sided limit alone says too little about typical values
    return min(points), max(points)


def _distance(value: float, band: tuple[float, float], unit: Unit) -> float | None:
    """How far a reading (in the declared unit) lies from the expected band: decades for
    scale units, band widths for temperatures; None where it cannot be judged."""
    low, high = band
    if unit.quantity == "temperature":
        width_k = max(unit.to_base(high) - unit.to_base(low), MIN_WIDTH_K)
        value_k, low_k, high_k = (unit.to_base(v) for v in (value, low, high))
        gap = max(low_k - value_k, value_k - high_k, 0.0)
        return gap / width_k
    if low <= 0 < high:  # a limit at zero says nothing of the scale: judge on the rest
        low = min(v for v in band if v > 0)
    if value <= 0 or low <= 0:
        return None
    if low <= value <= high:
        return 0.0
    return abs(math.log10(value / (low if value < low else high)))


def likely_mixup(tag: Tag, typical: float) -> str | None:
    """The unit the data seems to be in when it is not the declared one, else None."""
    parsed = parse_unit(tag.unit)
    band = _expected_band(tag)
    if parsed is None or band is None or not math.isfinite(typical):
        return None
    declared, gauge = parsed
    far, near = (
        (FAR_WIDTHS, NEAR_WIDTHS)
        if declared.quantity == "temperature"
        else (FAR_DECADES, NEAR_DECADES)
    )
    here = _distance(typical, band, declared)
    if here is None or here < far:
        return None
    centre = tag.nominal if tag.nominal is not None else 0.5 * (band[0] + band[1])
    fits: list[tuple[float, Unit]] = []
    for other in _UNITS:
        if other.quantity != declared.quantity or other is declared:
            continue
        as_declared = declared.from_base(other.to_base(typical))
        there = _distance(as_declared, band, declared)
        if there is not None and there <= near:
            # two units may both fit (bar and atm): the one nearest the nominal wins
            fits.append((abs(declared.to_base(as_declared) - declared.to_base(centre)), other))
    if not fits:
        return None
    return min(fits, key=lambda fit: fit[0])[1].name + (_GAUGE if gauge else "")


def check_units(spec: ProcessSpec, columns: Mapping[str, np.ndarray]) -> None:
    """Refuse a log whose typical values fit another unit of a tag's quantity."""
    for tag in spec.tags:
        values = columns.get(tag.name)
        if values is None:
            continue
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            continue
        typical = float(np.median(finite))
        other = likely_mixup(tag, typical)
        if other is None:
            continue
        parsed = parse_unit(tag.unit)
        assert parsed is not None
        converted = parsed[0].from_base(parse_unit(other)[0].to_base(typical))  # type: ignore[index]
        raise InvalidInput(
            f"{tag.role} '{tag.name}' is typically {typical:g} in the log, far from what the "
            f"tag file expects in {tag.unit} (nominal {tag.nominal}, limits {tag.low} to "
            f"{tag.high}); read as {other} it would be {converted:.4g} {tag.unit}, as "
            f"expected: the log is likely in {other}, not {tag.unit}. Convert the column "
            "or correct the tag's unit"
        )
