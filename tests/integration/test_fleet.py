"""Workers on many hosts sharing one queue, on SQLite and Postgres alike: a silent worker is
declared dead within its own dead_after_s and its jobs come back long before their leases run
out; a worker claims only jobs whose detectors it has loaded; what each has loaded is published.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from processor.config import Config, QueueConfig
from processor.daemon import load_pipeline
from processor.files import sha256_file
from processor.lifecycle import Lifecycle
from processor.worker import Worker
from storage.db import upgrade
from storage.models import Job, WorkerRow
from storage.queue import DeadWorker, JobQueue, JobState, detector_set, detector_sets_within
from tests.media import make_video

LONG_LEASE_S = 600.0  # leases that never run out during a test: only a death can end them
C2PA = "c2pa-provenance"  # a detector with no weights, quick to load
VERDICT = {"label": "REAL", "fake_probability": 0.1, "rule": "any_fake"}


@pytest.fixture
def queue(engine: Engine) -> JobQueue:
    upgrade(engine)
    return JobQueue(engine)


def add(q: JobQueue, job_id: str, detectors: list[str], video: int = 1, **kw: object) -> None:
    assert q.enqueue(
        job_id=job_id,
        sha256=f"{video:064x}",
        size_bytes=1000,
        source_kind="cli",
        source_ref=f"/videos/{job_id}.mp4",
        detectors=detectors,
        **kw,  # type: ignore[arg-type]
    )


def silence(q: JobQueue, worker_id: str, seconds: float) -> None:
    """Move a worker's last heartbeat ``seconds`` into the past, as if it stopped beating."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    with q.engine.begin() as conn:
        conn.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(heartbeat_at=past))


