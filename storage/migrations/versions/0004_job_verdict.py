"""The overall verdict on the job row: fused once, when the job finishes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Done jobs from before this revision were reported with the only rule there was then,
"any FAKE"; they get that verdict here, computed by a copy of the rule as it stood, so that
nothing reported earlier changes and the label filter finds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("verdict_label", sa.String(length=16), nullable=True))
    op.add_column("jobs", sa.Column("verdict", sa.JSON(), nullable=True))
    op.create_index(
        "ix_jobs_verdict_created", "jobs", ["verdict_label", "created_at", "id"], unique=False
    )
    _backfill()


def _any_fake(votes: list[tuple[str, float]]) -> dict[str, Any]:
    """processor.verdict.overall_verdict's any_fake rule as of revision 0003."""
    if not votes:
        return {"label": "ABSTAIN", "fake_probability": None, "rule": "any_fake"}
    labels = {label for label, _ in votes}
    label = "FAKE" if "FAKE" in labels else "UNCERTAIN" if "UNCERTAIN" in labels else "REAL"
    return {"label": label, "fake_probability": max(p for _, p in votes), "rule": "any_fake"}


def _backfill() -> None:
    conn = op.get_bind()
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String()),
        sa.column("state", sa.String()),
        sa.column("verdict_label", sa.String()),
        sa.column("verdict", sa.JSON()),
    )
    results = sa.table(
        "results",
        sa.column("job_id", sa.String()),
        sa.column("label", sa.String()),
        sa.column("fake_probability", sa.Float()),
    )
    votes: dict[str, list[tuple[str, float]]] = {
        job_id: [] for (job_id,) in conn.execute(sa.select(jobs.c.id).where(jobs.c.state == "done"))
    }
    rows = conn.execute(
        sa.select(results.c.job_id, results.c.label, results.c.fake_probability)
        .join(jobs, jobs.c.id == results.c.job_id)
        .where(
            jobs.c.state == "done",
            results.c.label != "ABSTAIN",
            results.c.fake_probability.is_not(None),
        )
    )
    for job_id, label, probability in rows:
        votes[job_id].append((label, probability))
    updates = [
        {"job": job_id, "label": verdict["label"], "doc": verdict}
        for job_id, verdict in ((j, _any_fake(v)) for j, v in votes.items())
    ]
    if updates:
        # One statement, many parameter sets: the upgrade holds the start-up lock.
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == sa.bindparam("job"))
            .values(
                verdict_label=sa.bindparam("label"),
                verdict=sa.bindparam("doc", type_=sa.JSON()),
            ),
            updates,
        )


def downgrade() -> None:
    op.drop_index("ix_jobs_verdict_created", table_name="jobs")
    # Plain ALTER TABLE DROP COLUMN (SQLite >= 3.35): a batch copy of "jobs" would trip the
    # foreign keys that results and deliveries hold on it.
    op.drop_column("jobs", "verdict")
    op.drop_column("jobs", "verdict_label")
