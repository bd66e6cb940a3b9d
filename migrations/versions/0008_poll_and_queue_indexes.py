"""Indexes for the queue's estimates and for coalescing single jobs: queued jobs by
age (a queued job's position; the oldest queued single jobs a worker claims together)
and recently finished jobs (the completion rate behind Retry-After); and when a job's
picture was last asked for (at most one pending render per job), and the cough gate's
threshold a job was judged by (beside its cough_score in the results CSV)

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at"])
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spectrogram_asked_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("cough_threshold", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("cough_threshold")
        batch_op.drop_column("spectrogram_asked_at")
    op.drop_index("ix_jobs_finished_at", table_name="jobs")
    op.drop_index("ix_jobs_status_created", table_name="jobs")
