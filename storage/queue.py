"""The durable job queue: jobs claimed by workers under time-limited leases.

A worker that dies lets its leases run out and another worker reclaims the jobs; sooner, any
process that finds it silent past its own ``dead_after_s`` ends them (``expire_dead``). Every
change a worker makes to a job it claimed is conditional on still holding a live lease on it, so a
worker that lost its lease can never overwrite the work of the one that took the job over.

Times come from Python's UTC clock, never the database's; hosts sharing a Postgres queue need
clocks in sync to well within a lease and a worker's ``dead_after_s``.

Failures: on SQLite, writers serialize on the database's write lock (``BEGIN IMMEDIATE`` waits up
to the busy timeout) and a write that still finds it locked is rerun a few times; if it stays
locked, ``StorageBusy`` is raised, as for a Postgres deadlock or serialization failure that
persists. A database that cannot be reached raises ``StorageUnavailable``. Both are
``StorageError`` and leave nothing half-written: every method is one transaction.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import random
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Executable,
    Select,
    and_,
    cast,
    exists,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import InstrumentedAttribute, Session, selectinload

from storage.db import write_engine
from storage.errors import StorageBusy, StorageUnavailable
from storage.models import Job, JobResult, Video, WorkerRow

# detectors.base.Label.ABSTAIN: the detector could not judge the video (no face, an error), which
# is not a verdict to reuse; find_cached skips such results.
_ABSTAIN = "ABSTAIN"
VERDICT_LABELS = ("REAL", "FAKE", "UNCERTAIN", _ABSTAIN)
# Stored results of one video looked at for a reusable one: the newest few are enough, and a
# video resubmitted thousands of times must not make every lookup read them all.
_CACHE_LOOKBACK = 20

# Retries of a whole write transaction that found the database busy, with jittered back-off.
_BUSY_ATTEMPTS = 4
_BUSY_BACKOFF_S = 0.05
# Postgres SQLSTATEs worth retrying: serialization failure, deadlock, lock not available.
_PG_BUSY_STATES = frozenset({"40001", "40P01", "55P03"})
# Enough ids per IN (...) for speed, well below every driver's limit on bound parameters.
_IN_CHUNK = 500
# A claim lists every subset of the worker's detectors (2^n - 1 of them, 255 for 8 keys);
# a worker with more loaded is matched on the jobs' JSON lists instead.
_SUBSET_KEYS = 8

_T = TypeVar("_T")


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class NewResult:
    """A detector's result to store with a completed job."""

    detector: str
    version: str
    weights_id: str  # sha256 of the weights file or "dummy"
    label: str  # REAL/FAKE/UNCERTAIN/ABSTAIN
    fake_probability: float | None
    threshold: float
    frame_scores: list[dict[str, float]]  # [{"t": seconds, "p": prob}, ...]
    details: dict[str, Any]
    elapsed_s: float
    cached_from_job: str | None = None  # job id whose stored result was reused


@dataclass(frozen=True)
class StoredResult:
    job_id: str
    detector: str
    version: str
    weights_id: str
    label: str
    fake_probability: float | None
    threshold: float
    frame_scores: list[dict[str, float]]
    details: dict[str, Any]
    elapsed_s: float
    cached_from_job: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class VideoView:
    sha256: str
    size_bytes: int
    container: str | None
    codec: str | None
    width: int | None
    height: int | None
    fps: float | None
    duration_s: float | None
    first_seen: dt.datetime


@dataclass(frozen=True)
class JobView:
    id: str
    video_sha256: str
    source_kind: str  # "folder", "upload", "s3", "cli"
    source_ref: str  # e.g. the original path
    inbox: str | None  # name of the inbox folder config, when source_kind == "folder"
    work_path: str | None  # where the file lies while the job is open
    output_path: str | None  # where the file was (or will be) moved when finished
    detectors: list[str]
    state: JobState
    priority: int
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires: dt.datetime | None
    run_after: dt.datetime
    error_code: str | None
    error_message: str | None
    cached: bool  # every result was reused from an earlier job
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    finalized_at: dt.datetime | None  # files moved and sidecar written
    solo: bool = False  # runs alone after a crash that took other jobs down with it
    # (size, mtime_ns) of the inbox file when its sha256 was taken; None for other sources.
    file_stat: tuple[int, int] | None = None
    # The overall verdict as fused when the job finished (None unless done).
    verdict: dict[str, Any] | None = None
    results: list[StoredResult] = field(default_factory=list)
    blob_url: str | None = None  # the object any host can fetch the bytes from
    blob_etag: str | None = None  # read with If-Match: this, when set
    origin: str | None = None  # the host whose files these are (None: any)


@dataclass(frozen=True)
class WorkerView:
    """A worker process as last heard of."""

    id: str
    host: str
    pid: int
    role: str
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    stopped_at: dt.datetime | None
    alive: bool  # heartbeat recent enough and not stopped
    held_jobs: list[str]
    # {"detectors": {key: {"version", "weights_id", "num_frames"}}, "device", ...}; None: none.
    capabilities: dict[str, Any] | None = None
    dead_after_s: float | None = None  # None: the reader's default applies


