"""Crash recovery of the inbox -> work -> done/failed lifecycle, on a real database and disk.

Each test builds the state a crash at one particular step would leave, then checks that
``recover`` ends with exactly one job and exactly one copy of the file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.config import InboxConfig, QueueConfig
from processor.files import sha256_file
from processor.lifecycle import Lifecycle
from storage.db import make_engine
from storage.queue import JobQueue, JobState, NewResult

# The overall verdict stored with a completed job; these tests do not look at it.
VERDICT = {"label": "REAL", "fake_probability": 0.1, "rule": "any_fake"}


@pytest.fixture
def queue(database_url: str) -> Iterator[JobQueue]:
    engine = make_engine(database_url)
    yield JobQueue(engine)
    engine.dispose()


@pytest.fixture
def inbox(tmp_path: Path) -> InboxConfig:
    return InboxConfig(
        name="t",
        path=tmp_path / "inbox",
        work=tmp_path / "work",
        done=tmp_path / "done",
        failed=tmp_path / "failed",
    )


@pytest.fixture
def lifecycle(queue: JobQueue, inbox: InboxConfig) -> Lifecycle:
    lc = Lifecycle(queue, [inbox], QueueConfig())
    lc.prepare_folders()
    return lc


def _result() -> NewResult:
    return NewResult(
        detector="color-cues-lstm-v1",
        version="1.0.0",
        weights_id="dummy",
        label="REAL",
        fake_probability=0.1,
        threshold=0.5,
        frame_scores=[],
        details={},
        elapsed_s=0.1,
    )


def _finish(queue: JobQueue, job_id: str, ok: bool) -> None:
    [claimed] = queue.claim("w", 1, 30)
    assert claimed.id == job_id
    if ok:
        assert queue.complete(job_id, "w", [_result()], VERDICT)
    else:
        assert queue.fail(job_id, "w", "corrupt_video", "broken")


async def test_accept_moves_the_file_and_queues_one_job(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig
) -> None:
    src = inbox.path / "clip.mp4"
    src.write_bytes(b"video bytes")
    await lifecycle.accept(inbox, src)
    assert not src.exists()
    [job] = queue.list()
    assert job.state is JobState.QUEUED
    assert job.source_ref == str(src)
    assert job.work_path is not None
    assert Path(job.work_path).read_bytes() == b"video bytes"
    assert job.video_sha256 == sha256_file(Path(job.work_path))


async def test_work_folder_without_a_job_is_queued_once(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig
) -> None:
    # Crash after the rename into the work area, before the job row was committed.
    job_id = uuid.uuid4().hex
    (inbox.work / job_id).mkdir()
    (inbox.work / job_id / "clip.mp4").write_bytes(b"abc")
    await lifecycle.recover()
    await lifecycle.recover()
    [job] = queue.list()
    assert job.id == job_id
    assert job.source_ref == str(inbox.path / "clip.mp4")


async def test_empty_work_folder_is_removed(lifecycle: Lifecycle, inbox: InboxConfig) -> None:
    # Crash between mkdir and rename: the file never left the inbox.
    job_dir = inbox.work / uuid.uuid4().hex
    job_dir.mkdir()
    await lifecycle.recover()
    assert not job_dir.exists()


@pytest.mark.parametrize("ok", [True, False])
async def test_finished_job_whose_file_never_moved_is_finalized(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig, ok: bool
) -> None:
    src = inbox.path / "clip.mp4"
    src.write_bytes(b"abc")
    await lifecycle.accept(inbox, src)
    [job] = queue.list()
    _finish(queue, job.id, ok)
    # The crash came after the commit, before the move.
    await lifecycle.recover()
    folder, suffix = (inbox.done, ".verdict.json") if ok else (inbox.failed, ".error.json")
    assert sorted(p.name for p in folder.iterdir()) == ["clip.mp4", "clip.mp4" + suffix]
    assert (folder / "clip.mp4").read_bytes() == b"abc"
    assert queue.unfinalized() == []
    assert list(inbox.work.iterdir()) == []
    await lifecycle.recover()  # idempotent
    assert len(list(folder.iterdir())) == 2


async def test_crash_between_link_and_unlink_leaves_one_copy(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig
) -> None:
    src = inbox.path / "clip.mp4"
    src.write_bytes(b"abc")
    await lifecycle.accept(inbox, src)
    [job] = queue.list()
    _finish(queue, job.id, True)
    assert job.work_path is not None
    dest = inbox.done / "clip.mp4"
    queue.set_output_path(job.id, str(dest))
    os.link(job.work_path, dest)  # the move's first half
    await lifecycle.recover()
    assert sorted(p.name for p in inbox.done.iterdir()) == ["clip.mp4", "clip.mp4.verdict.json"]
    assert not Path(job.work_path).exists()


async def test_name_collisions_get_a_suffix_never_overwrite(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig
) -> None:
    (inbox.done / "clip.mp4").write_bytes(b"someone else's")
    src = inbox.path / "clip.mp4"
    src.write_bytes(b"ours")
    await lifecycle.accept(inbox, src)
    [job] = queue.list()
    _finish(queue, job.id, True)
    await lifecycle.recover()
    assert (inbox.done / "clip.mp4").read_bytes() == b"someone else's"
    assert (inbox.done / "clip-1.mp4").read_bytes() == b"ours"
    assert (inbox.done / "clip-1.mp4.verdict.json").is_file()


async def test_a_file_swapped_for_a_symlink_is_refused(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not for the detectors")
    link = inbox.path / "clip.mp4"
    link.symlink_to(secret)
    with pytest.raises(ValueError, match="regular file"):
        await lifecycle.accept(inbox, link)
    assert link.is_symlink()
    assert queue.list() == []
    assert list(inbox.work.iterdir()) == []


async def test_finalize_queues_the_webhooks_a_job_owes(queue: JobQueue, inbox: InboxConfig) -> None:
    from processor.config import WebhooksConfig, WebhookTarget

    hooks = WebhooksConfig(
        targets=[
            WebhookTarget(url="http://127.0.0.1:9/done", events=["done"]),
            WebhookTarget(url="http://127.0.0.1:9/failed", events=["failed"]),
        ]
    )
    lc = Lifecycle(queue, [inbox], QueueConfig(), webhooks=hooks)
    lc.prepare_folders()
    src = inbox.path / "clip.mp4"
    src.write_bytes(b"abc")
    await lc.accept(inbox, src)
    [job] = queue.list()
    _finish(queue, job.id, False)
    await lc.recover()
    [delivery] = queue.deliveries(job.id)
    assert delivery.url == "http://127.0.0.1:9/failed"
    assert delivery.event == "job.failed"
