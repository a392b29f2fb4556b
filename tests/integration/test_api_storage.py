"""The filters and orders ``JobQueue.list`` gained for the API, on SQLite and Postgres alike."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from sqlalchemy import Engine

import storage.queue
from processor.config import FusionConfig
from processor.verdict import overall_verdict
from storage.db import upgrade
from storage.queue import JobQueue, JobState, NewResult

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def queue(engine: Engine) -> JobQueue:
    upgrade(engine)
    return JobQueue(engine)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[dt.datetime]:
    """The queue's clock, one minute apart per call unless a test sets ``clock[0]``."""
    now = [T0]
    ticks = itertools.count()

    def fake_now() -> dt.datetime:
        return now[0] + dt.timedelta(minutes=next(ticks))

    monkeypatch.setattr(storage.queue, "_now", fake_now)
    return now


def add(q: JobQueue, job_id: str, detectors: list[str] | None = None, kind: str = "folder") -> None:
    assert q.enqueue(
        job_id=job_id,
        sha256=f"{len(job_id):064x}",
        size_bytes=10,
        source_kind=kind,
        source_ref=f"/in/{job_id}.mp4",
        detectors=detectors or ["d1"],
    )


def result(detector: str, label: str, probability: float | None = 0.5) -> NewResult:
    return NewResult(
        detector=detector,
        version="1",
        weights_id="w",
        label=label,
        fake_probability=probability,
        threshold=0.5,
        frame_scores=[],
        details={},
        elapsed_s=0.1,
    )


def finish(
    q: JobQueue, results: dict[str, list[NewResult]], fusion: FusionConfig | None = None
) -> None:
    claimed = q.claim("w", len(results), 600)
    assert {c.id for c in claimed} == set(results)
    for c in claimed:
        assert q.complete(c.id, "w", results[c.id], overall_verdict(results[c.id], fusion))


def ids(jobs: list[storage.queue.JobView]) -> list[str]:
    return [j.id for j in jobs]


def test_label_filter_follows_the_stored_overall_verdict(queue: JobQueue) -> None:
    outcomes = {
        "fake": [result("d1", "FAKE", 0.9)],
        "real": [result("d1", "REAL", 0.1)],
        "uncertain": [result("d1", "REAL", 0.1), result("d2", "UNCERTAIN", 0.5)],
        "fake-any": [result("d1", "REAL", 0.1), result("d2", "FAKE", 0.8)],
        "abstain": [result("d1", "ABSTAIN", None)],
        # A label with no probability does not vote (overall_verdict skips it).
        "novote": [result("d1", "FAKE", None), result("d2", "REAL", 0.2)],
    }
    for job_id in outcomes:
        add(queue, job_id)
    add(queue, "mean-real")
    add(queue, "queued")
    finish(queue, outcomes)
    # Fused by another rule when it finished: the filter goes by what was fused then.
    mean = FusionConfig(rule="weighted_mean", threshold=0.5)
    finish(queue, {"mean-real": [result("d1", "FAKE", 0.6), result("d2", "REAL", 0.1)]}, mean)

    for label in ("FAKE", "REAL", "UNCERTAIN", "ABSTAIN"):
        found = set(ids(queue.list(label=label)))
        expected = {
            job.id
            for job in queue.list(state=JobState.DONE)
            if job.verdict is not None and job.verdict["label"] == label
        }
        assert found == expected, label
    assert set(ids(queue.list(label="FAKE"))) == {"fake", "fake-any"}
    assert set(ids(queue.list(label="REAL"))) == {"real", "novote", "mean-real"}
    assert ids(queue.list(label="UNCERTAIN")) == ["uncertain"]
    assert ids(queue.list(label="ABSTAIN")) == ["abstain"]
    with pytest.raises(ValueError, match="unknown verdict label"):
        queue.list(label="MAYBE")


def test_detector_and_source_kind_filters(queue: JobQueue) -> None:
    add(queue, "a", ["d1", "d2"])
    add(queue, "b", ["d2"], kind="upload")
    add(queue, "c", ["d1-large"], kind="upload")
    assert set(ids(queue.list(detector="d1"))) == {"a"}  # an exact key, not a substring
    assert set(ids(queue.list(detector="d2"))) == {"a", "b"}
    assert ids(queue.list(detector="d3")) == []
    assert set(ids(queue.list(source_kind="upload"))) == {"b", "c"}
    assert ids(queue.list(source_kind="upload", detector="d2")) == ["b"]


def test_time_filters(queue: JobQueue, clock: list[dt.datetime]) -> None:
    for job_id in ("a", "b", "c", "d"):  # created at T0 + 0, 1, 2, 3 minutes
        add(queue, job_id)
    minute = dt.timedelta(minutes=1)
    assert ids(queue.list(since=T0 + minute)) == ["d", "c", "b"]
    assert ids(queue.list(until=T0 + 2 * minute)) == ["b", "a"]
    assert ids(queue.list(since=T0 + minute, until=T0 + 3 * minute)) == ["c", "b"]

    clock[0] = T0 + dt.timedelta(hours=1)
    claimed = queue.claim("w", 2, 600)  # "a" and "b", the oldest
    for c in claimed:
        assert queue.complete(c.id, "w", [], overall_verdict([]))
    done = queue.list(state=JobState.DONE)
    latest = max(j.finished_at for j in done if j.finished_at is not None)
    assert ids(queue.list(finished_since=T0 + dt.timedelta(minutes=30))) == ["b", "a"]
    assert len(queue.list(finished_since=latest)) == 1
    assert queue.list(finished_since=latest + minute) == []


def test_oldest_first_and_cursors_in_both_orders(queue: JobQueue, clock: list[dt.datetime]) -> None:
    for job_id in ("a", "b", "c", "d", "e"):
        add(queue, job_id)
    assert ids(queue.list(oldest_first=True, limit=2)) == ["a", "b"]
    assert ids(queue.list(oldest_first=True, limit=2, before="b")) == ["c", "d"]
    assert ids(queue.list(limit=2, before="d")) == ["c", "b"]
    assert ids(queue.list(oldest_first=True, state=JobState.QUEUED, limit=1)) == ["a"]
    assert queue.list(before="nope") == []


def test_pages_stay_stable_while_jobs_are_added(queue: JobQueue, clock: list[dt.datetime]) -> None:
    for n in range(7):
        add(queue, f"old{n}")
    first = queue.list(limit=3)
    for n in range(3):
        add(queue, f"new{n}")  # newer than every listed job: they belong before page one
    pages = [first]
    while len(pages[-1]) == 3:
        pages.append(queue.list(limit=3, before=pages[-1][-1].id))
    seen = [j for page in pages for j in ids(page)]
    assert seen == [f"old{n}" for n in reversed(range(7))]


def test_ties_on_creation_time_are_broken_by_id(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage.queue, "_now", lambda: T0)  # every job created at once
    for job_id in ("b", "d", "a", "c"):
        add(queue, job_id)
    assert ids(queue.list(limit=2)) == ["d", "c"]
    assert ids(queue.list(limit=2, before="c")) == ["b", "a"]
    assert ids(queue.list(oldest_first=True, limit=2, before="b")) == ["c", "d"]