@dataclass(frozen=True)
class DeadWorker:
    """A worker ``expire_dead`` declared dead."""

    id: str
    host: str
    pid: int
    heartbeat_at: dt.datetime  # its last
    leases_ended: int


@dataclass(frozen=True)
class Claimed:
    """A job this worker now holds a lease on."""

    id: str
    video_sha256: str
    work_path: str | None
    source_ref: str
    detectors: list[str]
    attempts: int  # including this one
    solo: bool = False  # to be run with no other job held (see ``JobQueue.claim``)
    blob_url: str | None = None
    blob_etag: str | None = None
    origin: str | None = None


class JobQueue:
    """The durable job queue: one table of jobs claimed under leases."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = write_engine(engine)

    def enqueue(
        self,
        *,
        job_id: str,
        sha256: str,
        size_bytes: int,
        source_kind: str,
        source_ref: str,
        detectors: list[str],
        inbox: str | None = None,
        work_path: str | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        file_stat: tuple[int, int] | None = None,
        blob_url: str | None = None,
        blob_etag: str | None = None,
        origin: str | None = None,
    ) -> bool:
        """Insert the video row (if new) and the job row in one transaction. Idempotent on
        ``job_id``: returns False (and changes nothing) when the job already exists.
        ``file_stat`` is the (size, mtime_ns) of ``work_path`` when ``sha256`` was taken;
        ``blob_url`` (and ``blob_etag``) name the object any host can fetch the bytes from."""

        def work(conn: Connection) -> None:
            now = _now()
            video = {"sha256": sha256, "size_bytes": size_bytes, "first_seen": now}
            _insert_if_absent(conn, Video.sha256, video)
            job = {
                "id": job_id,
                "video_sha256": sha256,
                "source_kind": source_kind,
                "source_ref": source_ref,
                "inbox": inbox,
                "work_path": work_path,
                "detectors": list(detectors),
                "detector_set": detector_set(detectors),
                "blob_url": blob_url,
                "blob_etag": blob_etag,
                "origin": origin,
                "state": JobState.QUEUED,
                "priority": priority,
                "attempts": 0,
                "max_attempts": max_attempts,
                "run_after": now,
                "cached": False,
                "created_at": now,
                "file_size": file_stat[0] if file_stat else None,
                "file_mtime_ns": file_stat[1] if file_stat else None,
            }
            if not _insert_if_absent(conn, Job.id, job):
                raise _JobExists  # rolls back the video row too

        try:
            self._write(work)
        except _JobExists:
            return False
        return True

    def claim(
        self,
        worker_id: str,
        limit: int,
        lease_s: float,
        *,
        busy: bool = False,
        detectors: Collection[str] | None = None,
    ) -> list[Claimed]:
        """Take up to ``limit`` runnable jobs, highest priority then oldest first. Runnable:
        state queued with run_after <= now, or state running with an expired lease (reclaimed
        from a dead worker). Sets state running, lease_owner, lease_expires = now + lease_s,
        attempts += 1, started_at. SQLite: BEGIN IMMEDIATE + UPDATE ... RETURNING; Postgres:
        SELECT ... FOR UPDATE SKIP LOCKED.

        A worker that dies takes its whole batch down, and which video killed it is unknown. So
        a job whose lease ran out while it shared its worker is not charged for it: it gets the
        attempt back and becomes ``solo``. A solo job is handed only to a worker that holds
        nothing else (``busy`` False), alone, and while one waits busy workers take nothing new,
        so it soon runs by itself; only a crash then counts, and a solo job that has used up its
        attempts is failed with error_code 'max_attempts' instead of being returned.

        ``detectors``: the keys this worker has loaded; only jobs whose detectors are all among
        them are taken, solo ones included (a solo job it cannot run does not hold it back).
        None takes any job. A job no live worker can run stays queued (see ``stranded``).
        """
        if limit <= 0:
            return []
        fits = _runnable_with(self.engine.dialect.name, detectors)

        def work(conn: Connection) -> list[Claimed]:
            now = _now()
            expired = and_(Job.state == JobState.RUNNING, Job.lease_expires <= now)
            conn.execute(
                update(Job)
                .where(_ids_in(conn, select(Job.id).where(expired, Job.solo.is_(False))))
                .values(
                    state=JobState.QUEUED,
                    lease_owner=None,
                    lease_expires=None,
                    attempts=Job.attempts - 1,
                    solo=True,
                    run_after=now,
                )
            )
            # Every attempt so far died with its worker while running alone (killed, out of
            # memory): stop here rather than let a poisonous video take down workers forever.
            exhausted = select(Job.id).where(expired, Job.attempts >= Job.max_attempts)
            conn.execute(
                update(Job)
                .where(_ids_in(conn, exhausted))
                .values(
                    state=JobState.FAILED,
                    error_code="max_attempts",
                    error_message="the worker was lost on the last allowed attempt, with this "
                    "video running alone",
                    lease_expires=None,
                    finished_at=now,
                )
            )
            runnable = or_(
                and_(Job.state == JobState.QUEUED, Job.run_after <= now),
                and_(expired, Job.attempts < Job.max_attempts),
            )
            order = (Job.priority.desc(), Job.created_at, Job.id)
            solo = (
                select(Job.id).where(runnable, fits, Job.solo.is_(True)).order_by(*order).limit(1)
            )
            if conn.execute(solo).first() is not None:
                if busy:
                    return []
                chosen = solo
            else:
                chosen = select(Job.id).where(runnable, fits).order_by(*order).limit(limit)
            rows = conn.execute(
                update(Job)
                .where(_ids_in(conn, chosen))
                .values(
                    state=JobState.RUNNING,
                    lease_owner=worker_id,
                    lease_expires=now + dt.timedelta(seconds=lease_s),
                    attempts=Job.attempts + 1,
                    started_at=now,
                )
                .returning(
                    Job.id,
                    Job.video_sha256,
                    Job.work_path,
                    Job.source_ref,
                    Job.detectors,
                    Job.attempts,
                    Job.priority,
                    Job.created_at,
                    Job.solo,
                    Job.blob_url,
                    Job.blob_etag,
                    Job.origin,
                )
            ).all()
            return [
                Claimed(
                    id=r.id,
                    video_sha256=r.video_sha256,
                    work_path=r.work_path,
                    source_ref=r.source_ref,
                    detectors=list(r.detectors),
                    attempts=r.attempts,
                    solo=r.solo,
                    blob_url=r.blob_url,
                    blob_etag=r.blob_etag,
                    origin=r.origin,
                )
                # RETURNING comes back in no particular order.
                for r in sorted(rows, key=lambda r: (-r.priority, r.created_at, r.id))
            ]

        return self._write(work)

    def renew(self, worker_id: str, job_ids: list[str], lease_s: float) -> set[str]:
        """Extend the leases this worker still holds; returns the ids still held. A lease past
        its expiry is lost even if nobody has reclaimed the job yet."""
        if not job_ids:
            return set()

        def work(conn: Connection) -> set[str]:
            now = _now()
            held = conn.scalars(
                update(Job)
                .where(Job.id.in_(job_ids), _holds(worker_id, now))
                .values(lease_expires=now + dt.timedelta(seconds=lease_s))
                .returning(Job.id)
            )
            return set(held)

        return self._write(work)

    def complete(
        self, job_id: str, worker_id: str, results: list[NewResult], verdict: Mapping[str, Any]
    ) -> bool:
        """Store results and the overall ``verdict`` (the fused document, with its ``label``)
        and set state done, only if ``worker_id`` holds a live lease on the job (conditional
        update). ``cached`` is set when every result has cached_from_job. Returns False (and
        stores nothing) when the lease was lost."""
        if verdict.get("label") not in VERDICT_LABELS:
            raise ValueError(f"verdict label must be one of {VERDICT_LABELS}, got {verdict!r}")

        def work(conn: Connection) -> bool:
            now = _now()
            done = conn.execute(
                update(Job)
                .where(Job.id == job_id, _holds(worker_id, now))
                .values(
                    state=JobState.DONE,
                    lease_expires=None,
                    error_code=None,
                    error_message=None,
                    cached=bool(results) and all(r.cached_from_job for r in results),
                    verdict_label=verdict["label"],
                    verdict=dict(verdict),
                    finished_at=now,
                )
            )
            if done.rowcount != 1:
                return False
            if results:
                conn.execute(
                    insert(JobResult),
                    [
                        {
                            "job_id": job_id,
                            "detector": r.detector,
                            "version": r.version,
                            "weights_id": r.weights_id,
                            "label": r.label,
                            "fake_probability": r.fake_probability,
                            "threshold": r.threshold,
                            "frame_scores": r.frame_scores,
                            "details": r.details,
                            "elapsed_s": r.elapsed_s,
                            "cached_from_job": r.cached_from_job,
                            "created_at": now,
                        }
                        for r in results
                    ],
                )
            return True

        return self._write(work)

    def fail(self, job_id: str, worker_id: str, code: str, message: str) -> bool:
        """Permanent failure, conditional on the lease like ``complete``."""

        def work(conn: Connection) -> bool:
            return _fail_held(conn, job_id, worker_id, code, message, _now())

        return self._write(work)

    def retry_later(
        self, job_id: str, worker_id: str, code: str, message: str, delay_s: float
    ) -> bool:
        """Retryable failure: back to queued with run_after = now + delay_s, error recorded;
        if attempts >= max_attempts, fail permanently with ``code`` instead. Conditional."""

        def work(conn: Connection) -> bool:
            now = _now()
            requeued = conn.execute(
                update(Job)
                .where(Job.id == job_id, _holds(worker_id, now), Job.attempts < Job.max_attempts)
                .values(
                    state=JobState.QUEUED,
                    lease_owner=None,
                    lease_expires=None,
                    run_after=now + dt.timedelta(seconds=delay_s),
                    error_code=code,
                    error_message=message,
                )
            )
            # Not requeued: either out of attempts (then this fails it) or the lease is lost.
            return requeued.rowcount == 1 or _fail_held(conn, job_id, worker_id, code, message, now)

        return self._write(work)

    def release(self, worker_id: str, job_ids: list[str]) -> None:
        """Graceful shutdown: put held jobs back to queued and give back the attempt."""
        if not job_ids:
            return

        def work(conn: Connection) -> None:
            conn.execute(
                update(Job)
                .where(
                    Job.id.in_(job_ids),
                    Job.state == JobState.RUNNING,
                    Job.lease_owner == worker_id,
                )
                .values(
                    state=JobState.QUEUED,
                    lease_owner=None,
                    lease_expires=None,
                    attempts=Job.attempts - 1,
                )
            )

        self._write(work)

    def expire_leases(self, worker_id: str) -> int:
        """A worker known to be dead (its process is gone): end its leases now instead of when
        they run out, and mark it stopped. Unlike ``release`` this is a crash, and ``claim``
        charges it as one, so a video that kills its worker still meets ``max_attempts``.
        Returns the leases ended."""

        def work(conn: Connection) -> int:
            now = _now()
            ended = _end_leases(conn, worker_id, now)
            conn.execute(
                update(WorkerRow)
                .where(WorkerRow.id == worker_id, WorkerRow.stopped_at.is_(None))
                .values(stopped_at=now)
            )
            return ended

        return self._write(work)

    def expire_dead(
        self, default_dead_after_s: float, *, spare: str | None = None
    ) -> list[DeadWorker]:
        """Declare dead every worker not stopped whose last heartbeat is older than its own
        ``dead_after_s`` (``default_dead_after_s`` for a row that records none): end its leases
        now and mark it stopped, a crash as in ``expire_leases``. ``spare`` (the caller's own id)
        is never declared dead. A worker that beats again after all (it was only paused) just
        finds its leases lost. Only a read unless somebody looks dead."""
        with self._read() as session:
            rows = session.execute(
                select(
                    WorkerRow.id,
                    WorkerRow.host,
                    WorkerRow.pid,
                    WorkerRow.heartbeat_at,
                    WorkerRow.dead_after_s,
                ).where(WorkerRow.stopped_at.is_(None))
            ).all()
        now = _now()
        suspects = [
            r
            for r in rows
            if r.id != spare
            and not _beating(r.heartbeat_at, r.dead_after_s, default_dead_after_s, now)
        ]
        if not suspects:
            return []

        def work(conn: Connection) -> list[DeadWorker]:
            now = _now()
            dead: list[DeadWorker] = []
            for r in suspects:
                # Unchanged since it was read: a heartbeat that came in between saves it.
                marked = conn.execute(
                    update(WorkerRow)
                    .where(
                        WorkerRow.id == r.id,
                        WorkerRow.stopped_at.is_(None),
                        WorkerRow.heartbeat_at == r.heartbeat_at,
                    )
                    .values(stopped_at=now)
                )
                if marked.rowcount == 1:
                    ended = _end_leases(conn, r.id, now)
                    dead.append(DeadWorker(r.id, r.host, r.pid, r.heartbeat_at, ended))
            return dead

        return self._write(work)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job; False when it is not queued."""

        def work(conn: Connection) -> bool:
            cancelled = conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED)
                .values(state=JobState.CANCELLED, finished_at=_now())
            )
            return cancelled.rowcount == 1

        return self._write(work)

    def retry(self, job_id: str) -> bool:
        """Put a failed or cancelled job back in the queue as new: attempts 0, no error, no lease,
        no destination (it is finalized again when it ends). Its id, source and creation time
        stay. False when it is not failed or cancelled."""

        def work(conn: Connection) -> bool:
            final = (JobState.FAILED, JobState.CANCELLED)
            # Jobs that ended before migration 0007 have no detector set, and a claim needs it.
            detectors = conn.scalar(select(Job.detectors).where(Job.id == job_id)) or []
            requeued = conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_(final))
                .values(
                    state=JobState.QUEUED,
                    detector_set=detector_set(detectors),
                    attempts=0,
                    lease_owner=None,
                    lease_expires=None,
                    run_after=_now(),
                    error_code=None,
                    error_message=None,
                    started_at=None,
                    finished_at=None,
                    finalized_at=None,
                    finalizing_until=None,
                    output_path=None,
                )
            )
            return requeued.rowcount == 1

        return self._write(work)

    def find_cached(
        self,
        sha256: str,
        detector: str,
        version: str,
        weights_id: str,
        final_abstentions: Collection[str] = (),
    ) -> StoredResult | None:
        """The newest reusable stored result for these bytes, detector, version and weights,
        from a done job. An ABSTAIN is reusable only when its ``details.reason`` is one of
        ``final_abstentions`` (a fact about the bytes, such as "no content credentials"), never
        when it records an error."""
        conditions = [
            Job.video_sha256 == sha256,
            Job.state == JobState.DONE,
            JobResult.detector == detector,
            JobResult.version == version,
            JobResult.weights_id == weights_id,
        ]
        if not final_abstentions:
            conditions.append(JobResult.label != _ABSTAIN)
        with self._read() as session:
            rows = session.scalars(
                select(JobResult)
                .join(Job, JobResult.job_id == Job.id)
                .where(*conditions)
                .order_by(JobResult.created_at.desc(), JobResult.id.desc())
                .limit(_CACHE_LOOKBACK)
            )
            for row in rows:
                if row.label != _ABSTAIN or row.details.get("reason") in final_abstentions:
                    return _stored_result(row)
            return None

    def update_video(
        self,
        sha256: str,
        *,
        container: str,
        codec: str,
        width: int,
        height: int,
        fps: float,
        duration_s: float,
    ) -> None:
        """Record what the decoder learnt about the video."""
        self._execute(
            update(Video)
            .where(Video.sha256 == sha256)
            .values(
                container=container,
                codec=codec,
                width=width,
                height=height,
                fps=fps,
                duration_s=duration_s,
            )
        )

    def set_output_path(self, job_id: str, path: str) -> None:
        """Remember where a finished job's file is being moved (before moving it)."""
        self._execute(update(Job).where(Job.id == job_id).values(output_path=path))

    def claim_finalize(self, job_id: str, hold_s: float) -> bool:
        """Take the right to place an ended job's file for ``hold_s``: True for one caller at a
        time, and only while the job is done, failed or cancelled and not yet finalized."""

        def work(conn: Connection) -> bool:
            now = _now()
            taken = conn.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.state.in_([JobState.DONE, JobState.FAILED, JobState.CANCELLED]),
                    Job.finalized_at.is_(None),
                    or_(Job.finalizing_until.is_(None), Job.finalizing_until <= now),
                )
                .values(finalizing_until=now + dt.timedelta(seconds=hold_s))
            )
            return taken.rowcount == 1

        return self._write(work)

    def release_finalize(self, job_id: str) -> None:
        """Give up the hold ``claim_finalize`` took, after a failed attempt."""
        self._execute(update(Job).where(Job.id == job_id).values(finalizing_until=None))

    def mark_finalized(self, job_id: str) -> None:
        """The file is in done/ or failed/ and its sidecar is written."""
        self._execute(update(Job).where(Job.id == job_id).values(finalized_at=_now()))

    def unfinalized(self, finished_before: dt.datetime | None = None) -> list[JobView]:
        """Done, failed or cancelled jobs whose files have not been finalized yet, oldest
        finished first; with ``finished_before``, only those that finished before then."""
        stmt = select(Job).where(
            Job.state.in_([JobState.DONE, JobState.FAILED, JobState.CANCELLED]),
            Job.finalized_at.is_(None),
        )
        if finished_before is not None:
            stmt = stmt.where(Job.finished_at < finished_before)
        return self._jobs(stmt.order_by(Job.finished_at, Job.id))

    def get(self, job_id: str) -> JobView | None:
        """One job with its results."""
        jobs = self._jobs(select(Job).where(Job.id == job_id))
        return jobs[0] if jobs else None

    def get_video(self, sha256: str) -> VideoView | None:
        """One video by content hash."""
        with self._read() as session:
            video = session.get(Video, sha256)
            if video is None:
                return None
            return VideoView(
                sha256=video.sha256,
                size_bytes=video.size_bytes,
                container=video.container,
                codec=video.codec,
                width=video.width,
                height=video.height,
                fps=video.fps,
                duration_s=video.duration_s,
                first_seen=video.first_seen,
            )

    def jobs_for_video(self, sha256: str) -> list[JobView]:
        """Every job for these bytes, newest first, with results."""
        return self._jobs(
            select(Job)
            .where(Job.video_sha256 == sha256)
            .order_by(Job.created_at.desc(), Job.id.desc())
        )

    def job_ids_starting(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` job ids that start with ``prefix`` (lowercase hex), in order."""
        return self._ids_starting(Job.id, prefix, limit)

    def video_hashes_starting(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` video sha256s that start with ``prefix`` (lowercase hex), in order."""
        return self._ids_starting(Video.sha256, prefix, limit)

    def _ids_starting(
        self, column: InstrumentedAttribute[str], prefix: str, limit: int
    ) -> list[str]:
        # A range rather than LIKE: it uses the primary key's index on both databases. Every
        # id is lowercase hex, and "g" sorts after every hex digit.
        with self._read() as session:
            return list(
                session.scalars(
                    select(column)
                    .where(column >= prefix, column < prefix + "g")
                    .order_by(column)
                    .limit(limit)
                )
            )

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (all states present, zero included)."""
        counts = {state.value: 0 for state in JobState}
        with self._read() as session:
            rows = session.execute(select(Job.state, func.count()).group_by(Job.state))
            counts.update({state: n for state, n in rows})
        return counts

    def known_job_ids(self, job_ids: list[str]) -> set[str]:
        """Which of these ids exist (used by crash recovery of the work area)."""
        known: set[str] = set()
        with self._read() as session:
            for chunk in _chunks(job_ids, _IN_CHUNK):
                known.update(session.scalars(select(Job.id).where(Job.id.in_(chunk))))
        return known

    def heartbeat(
        self,
        worker_id: str,
        host: str,
        pid: int,
        role: str,
        *,
        capabilities: Mapping[str, Any] | None = None,
        dead_after_s: float | None = None,
    ) -> bool:
        """Record that this worker is alive (the first call registers it), with what it can
        run (``capabilities``: {"detectors": {key: {"version", "weights_id"}}, "device",
        "version"}) and after how long a silence others may declare it dead. True when it had
        been marked stopped meanwhile (declared dead, see ``expire_dead``): its leases are lost.
        """

        def beat(conn: Connection) -> bool:
            now = _now()
            # Locked on Postgres, so that a concurrent expire_dead is seen either way.
            stopped = conn.execute(
                select(WorkerRow.stopped_at).where(WorkerRow.id == worker_id).with_for_update()
            ).first()
            values: dict[str, Any] = {"heartbeat_at": now, "stopped_at": None}
            if capabilities is not None:
                values["capabilities"] = dict(capabilities)
            if dead_after_s is not None:
                values["dead_after_s"] = dead_after_s
            if stopped is not None:
                conn.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(values))
                return stopped.stopped_at is not None
            _insert_if_absent(
                conn,
                WorkerRow.id,
                {
                    **values,
                    "id": worker_id,
                    "host": host,
                    "pid": pid,
                    "role": role,
                    "started_at": now,
                },
            )
            return False

        return self._write(beat)

    def worker_stopped(self, worker_id: str) -> None:
        """A clean shutdown: the worker no longer counts as alive."""
        self._execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(stopped_at=_now()))

    def workers(self, alive_within_s: float) -> list[WorkerView]:
        """Every known worker, newest heartbeat first, with the jobs it holds leases on. Alive:
        not stopped, and heard from within its own ``dead_after_s`` (``alive_within_s`` for a
        row that records none)."""
        now = _now()
        with self._read() as session:
            rows = session.scalars(select(WorkerRow).order_by(WorkerRow.heartbeat_at.desc()))
            held: dict[str, list[str]] = {}
            for job_id, owner in session.execute(
                select(Job.id, Job.lease_owner).where(_holds_any(now))
            ):
                held.setdefault(owner or "", []).append(job_id)
            return [
                WorkerView(
                    id=w.id,
                    host=w.host,
                    pid=w.pid,
                    role=w.role,
                    started_at=w.started_at,
                    heartbeat_at=w.heartbeat_at,
                    stopped_at=w.stopped_at,
                    alive=w.stopped_at is None
                    and _beating(w.heartbeat_at, w.dead_after_s, alive_within_s, now),
                    held_jobs=sorted(held.get(w.id, [])),
                    capabilities=w.capabilities,
                    dead_after_s=w.dead_after_s,
                )
                for w in rows
            ]

    def stranded(self, alive_within_s: float) -> dict[str, int]:
        """Queued jobs that no live worker can run (each lacks one of their detectors), counted
        per ``detector_set``. They stay queued until a worker with those detectors starts. A
        live worker that publishes no capabilities (an older version) takes any job, and then
        nothing is stranded. ``alive_within_s`` as in ``workers``."""
        now = _now()
        with self._read() as session:
            live = [
                w.capabilities
                for w in session.execute(
                    select(
                        WorkerRow.heartbeat_at, WorkerRow.dead_after_s, WorkerRow.capabilities
                    ).where(WorkerRow.stopped_at.is_(None))
                )
                if _beating(w.heartbeat_at, w.dead_after_s, alive_within_s, now)
            ]
            loaded: list[set[str]] = []
            for caps in live:
                detectors = caps.get("detectors") if isinstance(caps, dict) else None
                if not isinstance(detectors, dict):
                    return {}
                loaded.append(set(detectors))
            queued = session.execute(
                select(Job.detector_set, func.count())
                .where(Job.state == JobState.QUEUED)
                .group_by(Job.detector_set)
                .order_by(Job.detector_set)
            )
            return {
                keys: n
                for keys, n in queued
                if not any(set(keys.split(",")) <= have for have in loaded)
            }

    def _write(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` in one write transaction, rerunning it while the database is busy."""
        with _storage_errors():
            attempt = 1
            while True:
                try:
                    with self._writer.begin() as conn:
                        return work(conn)
                except DBAPIError as exc:
                    if attempt == _BUSY_ATTEMPTS or not _is_busy(exc):
                        raise
                time.sleep(_BUSY_BACKOFF_S * 2**attempt * random.uniform(0.5, 1.5))
                attempt += 1

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with _storage_errors(), Session(self.engine) as session:
            yield session

    def _execute(self, stmt: Executable) -> None:
        self._write(lambda conn: conn.execute(stmt))

    def _jobs(self, stmt: Select[Job]) -> list[JobView]:
        with self._read() as session:
            jobs = session.scalars(stmt.options(selectinload(Job.results)))
            return [_job_view(job) for job in jobs]

    # Last, so that ``list`` in the annotations above still means the builtin.
    def list(
        self,
        *,
        state: JobState | None = None,
        limit: int = 50,
        before: str | None = None,
        label: str | None = None,
        detector: str | None = None,
        source_kind: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        finished_since: dt.datetime | None = None,
        oldest_first: bool = False,
        source_contains: str | None = None,
    ) -> list[JobView]:
        """Newest first (oldest first with ``oldest_first``); ``before`` is a job id cursor:
        the page continues with the jobs that follow it in that order (by creation time, ties
        broken by id), so pages stay stable while jobs are added. An unknown cursor gives an
        empty page.

        Filters: ``label`` is the overall verdict stored with a done job (FAKE, UNCERTAIN,
        REAL or ABSTAIN); ``detector``, a key the job was submitted for; ``source_contains``, a
        piece of the source reference (file path, upload name, object key), ignoring case;
        ``since``/``until``, creation time (inclusive/exclusive); ``finished_since``, the
        finish time (inclusive)."""
        newest = not oldest_first
        stmt = select(Job).limit(limit)
        if newest:
            stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc())
        else:
            stmt = stmt.order_by(Job.created_at, Job.id)
        if state is not None:
            stmt = stmt.where(Job.state == state)
        if before is not None:
            cursor = select(Job.created_at).where(Job.id == before).scalar_subquery()
            if newest:
                after_cursor = or_(
                    Job.created_at < cursor, and_(Job.created_at == cursor, Job.id < before)
                )
            else:
                after_cursor = or_(
                    Job.created_at > cursor, and_(Job.created_at == cursor, Job.id > before)
                )
            stmt = stmt.where(after_cursor)
        if label is not None:
            if label not in VERDICT_LABELS:
                raise ValueError(f"unknown verdict label {label!r}")
            stmt = stmt.where(Job.state == JobState.DONE, Job.verdict_label == label)
        if detector is not None:
            stmt = stmt.where(self._submitted_for(detector))
        if source_kind is not None:
            stmt = stmt.where(Job.source_kind == source_kind)
        if since is not None:
            stmt = stmt.where(Job.created_at >= since)
        if until is not None:
            stmt = stmt.where(Job.created_at < until)
        if finished_since is not None:
            stmt = stmt.where(Job.finished_at >= finished_since)
        if source_contains is not None:
            needle = source_contains.lower()
            stmt = stmt.where(func.lower(Job.source_ref).contains(needle, autoescape=True))
        return self._jobs(stmt)

    def _submitted_for(self, detector: str) -> ColumnElement[bool]:
        """The job's JSON list of detector keys holds ``detector``."""
        if self.engine.dialect.name == "postgresql":
            return cast(Job.detectors, postgresql.JSONB).contains([detector])
        keys = func.json_each(Job.detectors).table_valued("value")
        return exists(select(keys.c.value).where(keys.c.value == detector))


def detector_set(detectors: Collection[str]) -> str:
    """The canonical form of a set of detector keys, as stored in ``jobs.detector_set``."""
    return ",".join(sorted(set(detectors)))


def detector_sets_within(detectors: Collection[str]) -> list[str]:
    """Every non-empty subset of ``detectors`` in ``detector_set`` form: the jobs a worker with
    these detectors can run are exactly those whose ``detector_set`` is one of them."""
    keys = sorted(set(detectors))
    return [",".join(c) for n in range(1, len(keys) + 1) for c in itertools.combinations(keys, n)]


def _runnable_with(dialect: str, detectors: Collection[str] | None) -> ColumnElement[bool]:
    """The job's detectors are all among ``detectors`` (None: any job)."""
    if detectors is None:
        return true()
    keys = sorted(set(detectors))
    if len(keys) <= _SUBSET_KEYS:
        return Job.detector_set.in_(detector_sets_within(keys))
    # Past the cap the list of subsets grows too long to send: compare the JSON list instead,
    # which reads every runnable row's detectors rather than one column.
    if dialect == "postgresql":
        within: ColumnElement[bool] = cast(Job.detectors, postgresql.JSONB).contained_by(keys)
        return within
    job_keys = func.json_each(Job.detectors).table_valued("value")
    return ~exists(select(job_keys.c.value).where(job_keys.c.value.not_in(keys)))


class _JobExists(Exception):
    """enqueue found the job id taken."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _holds(worker_id: str, now: dt.datetime) -> ColumnElement[bool]:
    """The job is running under a live lease owned by ``worker_id``."""
    return and_(
        Job.state == JobState.RUNNING, Job.lease_owner == worker_id, Job.lease_expires > now
    )


def _beating(
    heartbeat_at: dt.datetime, dead_after_s: float | None, default_s: float, now: dt.datetime
) -> bool:
    """Heard from within the worker's own ``dead_after_s`` (``default_s`` when it has none)."""
    limit = dead_after_s if dead_after_s is not None else default_s
    return (now - heartbeat_at).total_seconds() <= limit


def _end_leases(conn: Connection, worker_id: str, now: dt.datetime) -> int:
    """End every lease ``worker_id`` holds, as though they ran out just now."""
    ended = conn.execute(
        update(Job)
        .where(Job.state == JobState.RUNNING, Job.lease_owner == worker_id)
        .values(lease_expires=now)
    )
    return int(ended.rowcount)


def _holds_any(now: dt.datetime) -> ColumnElement[bool]:
    """The job is running under some live lease."""
    return and_(Job.state == JobState.RUNNING, Job.lease_expires > now)


def _fail_held(
    conn: Connection, job_id: str, worker_id: str, code: str, message: str, now: dt.datetime
) -> bool:
    failed = conn.execute(
        update(Job)
        .where(Job.id == job_id, _holds(worker_id, now))
        .values(
            state=JobState.FAILED,
            lease_expires=None,
            error_code=code,
            error_message=message,
            finished_at=now,
        )
    )
    return failed.rowcount == 1


def _ids_in(conn: Connection, ids: Select[str]) -> ColumnElement[bool]:
    """``Job.id IN (ids)``, with the rows locked first on Postgres.

    SKIP LOCKED lets concurrent claimers pass over each other's rows instead of queueing behind
    them; SQLite needs nothing, the transaction already holds the database's write lock.
    """
    if conn.dialect.name == "postgresql":
        return Job.id.in_(list(conn.scalars(ids.with_for_update(skip_locked=True))))
    return Job.id.in_(ids)


def _insert_if_absent(
    conn: Connection, key: InstrumentedAttribute[str], values: dict[str, Any]
) -> bool:
    """INSERT ... ON CONFLICT (key) DO NOTHING; True when the row was inserted."""
    # RETURNING rather than rowcount, which SQLAlchemy leaves unset for an INSERT on psycopg.
    if conn.dialect.name == "postgresql":
        pg = (
            postgresql.insert(key.class_)
            .values(values)
            .on_conflict_do_nothing(index_elements=[key])
        )
        return conn.execute(pg.returning(key)).first() is not None
    lite = sqlite.insert(key.class_).values(values).on_conflict_do_nothing(index_elements=[key])
    return conn.execute(lite.returning(key)).first() is not None


@contextmanager
def _storage_errors() -> Iterator[None]:
    """Report the database's operational failures as StorageError, which callers expect and
    can retry; anything else (IntegrityError, ...) is a bug and stays as it is."""
    try:
        yield
    except DBAPIError as exc:
        if _is_busy(exc):
            raise StorageBusy(f"{StorageBusy.__doc__} ({exc.orig})") from exc
        if isinstance(exc, OperationalError | InterfaceError):
            raise StorageUnavailable(f"{StorageUnavailable.__doc__} ({exc.orig})") from exc
        raise


def _is_busy(exc: DBAPIError) -> bool:
    """The statement lost a race for a lock and the transaction can simply be run again."""
    if isinstance(exc.orig, sqlite3.Error):
        return exc.orig.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
    return getattr(exc.orig, "sqlstate", None) in _PG_BUSY_STATES


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _stored_result(r: JobResult) -> StoredResult:
    return StoredResult(
        job_id=r.job_id,
        detector=r.detector,
        version=r.version,
        weights_id=r.weights_id,
        label=r.label,
        fake_probability=r.fake_probability,
        threshold=r.threshold,
        frame_scores=r.frame_scores,
        details=r.details,
        elapsed_s=r.elapsed_s,
        cached_from_job=r.cached_from_job,
        created_at=r.created_at,
    )


def _job_view(job: Job) -> JobView:
    return JobView(
        id=job.id,
        video_sha256=job.video_sha256,
        source_kind=job.source_kind,
        source_ref=job.source_ref,
        inbox=job.inbox,
        work_path=job.work_path,
        output_path=job.output_path,
        detectors=list(job.detectors),
        state=JobState(job.state),
        priority=job.priority,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        lease_owner=job.lease_owner,
        lease_expires=job.lease_expires,
        run_after=job.run_after,
        error_code=job.error_code,
        error_message=job.error_message,
        cached=job.cached,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        finalized_at=job.finalized_at,
        solo=job.solo,
        file_stat=(
            (job.file_size, job.file_mtime_ns)
            if job.file_size is not None and job.file_mtime_ns is not None
            else None
        ),
        verdict=job.verdict,
        results=[_stored_result(r) for r in job.results],
        blob_url=job.blob_url,
        blob_etag=job.blob_etag,
        origin=job.origin,
    )
