"""People's reviews of verdicts, and the job listings the desk shows beside them.

A review is only ever added, never changed: the ``reviews`` table is the audit trail, and a job's
current review is its newest row. This module is the queue's companion in the same package: it
writes through the queue's transaction helper (so a busy database is retried the same way) and
reads jobs through the queue's own loader, so a job looks the same wherever it is shown.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    exists,
    func,
    insert,
    or_,
    select,
)

from storage.deliveries import outbox_rows
from storage.models import REVIEW_DECISIONS, Job, Review, WebhookDelivery
from storage.queue import VERDICT_LABELS, JobQueue, JobState, JobView

# The review-state filter: no review yet, or the current review's decision.
UNREVIEWED = "unreviewed"
REVIEW_STATES = (UNREVIEWED, *REVIEW_DECISIONS)
# Verdicts a person should look at first: the machine suspects the clip.
_SUSPECT = ("FAKE", "UNCERTAIN")
_EXPORT_CHUNK = 1000


@dataclass(frozen=True)
class ReviewView:
    """One review as recorded."""

    id: int
    job_id: str
    decision: str  # confirmed_fake | confirmed_real | second_look
    note: str
    reviewer: str  # the API key's name, or "anonymous" when the API needs no key
    created_at: dt.datetime


@dataclass(frozen=True)
class JobFilter:
    """What the desk's list narrows jobs to; every field optional."""

    state: JobState | None = None
    label: str | None = None  # the stored overall verdict of a done job
    review: str | None = None  # one of REVIEW_STATES
    source_kind: str | None = None
    detector: str | None = None
    since: dt.datetime | None = None  # created at or after
    until: dt.datetime | None = None  # created before
    # A piece of the source reference (ignoring case), or with ``sha256_prefix`` the start of
    # the video's sha256: a person types either into one search box.
    search: str | None = None
    sha256_prefix: str | None = None  # lowercase hex


@dataclass(frozen=True)
class ExportRow:
    """A reviewed job as the CSV export writes it."""

    job_id: str
    sha256: str
    source_kind: str
    source_ref: str
    output_path: str | None
    verdict: dict[str, Any] | None
    review: ReviewView


