"""Each scored clip's trivial features, for the cohort evaluation's baselines (issue
25): its share of 32 ms frames within 30 dB of its loudest and its RMS level (dBFS),
computed where the worker decodes the audio, so that the baselines outlive the audio
(retention deletes it). Its duration is ``duration_s`` already.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("active_share", sa.Float(), nullable=True))
        batch.add_column(sa.Column("loudness_db", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("loudness_db")
        batch.drop_column("active_share")
