"""The job database and queue, run against SQLite and Postgres alike (see tests/conftest.py)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import threading
import time
import types
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, event, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

import storage.queue
from processor.worker import gone_here
from storage.db import downgrade, make_engine, ping, upgrade, write_engine
from storage.errors import StorageBusy, StorageUnavailable
from storage.models import Base, Job
from storage.queue import Claimed, JobQueue, JobState, NewResult

# The overall verdict stored with a completed job; these tests do not look at it.
VERDICT = {"label": "REAL", "fake_probability": 0.1, "rule": "any_fake"}

LEASE_S = 0.2  # short leases for the tests that let one run out
LONG_LEASE_S = 600.0  # leases that must not run out during a test


def sha(n: int) -> str:
    return f"{n:064x}"


def add(q: JobQueue, job_id: str, video: int = 1, **kwargs: object) -> None:
    assert q.enqueue(
        job_id=job_id,
        sha256=sha(video),
        size_bytes=1000 + video,
        source_kind="folder",
        source_ref=f"/inbox/{job_id}.mp4",
        detectors=["d1", "d2"],
        **kwargs,  # type: ignore[arg-type]
    )


def result(detector: str = "d1", **kwargs: object) -> NewResult:
    fields: dict[str, object] = {
        "detector": detector,
        "version": "1",
        "weights_id": "w1",
        "label": "FAKE",
        "fake_probability": 0.9,
        "threshold": 0.5,
        "frame_scores": [{"t": 0.0, "p": 0.8}, {"t": 1.0, "p": 0.95}],
        "details": {"faces": 1},
        "elapsed_s": 0.25,
    }
    fields.update(kwargs)
    return NewResult(**fields)  # type: ignore[arg-type]


def claim_one(q: JobQueue, worker: str, lease_s: float = LONG_LEASE_S) -> Claimed:
    claimed = q.claim(worker, 1, lease_s)
    assert len(claimed) == 1
    return claimed[0]


def let_lease_expire() -> None:
    time.sleep(LEASE_S + 0.05)


def state(q: JobQueue, job_id: str) -> JobState:
    job = q.get(job_id)
    assert job is not None
    return job.state


@pytest.fixture
def queue(engine: Engine) -> JobQueue:
    upgrade(engine)
    return JobQueue(engine)


def test_migration_matches_models(engine: Engine) -> None:
    upgrade(engine)
    upgrade(engine)  # a second run is a no-op
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        # The comparison does see a difference when there is one.
        changed = MetaData()
        for table in Base.metadata.sorted_tables:
            table.to_metadata(changed)
        changed.tables["jobs"].append_column(Column("extra", Integer))
        diff = compare_metadata(MigrationContext.configure(conn), changed)
        assert [(d[0], d[3].name) for d in diff] == [("add_column", "extra")]


def test_upgrade_to_0004_gives_earlier_done_jobs_the_any_fake_verdict(engine: Engine) -> None:
    upgrade(engine)
    queue = JobQueue(engine)
    outcomes = {
        "fake": [result("d1", label="REAL", fake_probability=0.1), result("d2")],
        "real": [result("d1", label="REAL", fake_probability=0.3), result("d2", label="REAL")],
        "abstain": [result("d1", label="ABSTAIN", fake_probability=None)],
    }
    for n, job_id in enumerate([*outcomes, "queued"]):
        add(queue, job_id, video=n)
    for job_id, results in outcomes.items():
        assert claim_one(queue, "w1").id == job_id
        assert queue.complete(job_id, "w1", results, {"label": "UNCERTAIN"})
    downgrade(engine, "0003")  # drops the stored verdicts: the database as 0003 left it
    upgrade(engine)

    expected = {
        "fake": {"label": "FAKE", "fake_probability": 0.9, "rule": "any_fake"},
        "real": {"label": "REAL", "fake_probability": 0.9, "rule": "any_fake"},
        "abstain": {"label": "ABSTAIN", "fake_probability": None, "rule": "any_fake"},
    }
    for job_id, verdict in expected.items():
        job = queue.get(job_id)
        assert job is not None
        assert job.verdict == verdict, job_id
        assert [j.id for j in queue.list(label=verdict["label"])] == [job_id]
    queued = queue.get("queued")
    assert queued is not None
    assert queued.verdict is None


def test_enqueue_is_idempotent_on_job_id(queue: JobQueue) -> None:
    add(queue, "j1", video=1, inbox="main", work_path="/work/j1.mp4", priority=2)
    first_seen = queue.get_video(sha(1))
    assert first_seen is not None

    # Same id again, even for other bytes: refused, and nothing is written.
    assert not queue.enqueue(
        job_id="j1",
        sha256=sha(2),
        size_bytes=5,
        source_kind="cli",
        source_ref="/elsewhere.mp4",
        detectors=["d3"],
    )
    assert queue.get_video(sha(2)) is None
    job = queue.get("j1")
    assert job is not None
    assert (job.video_sha256, job.source_kind, job.source_ref) == (
        sha(1),
        "folder",
        "/inbox/j1.mp4",
    )
    assert (job.inbox, job.work_path, job.priority, job.detectors) == (
        "main",
        "/work/j1.mp4",
        2,
        ["d1", "d2"],
    )
    assert (job.state, job.attempts, job.max_attempts, job.cached) == (JobState.QUEUED, 0, 3, False)

    # Another job for the same bytes shares the video row.
    add(queue, "j2", video=1)
    assert queue.get_video(sha(1)) == first_seen
    assert queue.counts()["queued"] == 2


def test_claim_takes_highest_priority_then_oldest(queue: JobQueue) -> None:
    # Ids run against age so that ordering by id could not pass for ordering by age.
    for job_id, priority in [("z", 0), ("y", 5), ("x", 0), ("w", 5)]:
        add(queue, job_id, priority=priority)

    first = queue.claim("w1", 3, LONG_LEASE_S)
    assert [c.id for c in first] == ["y", "w", "z"]
    assert first[0] == Claimed(
        id="y",
        video_sha256=sha(1),
        work_path=None,
        source_ref="/inbox/y.mp4",
        detectors=["d1", "d2"],
        attempts=1,
    )
    assert [c.id for c in queue.claim("w2", 3, LONG_LEASE_S)] == ["x"]
    assert queue.claim("w3", 3, LONG_LEASE_S) == []

    job = queue.get("y")
    assert job is not None
    assert (job.state, job.lease_owner, job.attempts) == (JobState.RUNNING, "w1", 1)
    assert job.started_at is not None
    assert job.lease_expires is not None
    assert job.lease_expires > job.started_at


def test_concurrent_claims_hand_out_each_job_once(queue: JobQueue, engine: Engine) -> None:
    for i in range(200):
        add(queue, f"job{i:03d}", video=i)
    url = engine.url.render_as_string(hide_password=False)
    start = threading.Barrier(4)

    def worker(n: int) -> list[str]:
        own_engine = make_engine(url)
        try:
            q = JobQueue(own_engine)
            start.wait()
            taken: list[str] = []
            while batch := q.claim(f"w{n}", 1 + len(taken) % 5, LONG_LEASE_S):
                for job in batch:
                    assert q.complete(job.id, f"w{n}", [result()], VERDICT)
                    taken.append(job.id)
            return taken
        finally:
            own_engine.dispose()

    with ThreadPoolExecutor(4) as pool:
        taken = [job for batch in pool.map(worker, range(4)) for job in batch]

    assert Counter(taken) == Counter(f"job{i:03d}" for i in range(200))
    assert queue.counts()["done"] == 200
    assert queue.claim("late", 10, LONG_LEASE_S) == []


def test_live_lease_is_not_reclaimed(queue: JobQueue) -> None:
    add(queue, "j1")
    claim_one(queue, "w1")
    assert queue.claim("w2", 5, LONG_LEASE_S) == []
    assert queue.renew("w1", ["j1"], LONG_LEASE_S) == {"j1"}
    assert queue.renew("w2", ["j1"], LONG_LEASE_S) == set()


def test_expired_lease_is_reclaimed_and_the_old_worker_is_locked_out(queue: JobQueue) -> None:
    add(queue, "j1", max_attempts=3)
    assert claim_one(queue, "w1", LEASE_S).attempts == 1
    let_lease_expire()

    # Expired but not yet reclaimed: the lease is lost all the same.
    assert not queue.complete("j1", "w1", [result()], VERDICT)
    assert queue.renew("w1", ["j1"], LONG_LEASE_S) == set()

    # The first crash is not charged: the job is tried alone first.
    reclaimed = claim_one(queue, "w2")
    assert (reclaimed.id, reclaimed.attempts, reclaimed.solo) == ("j1", 1, True)
    assert not queue.complete("j1", "w1", [result()], VERDICT)
    assert not queue.fail("j1", "w1", "x", "y")
    assert not queue.retry_later("j1", "w1", "x", "y", 0)
    job = queue.get("j1")
    assert job is not None
    assert (job.state, job.lease_owner, job.results) == (JobState.RUNNING, "w2", [])

    assert queue.complete("j1", "w2", [result()], VERDICT)
    job = queue.get("j1")
    assert job is not None
    assert job.state == JobState.DONE
    assert [r.job_id for r in job.results] == ["j1"]


def test_a_crash_charges_only_the_video_that_caused_it(queue: JobQueue) -> None:
    add(queue, "good", max_attempts=2)
    add(queue, "poison", max_attempts=2)
    add(queue, "later", max_attempts=2)
    assert [c.id for c in queue.claim("w1", 2, LEASE_S)] == ["good", "poison"]
    let_lease_expire()  # w1 died with both: which one killed it is unknown

    # Nobody is charged; the two run alone from now on, and while one waits a busy worker
    # takes nothing, so that an idle one soon runs it by itself.
    assert queue.claim("busy", 5, LONG_LEASE_S, busy=True) == []
    [alone] = queue.claim("w2", 5, LEASE_S)
    assert (alone.id, alone.attempts, alone.solo) == ("good", 1, True)
    assert queue.complete("good", "w2", [result()], VERDICT)

    for attempt in (1, 2):  # the poison video kills its worker each time, now alone
        [alone] = queue.claim(f"w{2 + attempt}", 5, LEASE_S)
        assert (alone.id, alone.attempts) == ("poison", attempt)
        let_lease_expire()

    # Only the culprit ends max_attempts; the rest of the queue runs batched again.
    assert [c.id for c in queue.claim("w5", 5, LONG_LEASE_S)] == ["later"]
    poison = queue.get("poison")
    assert poison is not None
    assert (poison.state, poison.error_code, poison.attempts) == (
        JobState.FAILED,
        "max_attempts",
        2,
    )
    assert poison.finished_at is not None
    assert poison.lease_expires is None
    assert state(queue, "good") == JobState.DONE


def test_complete_stores_results_once(queue: JobQueue) -> None:
    add(queue, "j1")
    add(queue, "j2")
    add(queue, "j3")
    claim_one(queue, "w1")
    claim_one(queue, "w1")
    claim_one(queue, "w1")

    stored = [result("d1"), result("d2", label="REAL", fake_probability=None, details={})]
    assert queue.complete("j1", "w1", stored, VERDICT)
    assert not queue.complete("j1", "w1", stored, VERDICT)  # already done: no second set of results
    job = queue.get("j1")
    assert job is not None
    assert (job.state, job.cached, job.lease_expires) == (JobState.DONE, False, None)
    assert [(r.detector, r.label, r.fake_probability) for r in job.results] == [
        ("d1", "FAKE", 0.9),
        ("d2", "REAL", None),
    ]
    assert job.results[0].frame_scores == [{"t": 0.0, "p": 0.8}, {"t": 1.0, "p": 0.95}]
    assert (job.results[0].details, job.results[0].elapsed_s) == ({"faces": 1}, 0.25)

    # Every result reused: the job is marked cached; one reused out of two is not.
    assert queue.complete("j2", "w1", [result("d1", cached_from_job="j1")], VERDICT)
    assert queue.complete("j3", "w1", [result("d1", cached_from_job="j1"), result("d2")], VERDICT)
    cached = {job_id: queue.get(job_id) for job_id in ("j2", "j3")}
    assert {k: v.cached for k, v in cached.items() if v} == {"j2": True, "j3": False}


def test_duplicate_detector_in_one_completion_stores_nothing(queue: JobQueue) -> None:
    add(queue, "j1")
    claim_one(queue, "w1")
    with pytest.raises(IntegrityError):
        queue.complete("j1", "w1", [result("d1"), result("d1")], VERDICT)
    job = queue.get("j1")
    assert job is not None
    assert (job.state, job.results) == (JobState.RUNNING, [])


def test_fail_is_permanent_and_conditional(queue: JobQueue) -> None:
    add(queue, "j1")
    claim_one(queue, "w1")
    assert not queue.fail("j1", "w2", "corrupt_video", "not mine")
    assert queue.fail("j1", "w1", "corrupt_video", "no frame at 3.2 s")
    assert not queue.fail("j1", "w1", "corrupt_video", "again")
    job = queue.get("j1")
    assert job is not None
    assert (job.state, job.error_code, job.error_message) == (
        JobState.FAILED,
        "corrupt_video",
        "no frame at 3.2 s",
    )
    assert job.finished_at is not None
    assert queue.claim("w1", 5, LONG_LEASE_S) == []


def test_retry_later_requeues_until_attempts_run_out(queue: JobQueue) -> None:
    add(queue, "later", max_attempts=3)
    add(queue, "soon", max_attempts=2)
    claim_one(queue, "w1")  # "later" (older)
    claim_one(queue, "w1")  # "soon"

    before = dt.datetime.now(dt.UTC)
    assert not queue.retry_later("later", "w2", "transient", "not mine", 0)
    assert queue.retry_later("later", "w1", "device_oom", "out of memory", 3600)
    job = queue.get("later")
    assert job is not None
    assert (job.state, job.lease_owner, job.lease_expires) == (JobState.QUEUED, None, None)
    assert (job.error_code, job.error_message, job.attempts) == ("device_oom", "out of memory", 1)
    assert job.run_after >= before + dt.timedelta(seconds=3600)

    assert queue.retry_later("soon", "w1", "transient", "disk hiccup", 0)
    assert [c.id for c in queue.claim("w1", 5, LONG_LEASE_S)] == ["soon"]  # "later" must wait
    assert queue.retry_later("soon", "w1", "transient", "disk hiccup again", 0)
    job = queue.get("soon")
    assert job is not None
    assert (job.state, job.error_code, job.attempts) == (JobState.FAILED, "transient", 2)
    assert job.error_message == "disk hiccup again"
    assert job.finished_at is not None


def test_retry_later_becomes_runnable_after_the_delay(queue: JobQueue) -> None:
    add(queue, "j1")
    claim_one(queue, "w1")
    assert queue.retry_later("j1", "w1", "transient", "later", LEASE_S)
    time.sleep(LEASE_S + 0.05)
    again = claim_one(queue, "w2")
    assert (again.id, again.attempts) == ("j1", 2)
    assert queue.complete("j1", "w2", [result()], VERDICT)
    job = queue.get("j1")
    assert job is not None
    assert (job.error_code, job.error_message) == (None, None)


def test_release_gives_the_attempt_back(queue: JobQueue) -> None:
    add(queue, "j1")
    add(queue, "j2")
    assert len(queue.claim("w1", 2, LONG_LEASE_S)) == 2

    queue.release("w2", ["j1", "j2"])  # not w2's: nothing happens
    assert queue.counts()["running"] == 2
    queue.release("w1", ["j1", "j2", "unknown"])
    for job_id in ("j1", "j2"):
        job = queue.get(job_id)
        assert job is not None
        assert (job.state, job.attempts, job.lease_owner, job.lease_expires) == (
            JobState.QUEUED,
            0,
            None,
            None,
        )
    assert [c.attempts for c in queue.claim("w2", 5, LONG_LEASE_S)] == [1, 1]


def test_cancel_only_queued_jobs(queue: JobQueue) -> None:
    add(queue, "running")
    add(queue, "queued")
    claim_one(queue, "w1")
    assert not queue.cancel("running")
    assert not queue.cancel("unknown")
    assert queue.cancel("queued")
    assert not queue.cancel("queued")
    job = queue.get("queued")
    assert job is not None
    assert job.state == JobState.CANCELLED
    assert job.finished_at is not None
    assert queue.claim("w1", 5, LONG_LEASE_S) == []


def test_find_cached_matches_bytes_detector_version_and_weights(queue: JobQueue) -> None:
    add(queue, "old", video=1)
    add(queue, "errored", video=1)
    add(queue, "other-bytes", video=2)
    add(queue, "pending", video=1)
    claim_one(queue, "w1")
    assert queue.complete("old", "w1", [result("d1", label="FAKE"), result("d2")], VERDICT)
    claim_one(queue, "w1")
    abstain = result("d1", label="ABSTAIN", fake_probability=None, details={"reason": "no_faces"})
    assert queue.complete("errored", "w1", [abstain], VERDICT)
    claim_one(queue, "w1")
    assert queue.complete("other-bytes", "w1", [result("d1", label="REAL")], VERDICT)

    found = queue.find_cached(sha(1), "d1", "1", "w1")
    assert found is not None
    assert (found.job_id, found.detector, found.label) == ("old", "d1", "FAKE")
    assert queue.find_cached(sha(1), "d1", "2", "w1") is None
    assert queue.find_cached(sha(1), "d1", "1", "w2") is None
    assert queue.find_cached(sha(1), "d3", "1", "w1") is None
    assert queue.find_cached(sha(3), "d1", "1", "w1") is None

    # The newest good result wins, reused ones included.
    claim_one(queue, "w1")
    reused = result("d1", label="REAL", cached_from_job="old")
    assert queue.complete("pending", "w1", [reused], VERDICT)
    found = queue.find_cached(sha(1), "d1", "1", "w1")
    assert found is not None
    assert (found.job_id, found.label, found.cached_from_job) == ("pending", "REAL", "old")


def test_abstentions_that_are_facts_about_the_bytes_can_be_reused(queue: JobQueue) -> None:
    for job_id in ("a", "b", "c"):
        add(queue, job_id, video=1)
    claim_one(queue, "w1")
    no_manifest = result("d1", label="ABSTAIN", fake_probability=None, details={"reason": "x"})
    assert queue.complete("a", "w1", [no_manifest], VERDICT)
    claim_one(queue, "w1")
    crashed = result(
        "d1", label="ABSTAIN", fake_probability=None, details={"reason": "internal_error"}
    )
    assert queue.complete("b", "w1", [crashed], VERDICT)

    assert queue.find_cached(sha(1), "d1", "1", "w1") is None
    # The newest is an error, never reused; the one before it states a fact.
    found = queue.find_cached(sha(1), "d1", "1", "w1", final_abstentions={"x"})
    assert found is not None
    assert (found.job_id, found.label) == ("a", "ABSTAIN")
    assert queue.find_cached(sha(1), "d1", "1", "w1", final_abstentions={"y"}) is None


def test_a_dead_local_workers_leases_end_at_once(
    queue: JobQueue,
) -> None:
    host = socket.gethostname()
    dead_pid = subprocess.Popen(["true"])  # a pid that no longer runs
    dead_pid.wait()
    queue.heartbeat("dead", host, dead_pid.pid, "worker")
    queue.heartbeat("alive", host, os.getpid(), "worker")
    queue.heartbeat("elsewhere", "another-host", dead_pid.pid, "worker")
    add(queue, "j1", video=1)
    add(queue, "j2", video=2)
    assert claim_one(queue, "dead").id == "j1"
    assert claim_one(queue, "alive").id == "j2"
    assert queue.claim("w2", 5, LONG_LEASE_S) == []

    gone = gone_here(queue.workers(alive_within_s=60), host)
    assert [w.id for w in gone] == ["dead"]
    assert queue.expire_leases("dead") == 1
    [job] = queue.claim("w2", 5, LONG_LEASE_S)
    # Reclaimed at once; the crash is charged only once j1 has been tried alone.
    assert (job.id, job.attempts, job.solo) == ("j1", 1, True)
    assert gone_here(queue.workers(alive_within_s=60), host) == []  # marked stopped


def test_list_pages_are_stable_across_inserts(queue: JobQueue, engine: Engine) -> None:
    for i in range(7):
        add(queue, f"j{i}")
    newest_first = [f"j{i}" for i in reversed(range(7))]

    page1 = queue.list(limit=3)
    assert [j.id for j in page1] == newest_first[:3]
    add(queue, "new1")
    add(queue, "new2")
    page2 = queue.list(limit=3, before=page1[-1].id)
    page3 = queue.list(limit=3, before=page2[-1].id)
    assert [j.id for j in page2 + page3] == newest_first[3:]
    assert queue.list(limit=3, before=page3[-1].id) == []
    assert queue.list(before="unknown") == []

    claim_one(queue, "w1")  # j0, the oldest
    assert [j.id for j in queue.list(state=JobState.RUNNING)] == ["j0"]
    assert [j.id for j in queue.list(state=JobState.QUEUED, limit=2)] == ["new2", "new1"]

    # Jobs created in the same instant are ordered by id, and paging walks through them all.
    same_time = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(update(Job).values(created_at=same_time))
    seen: list[str] = []
    before: str | None = None
    while page := queue.list(limit=2, before=before):
        seen += [j.id for j in page]
        before = page[-1].id
    assert seen == sorted([*newest_first, "new1", "new2"], reverse=True)


def test_counts_cover_every_state(queue: JobQueue) -> None:
    assert queue.counts() == {s.value: 0 for s in JobState}
    for job_id in ("a", "b", "c", "d", "e"):
        add(queue, job_id)
    claim_one(queue, "w1")  # a
    claim_one(queue, "w1")  # b
    claim_one(queue, "w1")  # c
    assert queue.complete("a", "w1", [], VERDICT)
    assert queue.fail("b", "w1", "x", "y")
    assert queue.cancel("d")
    assert queue.counts() == {"queued": 1, "running": 1, "done": 1, "failed": 1, "cancelled": 1}


def test_unfinalized_until_marked(queue: JobQueue) -> None:
    for job_id in ("done", "failed", "cancelled", "running", "queued"):
        add(queue, job_id)
    claim_one(queue, "w1")
    claim_one(queue, "w1")
    claim_one(queue, "w1")
    assert queue.complete("done", "w1", [result()], VERDICT)
    assert queue.fail("failed", "w1", "x", "y")
    assert queue.cancel("queued")  # becomes the cancelled one
    assert [j.id for j in queue.unfinalized()] == ["done", "failed", "queued"]

    queue.set_output_path("done", "/out/done/done.mp4")
    assert [j.id for j in queue.unfinalized()] == ["done", "failed", "queued"]
    queue.mark_finalized("done")
    assert [j.id for j in queue.unfinalized()] == ["failed", "queued"]
    job = queue.get("done")
    assert job is not None
    assert job.output_path == "/out/done/done.mp4"
    assert job.finalized_at is not None
    assert job.results  # finalizing keeps the results


def test_videos_and_their_jobs(queue: JobQueue) -> None:
    add(queue, "first", video=7)
    add(queue, "second", video=7)
    add(queue, "elsewhere", video=8)
    queue.update_video(
        sha(7), container="mp4", codec="h264", width=640, height=360, fps=25.0, duration_s=12.5
    )
    video = queue.get_video(sha(7))
    assert video is not None
    assert (video.size_bytes, video.container, video.codec) == (1007, "mp4", "h264")
    assert (video.width, video.height, video.fps, video.duration_s) == (640, 360, 25.0, 12.5)
    assert queue.get_video(sha(9)) is None
    assert [j.id for j in queue.jobs_for_video(sha(7))] == ["second", "first"]
    assert queue.get("unknown") is None

    asked = [f"ghost{i}" for i in range(1200)] + ["first", "elsewhere"]
    assert queue.known_job_ids(asked) == {"first", "elsewhere"}
    assert queue.known_job_ids([]) == set()


def test_timestamps_are_aware_utc(queue: JobQueue) -> None:
    before = dt.datetime.now(dt.UTC)
    add(queue, "j1")
    claim_one(queue, "w1")
    assert queue.complete("j1", "w1", [result()], VERDICT)
    queue.mark_finalized("j1")
    after = dt.datetime.now(dt.UTC)

    job = queue.get("j1")
    video = queue.get_video(sha(1))
    assert job is not None
    assert video is not None
    stamps = {
        "created_at": job.created_at,
        "run_after": job.run_after,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "finalized_at": job.finalized_at,
        "result.created_at": job.results[0].created_at,
        "first_seen": video.first_seen,
    }
    for name, stamp in stamps.items():
        assert stamp is not None, name
        assert stamp.tzinfo is dt.UTC, name
        # Stored as UTC, not shifted by some local offset on the way in or out.
        assert before <= stamp <= after, name


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "db.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert path.exists()

        # SQLAlchemy's BEGIN is really emitted: a rollback undoes the write.
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with engine.connect() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            conn.rollback()
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0

        # write_engine's transactions hold the write lock from their first statement on.
        with write_engine(engine).connect() as writer, engine.connect() as other:
            writer.exec_driver_sql("SELECT count(*) FROM t")
            other.exec_driver_sql("PRAGMA busy_timeout=0")
            other.commit()
            with pytest.raises(OperationalError, match="database is locked"):
                other.exec_driver_sql("INSERT INTO t VALUES (2)")
            other.rollback()
    finally:
        engine.dispose()


def test_sqlite_busy_is_retried_then_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = make_engine(url)
    blocker = make_engine(url)
    try:
        upgrade(engine)
        q = JobQueue(engine)
        add(q, "j1")

        # Wait on locks for 1 ms instead of seconds, and count the back-off sleeps.
        @event.listens_for(engine, "connect")
        def short_timeout(dbapi_connection: object, _record: object) -> None:
            dbapi_connection.execute("PRAGMA busy_timeout=1")  # type: ignore[attr-defined]

        engine.dispose()  # reconnect with the short timeout
        sleeps: list[float] = []
        monkeypatch.setattr(storage.queue, "time", types.SimpleNamespace(sleep=sleeps.append))

        with write_engine(blocker).begin() as conn:
            conn.execute(text("SELECT 1"))  # holds the write lock
            with pytest.raises(StorageBusy, match="database is locked"):
                q.claim("w1", 1, LONG_LEASE_S)
        assert len(sleeps) == storage.queue._BUSY_ATTEMPTS - 1

        # A lock that goes away during the back-off costs the caller nothing.
        lock = write_engine(blocker).connect()
        lock.execute(text("SELECT 1"))

        def sleep_then_unlock(_seconds: float) -> None:
            lock.rollback()

        monkeypatch.setattr(storage.queue, "time", types.SimpleNamespace(sleep=sleep_then_unlock))
        try:
            assert [c.id for c in q.claim("w1", 1, LONG_LEASE_S)] == ["j1"]
        finally:
            lock.close()
    finally:
        engine.dispose()
        blocker.dispose()


def test_database_url_fixture_is_migrated(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert JobQueue(engine).counts()["queued"] == 0
    finally:
        engine.dispose()


def test_ping(engine: Engine) -> None:
    ping(engine)


def test_unreachable_database_raises_storage_errors() -> None:
    unreachable = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")
    q = JobQueue(unreachable)
    try:
        with pytest.raises(StorageUnavailable):
            ping(unreachable)
        with pytest.raises(StorageUnavailable, match="cannot be reached"):
            q.claim("w1", 1, LONG_LEASE_S)
        with pytest.raises(StorageUnavailable):
            q.counts()
    finally:
        unreachable.dispose()


def test_workers_heartbeat_and_show_what_they_hold(queue: JobQueue) -> None:
    add(queue, "a")
    add(queue, "b", video=2)
    queue.heartbeat("w1", "host1", 11, "worker")
    queue.heartbeat("w2", "host2", 22, "worker")
    claim_one(queue, "w1")
    first = {w.id: w for w in queue.workers(alive_within_s=60)}
    assert first["w1"].held_jobs == ["a"]
    assert first["w2"].held_jobs == []
    assert first["w1"].alive
    assert first["w1"].heartbeat_at.tzinfo is not None
    queue.heartbeat("w1", "host1", 11, "worker")
    again = {w.id: w for w in queue.workers(alive_within_s=60)}
    assert again["w1"].heartbeat_at >= first["w1"].heartbeat_at
    assert again["w1"].started_at == first["w1"].started_at
    queue.worker_stopped("w2")
    assert not {w.id: w for w in queue.workers(alive_within_s=60)}["w2"].alive


def test_a_silent_worker_is_not_alive(queue: JobQueue) -> None:
    queue.heartbeat("w1", "h", 1, "worker")
    time.sleep(0.05)
    [w] = queue.workers(alive_within_s=0.01)
    assert not w.alive