class Reviews:
    """Reviews stored beside the job queue."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def add(
        self,
        job_id: str,
        decision: str,
        note: str,
        reviewer: str,
        *,
        at: dt.datetime,
        webhook_urls: list[str] | None = None,
        webhook_payload: dict[str, Any] | None = None,
    ) -> ReviewView:
        """Record a review (the job must exist), with its webhook deliveries in the same
        transaction, so a recorded review is never left unannounced."""
        if decision not in REVIEW_DECISIONS:
            raise ValueError(f"unknown review decision {decision!r}")
        row = {
            "job_id": job_id,
            "decision": decision,
            "note": note,
            "reviewer": reviewer,
            "created_at": at,
        }

        def work(conn: Connection) -> int:
            review_id = conn.execute(insert(Review).values(row).returning(Review.id)).scalar_one()
            deliveries = outbox_rows(
                job_id, "job.reviewed", webhook_payload or {}, webhook_urls or [], at
            )
            if deliveries:
                conn.execute(insert(WebhookDelivery), deliveries)
            return int(review_id)

        review_id = self.queue._write(work)
        return ReviewView(review_id, job_id, decision, note, reviewer, at)

    def history(self, job_id: str) -> list[ReviewView]:
        """Every review of the job, newest (the current one) first."""
        stmt = select(Review).where(Review.job_id == job_id).order_by(Review.id.desc())
        with self.queue._read() as session:
            return [_view(r) for r in session.scalars(stmt)]

    def current(self, job_ids: list[str]) -> dict[str, ReviewView]:
        """The current review of each of these jobs that has one."""
        if not job_ids:
            return {}
        newest = (
            select(func.max(Review.id)).where(Review.job_id.in_(job_ids)).group_by(Review.job_id)
        )
        with self.queue._read() as session:
            rows = session.scalars(select(Review).where(Review.id.in_(newest)))
            return {r.job_id: _view(r) for r in rows}

    def jobs(self, where: JobFilter, *, limit: int, before: str | None = None) -> list[JobView]:
        """Jobs newest first, narrowed by ``where``; ``before`` is a job id cursor (keyset:
        the page continues after that job by creation time, ties broken by id)."""
        stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        if before is not None:
            cursor = select(Job.created_at).where(Job.id == before).scalar_subquery()
            stmt = stmt.where(
                or_(Job.created_at < cursor, and_(Job.created_at == cursor, Job.id < before))
            )
        return self.queue._jobs(self._narrow(stmt, where))

    def review_queue(self, limit: int) -> list[JobView]:
        """What a person should judge next: unreviewed FAKE verdicts, then unreviewed
        UNCERTAIN ones (newest first in each), then jobs someone asked a second look for."""
        first: list[JobView] = []
        # One query per label rather than one ordered by label: each walks the
        # (verdict_label, created_at, id) index newest first and stops at the limit, where a
        # single query sorted every suspect job (0.4 s at 100k jobs on SQLite).
        for label in _SUSPECT:
            if len(first) >= limit:
                return first
            first += self.queue._jobs(
                select(Job)
                .where(Job.state == JobState.DONE, Job.verdict_label == label, _unreviewed())
                .order_by(Job.created_at.desc(), Job.id.desc())
                .limit(limit - len(first))
            )
        if len(first) >= limit:
            return first
        again = self._narrow(
            select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit - len(first)),
            JobFilter(review="second_look"),
        )
        return first + self.queue._jobs(again)

    def export(self) -> Iterator[ExportRow]:
        """Every job with a current review, oldest review first, read in chunks so a long
        history is never held in memory at once."""
        newest = select(func.max(Review.id)).group_by(Review.job_id).scalar_subquery()
        stmt = (
            select(Review, Job.video_sha256, Job.source_kind, Job.source_ref, Job.output_path)
            .add_columns(Job.verdict)
            .join(Job, Job.id == Review.job_id)
            .where(Review.id.in_(newest))
            .order_by(Review.id)
            .execution_options(yield_per=_EXPORT_CHUNK)
        )
        with self.queue._read() as session:
            for review, sha, kind, ref, output, verdict in session.execute(stmt):
                yield ExportRow(review.job_id, sha, kind, ref, output, verdict, _view(review))

    def _narrow(self, stmt: Select[Job], where: JobFilter) -> Select[Job]:
        if where.state is not None:
            stmt = stmt.where(Job.state == where.state)
        if where.label is not None:
            if where.label not in VERDICT_LABELS:
                raise ValueError(f"unknown verdict label {where.label!r}")
            stmt = stmt.where(Job.state == JobState.DONE, Job.verdict_label == where.label)
        if where.review is not None:
            stmt = stmt.where(_in_review_state(where.review))
        if where.source_kind is not None:
            stmt = stmt.where(Job.source_kind == where.source_kind)
        if where.detector is not None:
            stmt = stmt.where(self.queue._submitted_for(where.detector))
        if where.since is not None:
            stmt = stmt.where(Job.created_at >= where.since)
        if where.until is not None:
            stmt = stmt.where(Job.created_at < where.until)
        if where.search:
            found = func.lower(Job.source_ref).contains(where.search.lower(), autoescape=True)
            if where.sha256_prefix:
                found = or_(
                    found, Job.video_sha256.startswith(where.sha256_prefix, autoescape=True)
                )
            stmt = stmt.where(found)
        return stmt


def _unreviewed() -> ColumnElement[bool]:
    return ~exists(select(Review.id).where(Review.job_id == Job.id))


def _in_review_state(review_state: str) -> ColumnElement[bool]:
    """The job has no review (``unreviewed``), or its newest review has this decision."""
    if review_state == UNREVIEWED:
        return _unreviewed()
    if review_state not in REVIEW_DECISIONS:
        raise ValueError(f"unknown review state {review_state!r}")
    newest = (
        select(Review.decision)
        .where(Review.job_id == Job.id)
        .order_by(Review.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return newest == review_state


def _view(r: Review) -> ReviewView:
    return ReviewView(r.id, r.job_id, r.decision, r.note, r.reviewer, r.created_at)
