"""Alarms (ISA-18.2): alarm points of control loops, their transitions, and how far each
loop's steps have been evaluated.

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-05

Written by hand like 0001; it must match `api/orm.py` (Alarm, AlarmEvent, AlarmCursor),
which tests/test_migrations.py checks. `alarms` has one row per (loop, tag, kind), so
raising an alarm that is already active changes that row instead of adding one; the
alarm summary filters by state, hence its index. `alarm_events` is read per alarm, in
order.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = "('normal', 'unacknowledged', 'acknowledged', 'rtn_unacknowledged', 'shelved')"
KINDS = "('limit_approach', 'limit_violation', 'fallback', 'stale_data')"
PRIORITIES = "('critical', 'high', 'medium', 'low')"


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "alarms",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("tag", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("unit", sa.String(100), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("worst_value", sa.Float(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("time_s", sa.Float(), nullable=False),
        _timestamp("raised_at"),
        _timestamp("cleared_at", nullable=True),
        sa.Column("clear_streak", sa.Integer(), nullable=False),
        _timestamp("acknowledged_at", nullable=True),
        sa.Column("acknowledged_by", sa.String(200), nullable=True),
        _timestamp("shelved_at", nullable=True),
        sa.Column("shelved_by", sa.String(200), nullable=True),
        _timestamp("shelved_until", nullable=True),
        sa.Column("shelve_reason", sa.Text(), nullable=True),
        _timestamp("updated_at"),
        sa.CheckConstraint(f"state IN {STATES}", name="ck_alarms_state"),
        sa.CheckConstraint(f"kind IN {KINDS}", name="ck_alarms_kind"),
        sa.CheckConstraint(f"priority IN {PRIORITIES}", name="ck_alarms_priority"),
        sa.UniqueConstraint("run_id", "tag", "kind", name="uq_alarms_point"),
    )
    op.create_index("ix_alarms_state", "alarms", ["state"])
    op.create_table(
        "alarm_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "alarm_id", sa.Integer(), sa.ForeignKey("alarms.id", ondelete="CASCADE"), nullable=False
        ),
        _timestamp("at"),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(24), nullable=False),
        sa.Column("to_state", sa.String(24), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
    )
    op.create_index("ix_alarm_events_alarm", "alarm_events", ["alarm_id", "id"])
    op.create_table(
        "alarm_cursors",
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("last_step", sa.Integer(), nullable=False),
        _timestamp("last_seen_at"),
        sa.Column("closed", sa.Boolean(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alarm_cursors")
    op.drop_index("ix_alarm_events_alarm", table_name="alarm_events")
    op.drop_table("alarm_events")
    op.drop_index("ix_alarms_state", table_name="alarms")
    op.drop_table("alarms")
