"""Several models side by side: a batch's model and where a rescored batch came from;
which served model is a worker's default and which deployment (queue) serves it

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("model_id", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("model_version", sa.String(length=64), nullable=True))
        # No foreign key: the first batch may be deleted, the link is only a record.
        batch.add_column(sa.Column("rescored_from", sa.String(length=36), nullable=True))
    with op.batch_alter_table("served_models") as batch:
        batch.add_column(
            sa.Column("is_default", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("queue", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("served_models") as batch:
        batch.drop_column("queue")
        batch.drop_column("is_default")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("rescored_from")
        batch.drop_column("model_version")
        batch.drop_column("model_id")
