"""Reading a run's series for plots: every stride-th step, or per bucket the minimum and
maximum of each tag read from the rollups, so that a long range costs a few rows per point
and still shows every spike."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Select, or_, select
from sqlalchemy.orm import Session

from api.errors import Invalid
from api.orm import RunStep, RunValue, RunValueRollup
from api.series.rollups import ROLLUP_WIDTHS_STEPS, Extremes

# A min/max bucket is a whole number of rollup buckets. Rounding it up may cost points:
# a width is used only if at least 1/1.5 = 2/3 of the points asked for remain.
MAX_BUCKET_GROWTH = 1.5
# Step numbers per `IN (...)` list: far below SQLite's and PostgreSQL's parameter limits.
IN_CHUNK = 1_000


@dataclass(frozen=True)
class SeriesQuery:
    """What to read: the run, a step range [first, last] and the channel/tag filters."""

    run_id: int
    first: int
    last: int
    channels: Sequence[str] | None
    tags: Sequence[str] | None

    def filters(self, table: Any) -> list[ColumnElement[bool]]:
        out = [table.run_id == self.run_id]
        if self.channels:
            out.append(table.channel.in_(list(self.channels)))
        if self.tags:
            out.append(table.tag.in_(list(self.tags)))
        return out


def series_out(
    run_id: int,
    steps: list[int],
    time_s: list[float],
    stride: int,
    method: str,
    series: dict[str, dict[str, list[float | None]]],
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "steps": steps,
        "time_s": time_s,
        "stride": stride,
        "method": method,
        "series": series,
    }


def stride_series(session: Session, query: SeriesQuery, stride: int, method: str) -> dict[str, Any]:
    """Every stride-th step from the first, filtered in SQL (a long run is not read whole)."""
    kept = session.execute(
        select(RunStep.step, RunStep.time_s)
        .where(
            RunStep.run_id == query.run_id,
            RunStep.step.between(query.first, query.last),
            *_on_stride(RunStep.step, query.first, stride),
        )
        .order_by(RunStep.step)
    ).all()
    column_of = {row.step: i for i, row in enumerate(kept)}
    series: dict[str, dict[str, list[float | None]]] = {}
    values = (
        select(RunValue.channel, RunValue.tag, RunValue.step, RunValue.value)
        .where(
            *query.filters(RunValue),
            RunValue.step.between(query.first, query.last),
            *_on_stride(RunValue.step, query.first, stride),
        )
        .order_by(RunValue.channel, RunValue.tag, RunValue.step)
    )
    for channel, tag, step, value in session.execute(values):
        column = series.setdefault(channel, {}).setdefault(tag, [None] * len(kept))
        column[column_of[step]] = value
    return series_out(
        query.run_id, [r.step for r in kept], [r.time_s for r in kept], stride, method, series
    )


def _on_stride(step: Any, first: int, stride: int) -> list[ColumnElement[bool]]:
    return [(step - first) % stride == 0] if stride > 1 else []


def stride_for(n: int, max_points: int | None) -> int:
    if max_points is None or n <= max_points:
        return 1
    if max_points < 1:
        raise Invalid("max_points must be at least 1")
    return math.ceil(n / max_points)


@dataclass(frozen=True)
class BucketPlan:
    """Min/max buckets of `bucket_steps` steps from `origin`, built from rollups of
    `width_steps` (1: from raw values)."""

    width_steps: int
    bucket_steps: int
    origin: int


def bucket_plan(first: int, last: int, buckets: int) -> BucketPlan:
    """At most `buckets` buckets over steps first..last, from the widest rollup that fits."""
    span = last - first + 1
    ideal = span / buckets
    for width in reversed(ROLLUP_WIDTHS_STEPS):
        if width > ideal:
            continue
        origin = first - first % width
        size = math.ceil((last - origin + 1) / (buckets * width)) * width
        if size <= MAX_BUCKET_GROWTH * ideal:
            return BucketPlan(width, size, origin)
    # Too few steps per bucket for any rollup: raw values (at most 16 per point per tag).
    return BucketPlan(1, 2 * math.ceil(span / (2 * buckets)), first)


@dataclass(frozen=True)
class Slots:
    """The time axis of a min/max series: per bucket, the index of its first slot and of
    its second one (the same slot for a bucket of one step)."""

    steps: list[int]
    first: np.ndarray
    second: np.ndarray


def _slots(first: int, last: int, plan: BucketPlan) -> Slots:
    steps: list[int] = []
    first_slot, second_slot = [], []
    n_buckets = (last - plan.origin) // plan.bucket_steps + 1
    for bucket in range(n_buckets):
        low = max(first, plan.origin + bucket * plan.bucket_steps)
        high = min(last, plan.origin + (bucket + 1) * plan.bucket_steps - 1)
        first_slot.append(len(steps))
        steps.append(low)
        if high > low:
            steps.append(low + (high - low + 1) // 2)
        second_slot.append(len(steps) - 1)
    return Slots(steps, np.asarray(first_slot), np.asarray(second_slot))


def minmax_series(session: Session, query: SeriesQuery, max_points: int) -> dict[str, Any]:
    plan = bucket_plan(query.first, query.last, max_points // 2)
    slots = _slots(query.first, query.last, plan)
    keys, extremes = _range_extremes(session, query, plan.width_steps)
    merged, bucket = extremes.bucketed(plan.bucket_steps, plan.origin)
    # Per bucket, the extreme that occurred first goes in the first slot.
    low_first = merged.low_step <= merged.high_step
    early = np.where(low_first, merged.low, merged.high)
    late = np.where(low_first, merged.high, merged.low)
    series: dict[str, dict[str, list[float | None]]] = {}
    for code in np.unique(merged.key).tolist():
        mine = merged.key == code
        column = np.full(len(slots.steps), np.nan)
        column[slots.first[bucket[mine]]] = early[mine]
        column[slots.second[bucket[mine]]] = late[mine]
        channel, tag = keys[code]
        series.setdefault(channel, {})[tag] = [
            None if math.isnan(v) else v for v in column.tolist()
        ]
    ordered = {c: dict(sorted(series[c].items())) for c in sorted(series)}
    times = _times_of(session, query.run_id, slots.steps)
    return series_out(query.run_id, slots.steps, times, plan.bucket_steps // 2, "minmax", ordered)


def _range_extremes(
    session: Session, query: SeriesQuery, width: int
) -> tuple[list[tuple[str, str]], Extremes]:
    """Extremes of exactly steps first..last: whole rollup buckets of `width` and the
    narrower widths at both ends, raw values for what no whole bucket covers."""
    keys: dict[tuple[str, str], int] = {}
    out = Extremes.of_values([], [], [])
    pairs = _rollup_keys(session, query)
    if not pairs:
        return [], out
    widths = [w for w in ROLLUP_WIDTHS_STEPS if w <= width]
    rollup_ranges, raw_ranges = _cover(query.first, query.last, widths[::-1])
    for level in sorted({w for w, _, _ in rollup_ranges}):
        buckets = [(b0, b1) for w, b0, b1 in rollup_ranges if w == level]
        out = out.concat(_rollup_extremes(session, query, pairs, level, buckets, keys))
    if raw_ranges:
        out = out.concat(_raw_extremes(session, query, pairs, raw_ranges, keys))
    return list(keys), out


def _cover(
    first: int, last: int, widths: Sequence[int]
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Split steps first..last into whole buckets (width, first bucket, last bucket), widest
    first, and the raw step ranges (first, last) left at the ends."""
    if first > last:
        return [], []
    if not widths:
        return [], [(first, last)]
    width, narrower = widths[0], widths[1:]
    low, high = -(-first // width), (last + 1) // width - 1
    if low > high:
        return _cover(first, last, narrower)
    left = _cover(first, low * width - 1, narrower)
    right = _cover((high + 1) * width, last, narrower)
    return ([(width, low, high), *left[0], *right[0]], [*left[1], *right[1]])


def _rollup_keys(session: Session, query: SeriesQuery) -> list[tuple[str, str]]:
    """The run's (channel, tag) pairs, from its widest rollup (every value is in it): naming
    them lets each read seek to its steps or buckets instead of scanning every tag's."""
    table = RunValueRollup
    rows = session.execute(
        select(table.channel, table.tag)
        .distinct()
        .where(*query.filters(table), table.width_steps == ROLLUP_WIDTHS_STEPS[-1])
    )
    return [(c, t) for c, t in rows]


def _rollup_extremes(
    session: Session,
    query: SeriesQuery,
    pairs: list[tuple[str, str]],
    width: int,
    buckets: list[tuple[int, int]],
    keys: dict[tuple[str, str], int],
) -> Extremes:
    table = RunValueRollup.__table__
    rows = _plain_rows(
        session,
        select(
            table.c.channel,
            table.c.tag,
            table.c.bucket,
            table.c.n_values,
            table.c.min_value,
            table.c.min_step,
            table.c.max_value,
            table.c.max_step,
        ).where(
            table.c.run_id == query.run_id,
            table.c.width_steps == width,
            *_pair_filters(table.c, pairs),
            or_(*(table.c.bucket.between(b0, b1) for b0, b1 in buckets)),
        ),
    )
    key = [keys.setdefault((row[0], row[1]), len(keys)) for row in rows]
    start, count, low, low_step, high, high_step = (
        _column(rows, i, kind)
        for i, kind in enumerate(
            (np.int64, np.int64, np.float64, np.int64, np.float64, np.int64), start=2
        )
    )
    return Extremes.build(key, start * width, count, low, low_step, high, high_step)


def _raw_extremes(
    session: Session,
    query: SeriesQuery,
    pairs: list[tuple[str, str]],
    ranges: list[tuple[int, int]],
    keys: dict[tuple[str, str], int],
) -> Extremes:
    table = RunValue.__table__
    rows = _plain_rows(
        session,
        select(table.c.channel, table.c.tag, table.c.step, table.c.value).where(
            table.c.run_id == query.run_id,
            *_pair_filters(table.c, pairs),
            or_(*(table.c.step.between(a, z) for a, z in ranges)),
        ),
    )
    key = [keys.setdefault((row[0], row[1]), len(keys)) for row in rows]
    return Extremes.of_values(key, _column(rows, 2, np.int64), _column(rows, 3, np.float64))


def _pair_filters(columns: Any, pairs: list[tuple[str, str]]) -> list[ColumnElement[bool]]:
    """Channel and tag lists of the pairs: their cross product may name pairs that do not
    exist, never one outside the caller's channel and tag filters."""
    return [
        columns.channel.in_(sorted({c for c, _ in pairs})),
        columns.tag.in_(sorted({t for _, t in pairs})),
    ]


def _plain_rows(session: Session, statement: Select) -> list[tuple[Any, ...]]:
    """The driver's own tuples, not Row objects: turning 100 k rows into arrays is then
    ~10x faster, and these reads return up to a few hundred thousand rows."""
    result = session.connection().execute(statement)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


def _column(rows: list[tuple[Any, ...]], index: int, kind: type) -> np.ndarray:
    return np.fromiter((row[index] for row in rows), kind, len(rows))


def _times_of(session: Session, run_id: int, steps: list[int]) -> list[float]:
    """time_s of each step; a step number the run skipped gets a time interpolated
    between its neighbours on the axis (the first one always exists: it starts the range)."""
    found: dict[int, float] = {}
    for start in range(0, len(steps), IN_CHUNK):
        chunk = steps[start : start + IN_CHUNK]
        # `status` is read only so that no index covers the query: SQLite (no statistics)
        # would otherwise scan ix_run_steps_run_time whole instead of seeking each step.
        found.update(
            (step, time_s)
            for step, time_s, _ in session.execute(
                select(RunStep.step, RunStep.time_s, RunStep.status).where(
                    RunStep.run_id == run_id, RunStep.step.in_(chunk)
                )
            )
        )
    if len(found) == len(steps):
        return [found[s] for s in steps]
    known = sorted(found)
    return np.interp(steps, known, [found[s] for s in known]).tolist()
