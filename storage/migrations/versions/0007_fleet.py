"""Many hosts: where a job's bytes live, what each worker can run, webhooks that never give up.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

``jobs.blob_url``/``blob_etag``: the object holding the job's bytes when they are in object
storage (content-addressed under the configured prefix, or the original S3 object read with
``If-Match: blob_etag``), so a worker on any host can fetch them.
``jobs.origin``: the host whose files the job came from; only that host moves them to done/ or
failed/, and a worker elsewhere never takes another host's missing file for a broken video.
``jobs.detector_set``: the job's detectors as one sorted, comma-joined string, so a claim can
take only jobs whose detectors the claiming worker has loaded.
``workers.capabilities``/``dead_after_s``: what a worker has loaded (detectors, weights ids,
device, version), and how long after its last heartbeat any process may declare it dead.
``webhook_deliveries.dead_at`` and ``webhook_attempts``: a delivery that kept failing for the
whole retry period is parked, not dropped, and every attempt is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("blob_url", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("blob_etag", sa.String(length=255), nullable=True))
    op.add_column("jobs", sa.Column("origin", sa.String(length=255), nullable=True))
    op.add_column("jobs", sa.Column("detector_set", sa.Text(), nullable=False, server_default=""))
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String()),
        sa.column("detectors", sa.JSON()),
        sa.column("detector_set", sa.Text()),
    )
    conn = op.get_bind()
    # Only jobs that can still be claimed need the set; finished ones keep "".
    for job_id, detectors in conn.execute(
        sa.select(jobs.c.id, jobs.c.detectors).where(sa.text("state IN ('queued', 'running')"))
    ):
        conn.execute(
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(detector_set=",".join(sorted(set(detectors or []))))
        )
    op.add_column("workers", sa.Column("capabilities", sa.JSON(), nullable=True))
    op.add_column("workers", sa.Column("dead_after_s", sa.Double(), nullable=True))
    op.add_column("webhook_deliveries", sa.Column("dead_at", TIMESTAMP, nullable=True))
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("attempted_at", TIMESTAMP, nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("elapsed_s", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index(
        "ix_webhook_attempts_delivery", "webhook_attempts", ["delivery_id", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_attempts_delivery", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_column("webhook_deliveries", "dead_at")
    op.drop_column("workers", "dead_after_s")
    op.drop_column("workers", "capabilities")
    op.drop_column("jobs", "detector_set")
    op.drop_column("jobs", "blob_etag")
    op.drop_column("jobs", "blob_url")
    op.drop_column("jobs", "origin")
