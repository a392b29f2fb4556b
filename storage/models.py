"""The database schema as SQLAlchemy declarative models.

Three tables: ``videos`` (one row per distinct content hash), ``jobs`` (the queue itself, one row
per submission of a video) and ``results`` (one row per detector per finished job). Every
timestamp is stored and read back as an aware UTC datetime. Any change here needs a new migration
in ``storage/migrations/versions``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    CHAR,
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so that later batch migrations on SQLite can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware datetime stored as UTC. SQLite keeps no offset, so values are written as naive
    UTC there and marked UTC again when read; Postgres uses ``timestamptz``."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: storage wants aware UTC datetimes")
        value = value.astimezone(dt.UTC)
        # SQLite compares the stored text, so every value must be written in one form.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        dt.datetime: UTCDateTime(),
        float: Double(),
        str: Text(),
    }


class Video(Base):
    __tablename__ = "videos"

    sha256: Mapped[str] = mapped_column(CHAR(64), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    container: Mapped[str | None] = mapped_column(String(64))
    codec: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None]
    height: Mapped[int | None]
    fps: Mapped[float | None]
    duration_s: Mapped[float | None]
    first_seen: Mapped[dt.datetime]


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"state IN {JOB_STATES!r}", name="state"),
        # claim: runnable jobs by state, then priority; run_after filters queued ones.
        Index("ix_jobs_claim", "state", "priority", "run_after"),
        # list: newest first, optionally per state, with the (created_at, id) cursor.
        Index("ix_jobs_state_created", "state", "created_at", "id"),
        Index("ix_jobs_created", "created_at", "id"),
        # list ?label=: done jobs by their stored overall verdict, newest first.
        Index("ix_jobs_verdict_created", "verdict_label", "created_at", "id"),
        # the finalisation sweep: finished jobs whose files have not been placed yet.
        Index(
            "ix_jobs_unfinalized",
            "state",
            "finished_at",
            sqlite_where=text("finalized_at IS NULL"),
            postgresql_where=text("finalized_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    video_sha256: Mapped[str] = mapped_column(CHAR(64), ForeignKey("videos.sha256"), index=True)
    source_kind: Mapped[str] = mapped_column(String(16))
    source_ref: Mapped[str]
    inbox: Mapped[str | None] = mapped_column(String(255))
    work_path: Mapped[str | None]
    output_path: Mapped[str | None]
    detectors: Mapped[list[str]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int]
    attempts: Mapped[int]
    max_attempts: Mapped[int]
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires: Mapped[dt.datetime | None]
    run_after: Mapped[dt.datetime]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None]
    cached: Mapped[bool]
    # Its last worker died holding other jobs too: run it alone before crashes count (0005).
    solo: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The inbox file's size and mtime when its sha256 was taken (None for other sources).
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    file_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    # A process placing the finished job's file holds it until then (0005).
    finalizing_until: Mapped[dt.datetime | None]
    # The overall verdict, fused by the rule configured when the job finished, kept as it was
    # then: a later change of rule or weights does not rewrite what was already reported.
    verdict_label: Mapped[str | None] = mapped_column(String(16))
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Where any host can fetch the bytes: an object URL (s3://bucket/key), read with
    # If-Match: blob_etag when set, so a replaced object is never judged under the old hash (0007).
    blob_url: Mapped[str | None]
    blob_etag: Mapped[str | None] = mapped_column(String(255))
    # The host (``Config.host_name``) whose files these are: only it places them (0007).
    origin: Mapped[str | None] = mapped_column(String(255))
    # ``detectors`` sorted and comma-joined: a worker claims only jobs it can run (0007).
    detector_set: Mapped[str] = mapped_column(default="", server_default="")
    created_at: Mapped[dt.datetime]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    finalized_at: Mapped[dt.datetime | None]

    results: Mapped[list[JobResult]] = relationship(
        foreign_keys="JobResult.job_id", order_by="JobResult.id", lazy="raise"
    )


class JobResult(Base):
    __tablename__ = "results"
    # One result per detector per job, whatever a retrying worker does.
    __table_args__ = (UniqueConstraint("job_id", "detector"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id"))
    detector: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    weights_id: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(16))
    fake_probability: Mapped[float | None]
    threshold: Mapped[float]
    frame_scores: Mapped[list[dict[str, float]]] = mapped_column(JSON)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    elapsed_s: Mapped[float]
    cached_from_job: Mapped[str | None] = mapped_column(String(64), ForeignKey("jobs.id"))
    created_at: Mapped[dt.datetime]


class WorkerRow(Base):
    """A worker process that heartbeats while it runs; its leases are in ``jobs``."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    role: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[dt.datetime]
    heartbeat_at: Mapped[dt.datetime]
    stopped_at: Mapped[dt.datetime | None]
    # What it has loaded: {"detectors": {key: {"version", "weights_id"}}, "device", "version"}.
    capabilities: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Silent this long after its last heartbeat, any process may declare it dead (0007).
    dead_after_s: Mapped[float | None]


class WebhookDelivery(Base):
    """One callback to send (an outbox row): kept, delivered or not (a delivery that failed
    for the whole retry period is parked, never dropped), so a restart loses no notification
    and a slow receiver never holds up the worker."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "delivered_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id"))
    url: Mapped[str]
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int]
    next_attempt_at: Mapped[dt.datetime | None]
    last_status: Mapped[int | None]
    last_error: Mapped[str | None]
    created_at: Mapped[dt.datetime]
    delivered_at: Mapped[dt.datetime | None]
    # Failed for the whole retry period: parked, listed and re-sent by hand (0007).
    dead_at: Mapped[dt.datetime | None]


class WebhookAttempt(Base):
    """One try at sending a delivery: what the receiver answered, or why nothing came back."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id"))
    attempted_at: Mapped[dt.datetime]
    status: Mapped[int | None]
    error: Mapped[str | None]
    elapsed_s: Mapped[float]


REVIEW_DECISIONS = ("confirmed_fake", "confirmed_real", "second_look")


class Review(Base):
    """A person's judgement of a job's verdict. Rows are only ever added: a change of mind is a
    new row, so the table is the audit trail and a job's current review is its newest row."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint(f"decision IN {REVIEW_DECISIONS!r}", name="decision"),
        # a job's newest review, and the review-state filters of the desk's list.
        Index("ix_reviews_job", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id"))
    decision: Mapped[str] = mapped_column(String(16))
    note: Mapped[str]
    reviewer: Mapped[str] = mapped_column(String(255))  # the API key's name, or "anonymous"
    created_at: Mapped[dt.datetime]
