"""Indexes for the queue's estimates and for coalescing single jobs: queued jobs by
age (a queued job's position; the oldest queued single jobs a worker claims together)
and recently finished jobs (the completion rate behind Retry-After)

Revision ID: 0008
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at"])
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_finished_at", table_name="jobs")
    op.drop_index("ix_jobs_status_created", table_name="jobs")
