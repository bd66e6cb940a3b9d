"""A finished batch's evaluation, computed once by a worker and stored

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_evaluations",
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("variant", sa.String(length=80), nullable=False),
        sa.Column("format", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("body", sa.JSON(), nullable=True),
        sa.Column("roc_png", sa.LargeBinary(), nullable=True),
        sa.Column("calibration_png", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_batch_evaluations_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "variant", name=op.f("pk_batch_evaluations")),
    )


def downgrade() -> None:
    op.drop_table("batch_evaluations")
