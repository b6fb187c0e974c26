"""Value rollups (per-bucket count, minimum and maximum of every run tag) and an index
on step times, for plots of long runs and time ranges.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04

Written by hand like 0001; it must match `api/orm.py` (RunValueRollup), which
tests/test_migrations.py checks. A plot of a long range reads these rows instead of
every raw value: a day of 1 s data for 20 tags is 1.7 M values, and a min/max over them
takes 1.5-2.5 s on SQLite or PostgreSQL, against tens of milliseconds for the rollups.
The primary key (run, width, channel, tag, bucket) is the only index reads need.
`ix_run_steps_run_time` (run_id, time_s, step) finds the steps of a time range without
reading every step of the run (a month of 1 s steps is 2.6 M rows).

Runs stored before this revision get their rollups here, computed in SQL: width 16 from
the raw values, each wider width from the one before. Later writes keep them up to date
(`api.services.runs.write_steps`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNELS = "('sensor', 'disturbance', 'actuator', 'setpoint', 'prediction', 'margin')"
# Frozen here (a migration must not change when the code does); the same as
# api.series.rollups.ROLLUP_WIDTHS_STEPS.
WIDTHS_STEPS = (16, 64, 256, 1024, 4096, 16384, 65536)
COLUMNS = (
    "run_id, width_steps, channel, tag, bucket, n_values, min_value, min_step, max_value, max_step"
)


def upgrade() -> None:
    op.create_table(
        "run_value_rollups",
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("width_steps", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("tag", sa.String(200), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("n_values", sa.Integer(), nullable=False),
        sa.Column("min_value", sa.Float(), nullable=False),
        sa.Column("min_step", sa.Integer(), nullable=False),
        sa.Column("max_value", sa.Float(), nullable=False),
        sa.Column("max_step", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "width_steps", "channel", "tag", "bucket"),
        sa.CheckConstraint(f"channel IN {CHANNELS}", name="ck_run_value_rollups_channel"),
    )
    op.create_index("ix_run_steps_run_time", "run_steps", ["run_id", "time_s", "step"])
    op.execute(_first_level())
    for narrower, width in zip(WIDTHS_STEPS, WIDTHS_STEPS[1:], strict=False):
        op.execute(_next_level(narrower, width))


def downgrade() -> None:
    op.drop_table("run_value_rollups")
    op.drop_index("ix_run_steps_run_time", table_name="run_steps")


def _floor_div(column: str, width: int) -> str:
    # Integer division truncates toward zero in both databases; buckets floor.
    return (
        f"(CASE WHEN {column} >= 0 THEN {column} / {width} ELSE ({column} + 1) / {width} - 1 END)"
    )


def _first_level() -> str:
    width = WIDTHS_STEPS[0]
    bucket = _floor_div("step", width)
    return f"""
        INSERT INTO run_value_rollups ({COLUMNS})
        SELECT run_id, {width}, channel, tag, bucket, COUNT(*), MIN(value),
               MIN(CASE WHEN low_rank = 1 THEN step END), MAX(value),
               MIN(CASE WHEN high_rank = 1 THEN step END)
        FROM (SELECT run_id, channel, tag, step, value, {bucket} AS bucket,
                     ROW_NUMBER() OVER (PARTITION BY run_id, channel, tag, {bucket}
                                        ORDER BY value, step) AS low_rank,
                     ROW_NUMBER() OVER (PARTITION BY run_id, channel, tag, {bucket}
                                        ORDER BY value DESC, step) AS high_rank
              FROM run_values) AS ranked
        GROUP BY run_id, channel, tag, bucket"""


def _next_level(narrower: int, width: int) -> str:
    bucket = _floor_div("bucket", width // narrower)
    return f"""
        INSERT INTO run_value_rollups ({COLUMNS})
        SELECT run_id, {width}, channel, tag, wide, SUM(n_values), MIN(min_value),
               MIN(CASE WHEN low_rank = 1 THEN min_step END), MAX(max_value),
               MIN(CASE WHEN high_rank = 1 THEN max_step END)
        FROM (SELECT run_id, channel, tag, n_values, min_value, min_step, max_value,
                     max_step, {bucket} AS wide,
                     ROW_NUMBER() OVER (PARTITION BY run_id, channel, tag, {bucket}
                                        ORDER BY min_value, min_step) AS low_rank,
                     ROW_NUMBER() OVER (PARTITION BY run_id, channel, tag, {bucket}
                                        ORDER BY max_value DESC, max_step) AS high_rank
              FROM run_value_rollups WHERE width_steps = {narrower}) AS ranked
        GROUP BY run_id, channel, tag, wide"""