def poll(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


async def apoll(cond: Callable[[], object], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(cond):
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def alive(q: JobQueue, default_s: float = LONG_LEASE_S) -> dict[str, bool]:
    return {w.id: w.alive for w in q.workers(default_s)}


def test_a_worker_that_stops_beating_loses_its_jobs_after_its_dead_after_s(
    queue: JobQueue,
) -> None:
    queue.heartbeat("silent", "host-b", 4242, "worker", dead_after_s=0.5)
    queue.heartbeat("live", "host-a", 4243, "worker", dead_after_s=60)
    add(queue, "j1", ["a"])
    [held] = queue.claim("silent", 1, LONG_LEASE_S)
    assert queue.claim("live", 5, LONG_LEASE_S) == []

    # Nobody beats for "silent" any more; "live" looks as a worker's claim loop does.
    dead: list[DeadWorker] = []

    def declared() -> bool:
        dead.extend(queue.expire_dead(LONG_LEASE_S, spare="live"))
        return bool(dead)

    poll(declared, 30, "the silent worker to be declared dead")
    [gone] = dead
    assert (gone.id, gone.host, gone.pid, gone.leases_ended) == ("silent", "host-b", 4242, 1)
    assert queue.expire_dead(LONG_LEASE_S) == []  # declared once, by whoever saw it first
    assert alive(queue) == {"silent": False, "live": True}
    [view] = [w for w in queue.workers(LONG_LEASE_S) if w.id == "silent"]
    assert view.stopped_at is not None
    assert view.held_jobs == []

    # Claimable now, ten minutes before its lease would have run out, and as after a crash:
    # the attempt is given back and the job runs alone (it may be what killed its worker).
    [job] = queue.claim("live", 5, LONG_LEASE_S)
    assert (job.id, job.attempts, job.solo) == (held.id, 1, True)


def test_alive_follows_each_workers_own_dead_after_s(queue: JobQueue) -> None:
    queue.heartbeat("patient", "h1", 1, "worker", dead_after_s=60)
    queue.heartbeat("strict", "h2", 2, "worker", dead_after_s=5)
    queue.heartbeat("older", "h3", 3, "worker")  # records no dead_after_s: the default applies
    for worker_id in ("patient", "strict", "older"):
        silence(queue, worker_id, 30)
    assert alive(queue, default_s=120) == {"patient": True, "strict": False, "older": True}
    assert alive(queue, default_s=10) == {"patient": True, "strict": False, "older": False}

    dead = queue.expire_dead(10)
    assert sorted(w.id for w in dead) == ["older", "strict"]
    assert queue.expire_dead(10) == []  # already stopped: declared once
    assert alive(queue, default_s=120) == {"patient": True, "strict": False, "older": False}


def test_the_caller_is_never_declared_dead_by_itself(queue: JobQueue) -> None:
    queue.heartbeat("me", "h", 1, "worker", dead_after_s=1)
    add(queue, "j1", ["a"])
    queue.claim("me", 1, LONG_LEASE_S)
    silence(queue, "me", 30)
    assert queue.expire_dead(LONG_LEASE_S, spare="me") == []
    assert queue.renew("me", ["j1"], LONG_LEASE_S) == {"j1"}


def test_a_worker_declared_dead_by_mistake_loses_its_jobs_and_carries_on(
    queue: JobQueue,
) -> None:
    queue.heartbeat("paused", "h1", 1, "worker", dead_after_s=1)
    queue.heartbeat("other", "h2", 2, "worker", dead_after_s=60)
    add(queue, "j1", ["a"])
    [job] = queue.claim("paused", 1, LONG_LEASE_S)
    silence(queue, "paused", 30)  # a long pause (SIGSTOP, a stalled network) ...
    assert [w.id for w in queue.expire_dead(LONG_LEASE_S, spare="other")] == ["paused"]

    # ... then it beats again: told it was declared dead, it is alive again but holds nothing.
    assert queue.heartbeat("paused", "h1", 1, "worker") is True
    assert queue.heartbeat("paused", "h1", 1, "worker") is False
    assert alive(queue)["paused"]
    assert queue.renew("paused", [job.id], LONG_LEASE_S) == set()
    assert not queue.complete(job.id, "paused", [], VERDICT)  # a lost lease

    [again] = queue.claim("other", 1, LONG_LEASE_S)
    assert again.id == job.id
    assert queue.complete(job.id, "other", [], VERDICT)
    add(queue, "j2", ["a"], video=2)
    assert [j.id for j in queue.claim("paused", 1, LONG_LEASE_S)] == ["j2"]


def test_capabilities_are_published_with_the_heartbeat(queue: JobQueue) -> None:
    caps = {
        "detectors": {"a": {"version": "1", "weights_id": "w"}},
        "device": "cuda",
        "visible_devices": "0",
        "version": "1.2.3",
    }
    assert queue.heartbeat("w1", "h", 1, "worker", capabilities=caps, dead_after_s=10) is False
    queue.heartbeat("w1", "h", 1, "worker")  # a beat without them keeps them
    [w] = queue.workers(LONG_LEASE_S)
    assert (w.capabilities, w.dead_after_s) == (caps, 10)


def test_a_worker_claims_only_jobs_whose_detectors_it_has(queue: JobQueue) -> None:
    add(queue, "ab", ["b", "a"], video=1)
    add(queue, "a", ["a"], video=2)
    add(queue, "c", ["c"], video=3)
    cpu = queue.claim("cpu", 10, LONG_LEASE_S, detectors=["a"])
    assert [j.id for j in cpu] == ["a"]
    assert queue.claim("cpu", 10, LONG_LEASE_S, detectors=["a"]) == []
    gpu = queue.claim("gpu", 10, LONG_LEASE_S, detectors=["a", "b"])
    assert [j.id for j in gpu] == ["ab"]
    assert state(queue, "c") is JobState.QUEUED


def test_a_solo_job_goes_only_to_a_worker_that_can_run_it(queue: JobQueue) -> None:
    add(queue, "ab1", ["a", "b"], video=1)
    add(queue, "ab2", ["a", "b"], video=2)
    assert len(queue.claim("gpu-dead", 2, LONG_LEASE_S, detectors=["a", "b"])) == 2
    queue.expire_leases("gpu-dead")  # both were held together: both become solo
    add(queue, "a1", ["a"], video=3)

    # The solo jobs neither go to the CPU-only worker nor hold it back, busy or not.
    cpu = queue.claim("cpu", 5, LONG_LEASE_S, busy=True, detectors=["a"])
    assert [(j.id, j.solo) for j in cpu] == [("a1", False)]
    # A worker that can run them still waits to be free, then takes one alone.
    assert queue.claim("gpu", 5, LONG_LEASE_S, busy=True, detectors=["a", "b"]) == []
    [solo] = queue.claim("gpu", 5, LONG_LEASE_S, detectors=["a", "b"])
    assert (solo.id, solo.solo, solo.attempts) == ("ab1", True, 1)


@pytest.mark.parametrize("loaded", [8, 9])  # at the cap of listed subsets, and past it
def test_claims_match_exactly_however_many_detectors_are_loaded(
    queue: JobQueue, loaded: int
) -> None:
    keys = [f"k{i}" for i in range(loaded)]
    add(queue, "first-last", [keys[0], keys[-1]], video=1)
    add(queue, "all", keys, video=2)
    add(queue, "one-more", [keys[0], "zz"], video=3)
    claimed = queue.claim("w", 10, LONG_LEASE_S, detectors=keys)
    assert sorted(j.id for j in claimed) == ["all", "first-last"]
    assert queue.claim("w", 10, LONG_LEASE_S, detectors=keys[1:]) == []


def test_detector_sets_within_lists_every_subset_in_stored_form() -> None:
    subsets = detector_sets_within(["c", "a", "b", "a"])
    assert len(subsets) == len(set(subsets)) == 2**3 - 1
    assert detector_set(["b", "c", "a"]) in subsets
    assert detector_set(["c", "a"]) in subsets
    assert detector_sets_within([]) == []


def test_jobs_no_live_worker_can_run_are_reported(queue: JobQueue) -> None:
    add(queue, "ab", ["a", "b"], video=1)
    add(queue, "ab2", ["a", "b"], video=2)
    add(queue, "a", ["a"], video=3)
    caps_a = {"detectors": {"a": {"version": "1", "weights_id": "w"}}, "device": "cpu"}
    caps_ab = {"detectors": {"a": {}, "b": {}}, "device": "cuda"}
    assert queue.stranded(60) == {"a,b": 2, "a": 1}  # no worker at all
    queue.heartbeat("cpu", "h1", 1, "worker", capabilities=caps_a, dead_after_s=60)
    assert queue.stranded(60) == {"a,b": 2}
    queue.heartbeat("gpu", "h2", 2, "worker", capabilities=caps_ab, dead_after_s=60)
    assert queue.stranded(60) == {}
    silence(queue, "gpu", 120)  # dead: it no longer counts
    assert queue.stranded(60) == {"a,b": 2}
    queue.heartbeat("old", "h3", 3, "worker")  # publishes nothing, so it claims anything
    assert queue.stranded(60) == {}


def test_a_job_retried_from_before_detector_sets_is_claimable(queue: JobQueue) -> None:
    add(queue, "j1", ["a", "b"])
    queue.claim("w", 1, LONG_LEASE_S)
    assert queue.fail("j1", "w", "x", "broken")
    with queue.engine.begin() as conn:  # as migration 0007 leaves a job that had ended
        conn.execute(update(Job).where(Job.id == "j1").values(detector_set=""))
    assert queue.retry("j1")
    [job] = queue.claim("w", 1, LONG_LEASE_S, detectors=["a", "b"])
    assert job.id == "j1"


def state(q: JobQueue, job_id: str) -> JobState:
    job = q.get(job_id)
    assert job is not None
    return job.state


def _config(tmp_path: Path, engine: Engine) -> Config:
    return Config.model_validate(
        {
            "database": {"url": engine.url.render_as_string(hide_password=False)},
            "device": "cpu",
            "inboxes": [{"name": "x", "path": str(tmp_path / "inbox")}],
            "detectors": {C2PA: {}},
            "batching": {"max_videos": 2, "max_wait_s": 0.05, "prepare_workers": 1},
            "queue": {
                "lease_s": LONG_LEASE_S,
                "poll_s": 0.1,
                "heartbeat_s": 0.1,
                "dead_after_s": 1,
            },
        }
    ).resolved(tmp_path)


async def test_a_worker_publishes_what_it_runs_and_takes_over_a_dead_workers_job(
    queue: JobQueue, engine: Engine, tmp_path: Path
) -> None:
    config = _config(tmp_path, engine)
    pipeline = await asyncio.to_thread(load_pipeline, config)
    clip = make_video(tmp_path / "clip.mp4", seconds=1.0, fps=8, face=False)
    digest = sha256_file(clip)
    for job_id, detectors in (("mine", [C2PA]), ("beyond", [C2PA, "other-detector"])):
        queue.enqueue(
            job_id=job_id,
            sha256=digest,
            size_bytes=clip.stat().st_size,
            source_kind="cli",
            source_ref=str(clip),
            detectors=detectors,
            work_path=str(clip),
        )
    # A worker on another host took the job, then went silent with ten minutes of lease left.
    queue.heartbeat("elsewhere", "host-b", 1, "worker", dead_after_s=1)
    assert [j.id for j in queue.claim("elsewhere", 1, LONG_LEASE_S, detectors=[C2PA])] == ["mine"]
    silence(queue, "elsewhere", 30)

    worker_id = f"test:{uuid.uuid4().hex[:6]}"
    lifecycle = Lifecycle(queue, config.inboxes, config.queue)
    worker = Worker(
        queue,
        pipeline,
        lifecycle,
        config.batching,
        config.queue,
        worker_id,
        config.fusion,
        device="cpu",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:

        def ended() -> bool:
            return state(queue, "mine") in (JobState.DONE, JobState.FAILED)

        await apoll(ended, 120, "the dead worker's job to be run by the live one")
        assert state(queue, "mine") is JobState.DONE
        views = {w.id: w for w in await asyncio.to_thread(queue.workers, LONG_LEASE_S)}
        me = views[worker_id]
        assert me.alive
        assert not views["elsewhere"].alive
        assert me.dead_after_s == 1
        assert me.capabilities is not None
        assert me.capabilities["device"] == "cpu"
        assert set(me.capabilities["detectors"]) == {C2PA}
        assert set(me.capabilities["detectors"][C2PA]) == {"version", "weights_id", "num_frames"}
        assert isinstance(me.capabilities["version"], str)
        assert worker.alive()
        first_beat = me.heartbeat_at

        def beat_again() -> bool:
            views = {w.id: w for w in queue.workers(LONG_LEASE_S)}
            return views[worker_id].heartbeat_at > first_beat

        await apoll(beat_again, 30, "another heartbeat")
        # Never claimed: this worker lacks one of its detectors, and nobody else has it.
        assert state(queue, "beyond") is JobState.QUEUED
        assert await asyncio.to_thread(queue.stranded, LONG_LEASE_S) == {
            detector_set([C2PA, "other-detector"]): 1
        }
    finally:
        stop.set()
        await task
    assert not alive(queue)[worker_id]


async def test_the_ingest_sweep_declares_silent_workers_dead(queue: JobQueue) -> None:
    qc = QueueConfig(lease_s=LONG_LEASE_S, heartbeat_s=0.1, dead_after_s=1)
    lifecycle = Lifecycle(queue, [], qc)
    queue.heartbeat("elsewhere", "host-b", 1, "worker", dead_after_s=1)
    add(queue, "j1", ["a"])
    queue.claim("elsewhere", 1, LONG_LEASE_S)
    silence(queue, "elsewhere", 30)
    sweeper = asyncio.create_task(lifecycle.sweep_forever())
    try:

        def declared() -> bool:
            [w] = queue.workers(LONG_LEASE_S)
            return w.stopped_at is not None

        await apoll(declared, 30, "the sweep to declare it dead")
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
    [job] = queue.claim("w2", 1, LONG_LEASE_S)
    assert (job.id, job.solo) == ("j1", True)
