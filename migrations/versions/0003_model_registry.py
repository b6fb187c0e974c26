"""Model registry: provenance of each model's training data, and which model drives
each control loop over time.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03

Written by hand like 0001; it must match `api/orm.py` (TwinModel's provenance columns,
Run.last_step_at, ModelActivation), which tests/test_migrations.py checks.

* `models` gains the provenance of the training data as columns (not JSON) so that
  "which models were trained on this dataset" is an indexed query. They are nullable:
  models registered before this revision have no recorded provenance.
* `runs.last_step_at`: the server time a control loop's latest step was stored; a loop
  whose steps stop is reported stale from it.
* `model_activations`: the history of the model active on each loop, read newest first
  per loop, and by model ("where is this model active").

Loops already stored get their first activation (the model they started with), so
every loop has a history after the upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROVENANCE_COLUMNS = ("dataset_sha256", "dataset_rows", "data_start_s", "data_end_s", "data_source")


def upgrade() -> None:
    op.add_column("models", sa.Column("dataset_sha256", sa.String(64), nullable=True))
    op.add_column("models", sa.Column("dataset_rows", sa.Integer(), nullable=True))
    op.add_column("models", sa.Column("data_start_s", sa.Float(), nullable=True))
    op.add_column("models", sa.Column("data_end_s", sa.Float(), nullable=True))
    op.add_column("models", sa.Column("data_source", sa.String(1000), nullable=True))
    op.create_index("ix_models_dataset_sha256", "models", ["dataset_sha256"])
    op.add_column("runs", sa.Column("last_step_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "model_activations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "previous_model_id",
            sa.Integer(),
            sa.ForeignKey("models.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
    )
    op.create_index("ix_model_activations_run", "model_activations", ["run_id", "activated_at"])
    op.create_index("ix_model_activations_model_id", "model_activations", ["model_id"])
    op.execute(
        "INSERT INTO model_activations (run_id, model_id, activated_at, actor, reason) "
        "SELECT id, model_id, started_at, 'migration 0003', 'loop started' FROM runs "
        "WHERE kind = 'control' AND model_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_model_activations_model_id", table_name="model_activations")
    op.drop_index("ix_model_activations_run", table_name="model_activations")
    op.drop_table("model_activations")
    op.drop_column("runs", "last_step_at")
    op.drop_index("ix_models_dataset_sha256", table_name="models")
    # SQLite drops a column natively (3.35+): no table rebuild, which with foreign keys
    # on would cascade-delete the rows that point at the rebuilt table.
    for column in reversed(PROVENANCE_COLUMNS):
        op.drop_column("models", column)
