"""Checks of a logged DataFrame against its process spec, run once at the edge before a
twin trains on, replays or judges a log (re-exported by twin.data): every problem is an
`InvalidInput` naming the column, the row and what the spec expects."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import InvalidInput
from .spec import ProcessSpec, Tag
from .units import check_units

RATE_TOLERANCE = 1e-6  # relative slack on the rate limit, for round-off in the check itself
MAX_DIGITS = 17  # significant digits that identify any float64


def significant_digits(values: np.ndarray) -> int:
    """The fewest significant digits that write every finite value back exactly: the
    precision of the file the values came from (a historian exporting at 6 digits gives
    6; a float written in full, 17)."""
    finite = values[np.isfinite(values) & (values != 0)]
    for digits in range(1, MAX_DIGITS):
        if all(float(f"{v:.{digits}g}") == v for v in finite):
            return digits
    return MAX_DIGITS


def rounding_error(values: np.ndarray, digits: int) -> np.ndarray:
    """Half a unit in the last written digit of each value: how far the logged number may
    lie from what was applied when the file keeps `digits` significant digits."""
    magnitude = np.floor(np.log10(np.maximum(np.abs(values), np.finfo(float).tiny)))
    return np.where(values == 0, 0.0, 0.5 * 10.0 ** (magnitude - digits + 1))


def distinct_format(a: float, b: float) -> tuple[str, str]:
    """`a` and `b` written with the fewest digits (at least 4) that tell them apart."""
    for digits in range(4, MAX_DIGITS + 1):
        first, second = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if first != second:
            return first, second
    return f"{a:.{MAX_DIGITS}g}", f"{b:.{MAX_DIGITS}g}"


def timestamps_s(df: pd.DataFrame, spec: ProcessSpec) -> np.ndarray:
    """The timestamp column as float seconds: numbers as they are, date-times since 1970 UTC.

    Date-times without a zone are read as UTC; what matters to the twin is the spacing.
    """
    column = df[spec.timestamp_column]
    name = spec.timestamp_column
    if pd.api.types.is_bool_dtype(column):
        raise InvalidInput(f"timestamp column '{name}' holds booleans, not times")
    numbers = pd.to_numeric(column, errors="coerce")
    if pd.api.types.is_numeric_dtype(column) or numbers.notna().any():
        unparsed = numbers.isna() & column.notna()
        if unparsed.any():  # numbers mixed with text
            row = int(np.flatnonzero(unparsed.to_numpy())[0])
            raise InvalidInput(
                f"timestamp column '{name}' has {column.iloc[row]!r} at row "
                f"{row}, which is not a number of seconds"
            )
        ts = numbers.to_numpy(dtype=float)
    else:
        try:
            parsed = pd.to_datetime(column, utc=True, format="ISO8601")
        except (ValueError, TypeError):
            bad = _first_unparseable(column)
            raise InvalidInput(
                f"timestamp column '{name}' has {bad!r}, which is neither a "
                "number of seconds nor an ISO 8601 date-time"
            ) from None
        ts = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float)
    bad_rows = np.flatnonzero(~np.isfinite(ts))
    if bad_rows.size:
        raise InvalidInput(
            f"timestamp column '{name}' has a missing or non-numeric value "
            f"at row {int(bad_rows[0])}"
        )
    return ts


def _first_unparseable(column: pd.Series) -> object:
    for value in column:
        try:
            pd.to_datetime(value, utc=True, format="ISO8601")
        except (ValueError, TypeError):
            return value
    return column.iloc[0]


def check_log(df: pd.DataFrame, spec: ProcessSpec) -> None:
    """Reject a log the twin cannot learn from, naming the column, the row and the fix.

    A sensor may have missing samples (they are masked); an actuator may not, since the
    twin must know what was applied. Actuator values outside their bounds or moving faster
    than their rate limit contradict the tag file; so does a sensor whose typical value
    lies beyond one of its hard limits (usually a unit mix-up, e.g. a limit in degC
    on data in K).
    """
    _check_columns(df, spec)
    if len(df) == 0:
        raise InvalidInput("log has no rows")
    ts = timestamps_s(df, spec)
    _check_timestamps(ts, spec)
    values = {tag.name: _numeric_column(df, tag.name) for tag in spec.tags}
    check_units(spec, values)  # a log in another unit of a quantity: name the mix-up
    for tag in spec.actuators:
        _check_actuator(values[tag.name], ts, tag, spec)
    for tag in (*spec.sensors, *spec.disturbances):
        _check_measured(values[tag.name], tag)


def _check_columns(df: pd.DataFrame, spec: ProcessSpec) -> None:
    needed = [spec.timestamp_column] + [t.name for t in spec.tags]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise InvalidInput(
            f"log lacks column(s) {', '.join(missing)} required by spec "
            f"'{spec.name}' (has: {', '.join(map(str, df.columns))})"
        )
    unknown = [str(c) for c in df.columns if c not in needed and c not in spec.ignore_columns]
    if unknown:
        raise InvalidInput(
            f"log has column(s) {', '.join(unknown)} that spec '{spec.name}' "
            "does not know: add them to the tag file as tags, or list them "
            "under ignore_columns"
        )


def _check_timestamps(ts: np.ndarray, spec: ProcessSpec) -> None:
    name = spec.timestamp_column
    steps = np.diff(ts)
    duplicate = np.flatnonzero(steps == 0)
    if duplicate.size:
        row = int(duplicate[0]) + 1
        raise InvalidInput(
            f"duplicate timestamp in '{name}' at rows {row - 1} and {row} "
            f"({ts[row]:g} s); {duplicate.size} duplicate(s) in all"
        )
    backwards = np.flatnonzero(steps < 0)
    if backwards.size:
        row = int(backwards[0]) + 1
        raise InvalidInput(
            f"timestamps in '{name}' must strictly increase: row {row} "
            f"({ts[row]:g} s) is before row {row - 1} ({ts[row - 1]:g} s)"
        )
    if steps.size:
        typical = float(np.median(steps))
        if abs(typical - spec.sample_period_s) > 0.1 * spec.sample_period_s:
            raise InvalidInput(
                f"log is sampled every {typical:g} s (median), but the tag file "
                f"says sample_period_s: {spec.sample_period_s:g}; resample the "
                "log or correct the tag file"
            )


def _numeric_column(df: pd.DataFrame, name: str) -> np.ndarray:
    raw = df[name]
    if pd.api.types.is_bool_dtype(raw):
        raise InvalidInput(f"tag '{name}' holds booleans; give numbers (0/1) instead")
    col = pd.to_numeric(raw, errors="coerce")
    not_numbers = col.isna() & raw.notna()
    if not_numbers.any():
        row = int(np.flatnonzero(not_numbers.to_numpy())[0])
        raise InvalidInput(f"tag '{name}' has a non-numeric value {raw.iloc[row]!r} at row {row}")
    values = col.to_numpy(dtype=float)
    if np.isinf(values).any():
        row = int(np.flatnonzero(np.isinf(values))[0])
        raise InvalidInput(f"tag '{name}' has an infinite value at row {row}")
    return values


def _check_actuator(u: np.ndarray, ts: np.ndarray, tag: Tag, spec: ProcessSpec) -> None:
    missing = np.flatnonzero(np.isnan(u))
    if missing.size:
        raise InvalidInput(
            f"actuator '{tag.name}' has missing values ({missing.size}, first "
            f"at row {int(missing[0])}); an actuator's applied value must be "
            "known at every sample"
        )
    assert tag.low is not None and tag.high is not None and tag.rate_limit is not None
    outside = np.flatnonzero((u < tag.low) | (u > tag.high))
    if outside.size:
        row = int(outside[0])
        raise InvalidInput(
            f"actuator '{tag.name}' is {u[row]:g} {tag.unit} at row {row}, "
            f"outside its bounds [{tag.low:g}, {tag.high:g}] {tag.unit} from "
            f"the tag file ({outside.size} sample(s)); the bounds or the data "
            "are wrong"
        )
    dt = np.diff(ts)
    contiguous = dt <= 1.5 * spec.sample_period_s
    moves = np.abs(np.diff(u))
    allowed = tag.rate_limit * dt * (1.0 + RATE_TOLERANCE) + 1e-9
    if np.any(contiguous & (moves > allowed)):
        # a move at the limit, written at the file's precision, may read a hair over it
        slack = rounding_error(u, significant_digits(u))
        allowed = allowed + slack[1:] + slack[:-1]
    too_fast = np.flatnonzero(contiguous & (moves > allowed))
    if too_fast.size:
        row = int(too_fast[0]) + 1
        rate = moves[row - 1] / dt[row - 1]
        shown_rate, shown_limit = distinct_format(rate, tag.rate_limit)
        raise InvalidInput(
            f"actuator '{tag.name}' moves {shown_rate} {tag.unit}/s at row "
            f"{row}, faster than its rate_limit {shown_limit} {tag.unit}/s "
            f"({too_fast.size} move(s)); the rate limit or the data are wrong"
        )


def _check_measured(values: np.ndarray, tag: Tag) -> None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise InvalidInput(f"{tag.role} '{tag.name}' has no values at all")
    typical = float(np.median(finite))
    for side, limit, beyond in (
        ("high", tag.high, typical > (tag.high or 0.0)),
        ("low", tag.low, typical < (tag.low or 0.0)),
    ):
        if limit is not None and beyond:
            raise InvalidInput(
                f"{tag.role} '{tag.name}' is typically {typical:g} {tag.unit}, "
                f"beyond its {side} limit {limit:g} {tag.unit}: the limit "
                "contradicts the data (check the unit and the limit)"
            )
