"""Value rollups: count, minimum and maximum (and the step of each) of every tag over
aligned buckets of 16, 64, ... 65536 steps, merged into `run_value_rollups` at each write.
A min/max plot of a long range reads a few of these rows per point (api.series.downsample).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Connection, Integer, and_, bindparam, case, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from api.orm import RunValueRollup

# Rollup bucket widths in steps, each 4x the previous one. A plot reads the widest one
# that fits its bucket, so at most a few rollup rows per plotted point; both ends of a
# range that do not fill a whole bucket come from the next narrower width, down to raw.
ROLLUP_WIDTHS_STEPS = (16, 64, 256, 1024, 4096, 16384, 65536)
ROLLUP_KEY = ("run_id", "width_steps", "channel", "tag", "bucket")


@dataclass(frozen=True)
class Extremes:
    """Count, minimum and maximum (and the step of each) of groups of one tag's values.

    One entry per group, sorted by `key` (an index into a list of (channel, tag) pairs),
    then by `start`, the first step the group may cover. A single value is a group of one.
    """

    key: np.ndarray
    start: np.ndarray
    count: np.ndarray
    low: np.ndarray
    low_step: np.ndarray
    high: np.ndarray
    high_step: np.ndarray

    @classmethod
    def build(
        cls,
        key: Sequence[int],
        start: Sequence[int],
        count: Sequence[int],
        low: Sequence[float],
        low_step: Sequence[int],
        high: Sequence[float],
        high_step: Sequence[int],
    ) -> Extremes:
        """From unsorted columns (raw values: count 1, low = high, steps = start)."""
        key_array, start_array = np.asarray(key, np.int64), np.asarray(start, np.int64)
        order = np.lexsort((start_array, key_array))
        return cls(
            key_array[order],
            start_array[order],
            np.asarray(count, np.int64)[order],
            np.asarray(low, np.float64)[order],
            np.asarray(low_step, np.int64)[order],
            np.asarray(high, np.float64)[order],
            np.asarray(high_step, np.int64)[order],
        )

    @classmethod
    def of_values(cls, key: Sequence[int], step: Sequence[int], value: Sequence[float]) -> Extremes:
        return cls.build(key, step, np.ones(len(key), np.int64), value, step, value, step)

    def __len__(self) -> int:
        return len(self.key)

    def concat(self, other: Extremes) -> Extremes:
        """Both sets of groups, re-sorted by key then start."""
        columns = [
            np.concatenate([getattr(self, f), getattr(other, f)])
            for f in ("key", "start", "count", "low", "low_step", "high", "high_step")
        ]
        return Extremes.build(*columns)

    def bucketed(self, width: int, origin: int = 0) -> tuple[Extremes, np.ndarray]:
        """Groups merged per bucket of `width` steps counted from `origin` (floor division,
        so buckets stay aligned for negative steps too), and each merged group's bucket.

        Ties keep the earliest step: groups are ordered by start within a key."""
        if len(self) == 0:
            return self, np.zeros(0, np.int64)
        bucket = np.floor_divide(self.start - origin, width)
        new = np.ones(len(self), bool)
        new[1:] = (self.key[1:] != self.key[:-1]) | (bucket[1:] != bucket[:-1])
        first = np.flatnonzero(new)
        sizes = np.diff(np.append(first, len(self)))
        low = np.minimum.reduceat(self.low, first)
        high = np.maximum.reduceat(self.high, first)
        at_low = _first_true(self.low == np.repeat(low, sizes), first)
        at_high = _first_true(self.high == np.repeat(high, sizes), first)
        merged = Extremes(
            self.key[first],
            origin + bucket[first] * width,
            np.add.reduceat(self.count, first),
            low,
            self.low_step[at_low],
            high,
            self.high_step[at_high],
        )
        return merged, bucket[first]


def _first_true(mask: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Index of the first True of each segment of `mask` starting at `first` (every
    segment has one: it holds its own minimum or maximum)."""
    index = np.where(mask, np.arange(len(mask)), len(mask))
    return np.minimum.reduceat(index, first)


