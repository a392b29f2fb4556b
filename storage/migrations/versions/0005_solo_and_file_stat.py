"""Crash isolation, the file's stat at hashing, and an index for finalisation.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

``solo``: the job's last worker died while it held other jobs too, so which video killed it is
unknown; the job runs alone next time and only then do crashes count against its attempts.
``file_size``/``file_mtime_ns``: the inbox file's stat when its sha256 was taken, so a file that
changed afterwards (a writer that paused, then went on) is judged again, not recorded under the
hash of bytes that are no longer there.
``finalizing_until``: a process placing a finished job's file holds it until then, so the
worker that ended the job and another process's finalize sweep never move one file twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("solo", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("jobs", sa.Column("file_size", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("file_mtime_ns", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("finalizing_until", sa.DateTime(timezone=True), nullable=True))
    # Finished jobs whose files are not yet in done/ or failed/: swept every few seconds, so
    # the index holds only the few open ones, not the whole history.
    op.create_index(
        "ix_jobs_unfinalized",
        "jobs",
        ["state", "finished_at"],
        unique=False,
        sqlite_where=sa.text("finalized_at IS NULL"),
        postgresql_where=sa.text("finalized_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_unfinalized", table_name="jobs")
    op.drop_column("jobs", "finalizing_until")
    op.drop_column("jobs", "file_mtime_ns")
    op.drop_column("jobs", "file_size")
    op.drop_column("jobs", "solo")
