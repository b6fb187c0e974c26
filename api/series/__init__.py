"""Time-series storage of runs: the steps, values, events and value rollups tables.

An episode or a control step is written in one transaction (the caller's): a run never
shows half a step. Writes are batched: PostgreSQL gets COPY, SQLite an executemany.

Besides the raw values, `write_steps` keeps `run_value_rollups`: count, minimum and
maximum of every tag over aligned buckets of 16, 64, ... 65536 steps. A plot of a long
range (`get_series(method="minmax")`) then reads a few rollup rows per point instead of
every stored value, and still shows every spike: each point pair is a bucket's minimum
and maximum, not a sample that may fall between spikes.

Run bookkeeping and validation of requests live in api.services.runs; this package only
stores and reads rows.
"""

from api.series.downsample import SeriesQuery, bucket_plan, minmax_series, stride_series
from api.series.ranges import (
    StepSpan,
    count_values,
    recorded_tags,
    step_bounds,
    step_span,
    steps_between,
    stored_history,
    values_between,
)
from api.series.rollups import ROLLUP_WIDTHS_STEPS, Extremes, Rollups, value_rollups
from api.series.writes import StepRows, step_rows, write_steps

__all__ = [
    "ROLLUP_WIDTHS_STEPS",
    "Extremes",
    "Rollups",
    "SeriesQuery",
    "StepRows",
    "StepSpan",
    "bucket_plan",
    "count_values",
    "minmax_series",
    "recorded_tags",
    "step_bounds",
    "step_rows",
    "step_span",
    "steps_between",
    "stored_history",
    "stride_series",
    "value_rollups",
    "values_between",
    "write_steps",
]