@dataclass(frozen=True)
class Rollups:
    """Rollup rows of one batch: per width, the merged extremes and their bucket numbers."""

    keys: list[tuple[str, str]]
    levels: list[tuple[int, Extremes, np.ndarray]]

    def columns(self) -> dict[str, list[Any]]:
        """Column lists for the upsert (without run_id)."""
        out: dict[str, list[Any]] = {
            name: []
            for name in (
                "width_steps",
                "channel",
                "tag",
                "bucket",
                "n_values",
                "min_value",
                "min_step",
                "max_value",
                "max_step",
            )
        }
        for width, extremes, bucket in self.levels:
            out["width_steps"].extend([width] * len(extremes))
            out["channel"].extend(self.keys[k][0] for k in extremes.key.tolist())
            out["tag"].extend(self.keys[k][1] for k in extremes.key.tolist())
            out["bucket"].extend(bucket.tolist())
            out["n_values"].extend(extremes.count.tolist())
            out["min_value"].extend(extremes.low.tolist())
            out["min_step"].extend(extremes.low_step.tolist())
            out["max_value"].extend(extremes.high.tolist())
            out["max_step"].extend(extremes.high_step.tolist())
        return out


def value_rollups(values: Sequence[tuple[Any, ...]]) -> Rollups:
    """Rollups of value rows (VALUE_COLUMNS), every width, each built from the previous."""
    keys: dict[tuple[str, str], int] = {}
    key = [keys.setdefault((row[2], row[3]), len(keys)) for row in values]
    extremes = Extremes.of_values(key, [row[1] for row in values], [row[4] for row in values])
    levels = []
    for width in ROLLUP_WIDTHS_STEPS:
        extremes, bucket = extremes.bucketed(width)
        levels.append((width, extremes, bucket))
    return Rollups(list(keys), levels)


def _merge_rollup(old: Any, new: Any) -> dict[str, ColumnElement[Any]]:
    """SET clause merging an incoming rollup row (`new`) into the stored one (`old`)."""
    new_low = or_(
        new.min_value < old.min_value,
        and_(new.min_value == old.min_value, new.min_step < old.min_step),
    )
    new_high = or_(
        new.max_value > old.max_value,
        and_(new.max_value == old.max_value, new.max_step < old.max_step),
    )
    return {
        "n_values": old.n_values + new.n_values,
        "min_value": case((new_low, new.min_value), else_=old.min_value),
        "min_step": case((new_low, new.min_step), else_=old.min_step),
        "max_value": case((new_high, new.max_value), else_=old.max_value),
        "max_step": case((new_high, new.max_step), else_=old.max_step),
    }


def upsert_rollups(connection: Connection, run_id: int, rollups: Rollups) -> None:
    columns = rollups.columns()
    if not columns["bucket"]:
        return
    statement = _rollup_upsert(connection.dialect.name)
    if connection.dialect.name == "postgresql":
        connection.execute(statement, {"run_id": run_id, **columns})
        return
    names = list(columns)
    connection.execute(
        statement,
        [
            {"run_id": run_id, **dict(zip(names, row, strict=True))}
            for row in zip(*columns.values(), strict=True)
        ],
    )


@functools.cache
def _rollup_upsert(dialect: str) -> Any:
    """The upsert statement, built once (a live loop runs it at every step)."""
    table = RunValueRollup.__table__
    names = [c.name for c in table.columns if c.name != "run_id"]
    if dialect == "postgresql":
        # One statement for the whole batch: the columns travel as arrays and unnest.
        arrays = (
            func.unnest(
                *(bindparam(name, type_=postgresql.ARRAY(table.c[name].type)) for name in names)
            )
            .table_valued(*names)
            .render_derived()
        )
        pg_insert = postgresql.insert(table).from_select(
            ["run_id", *names], select(bindparam("run_id", type_=Integer), *arrays.c)
        )
        return pg_insert.on_conflict_do_update(
            index_elements=list(ROLLUP_KEY), set_=_merge_rollup(table.c, pg_insert.excluded)
        )
    lite_insert = sqlite.insert(table)
    return lite_insert.on_conflict_do_update(
        index_elements=list(ROLLUP_KEY), set_=_merge_rollup(table.c, lite_insert.excluded)
    )
