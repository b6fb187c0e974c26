"""API keys with roles, and the audit log of changes made through them.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

Written by hand like 0001; it must match `api/orm.py` (ApiKey, AuditEntry), which
tests/test_migrations.py checks. `api_keys.prefix` is unique: it is how a presented
token finds its row. `audit_log` is read newest first (the primary key) and filtered
by key or by target, hence those two indexes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")
ROLES = "('viewer', 'operator', 'engineer', 'admin')"


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        _timestamp("created_at"),
        sa.Column("created_by", sa.String(200), nullable=False),
        _timestamp("revoked_at", nullable=True),
        sa.CheckConstraint(f"role IN {ROLES}", name="ck_api_keys_role"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        _timestamp("at"),
        sa.Column(
            "key_id", sa.Integer(), sa.ForeignKey("api_keys.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("detail", JSON_TYPE, nullable=False),
    )
    op.create_index("ix_audit_log_key_id", "audit_log", ["key_id"])
    op.create_index("ix_audit_log_target", "audit_log", ["target"])


def downgrade() -> None:
    # The audit log first: its key_id points at api_keys.
    op.drop_index("ix_audit_log_target", table_name="audit_log")
    op.drop_index("ix_audit_log_key_id", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("api_keys")
