"""Crash recovery of the inbox -> work -> done/failed lifecycle, on a real database and disk.

Each test builds the state a crash at one particular step would leave, then checks that
``recover`` ends with exactly one job and exactly one copy of the file."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.config import InboxConfig, QueueConfig
from processor.files import sha256_file
from processor.lifecycle import Lifecycle
from processor.retry import retry_job
from storage.db import make_engine
from storage.deliveries import Deliveries
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
    [delivery] = Deliveries(queue).for_job(job.id)
    assert delivery.url == "http://127.0.0.1:9/failed"
    assert delivery.event == "job.failed"


def _long_name(folder: Path, ext: str = ".mp4") -> str:
    """A name exactly as long as ``folder``'s filesystem allows, in bytes, made of two- and
    three-byte characters so that any cut that ignores characters would split one."""
    limit = os.pathconf(folder, "PC_NAME_MAX")
    name = "é" * ((limit - len(ext)) // 2)
    while len(os.fsencode(name + ext)) < limit:
        name += "a"
    name = "日" + name[:-2] if len(os.fsencode("日" + name[:-2] + ext)) == limit else name
    assert len(os.fsencode(name + ext)) == limit
    return name + ext


@pytest.mark.parametrize("ok", [True, False])
async def test_a_name_at_the_filesystems_limit_is_finished_with_its_sidecar(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig, ok: bool
) -> None:
    src = inbox.path / _long_name(inbox.path)
    src.write_bytes(b"abc")
    await lifecycle.accept(inbox, src)
    [job] = queue.list()
    _finish(queue, job.id, ok)
    view = queue.get(job.id)
    assert view is not None
    lifecycle.finalize(view)

    folder, suffix = (inbox.done, ".verdict.json") if ok else (inbox.failed, ".error.json")
    [video] = [p for p in folder.iterdir() if not p.name.endswith(suffix)]
    assert video.read_bytes() == b"abc"
    assert video.suffix == ".mp4"
    assert src.name.startswith(video.stem)  # shortened, at a character boundary
    assert video.with_name(video.name + suffix).is_file()
    assert not any(inbox.work.iterdir())
    # A second file of the same name gets a distinct, still valid name.
    src.write_bytes(b"abcd")
    await lifecycle.accept(inbox, src)
    second = next(j for j in queue.list() if j.id != job.id)
    _finish(queue, second.id, ok)
    view = queue.get(second.id)
    assert view is not None
    lifecycle.finalize(view)
    assert len([p for p in folder.iterdir() if p.name.endswith(suffix)]) == 2


async def test_recovery_carries_on_past_a_job_it_cannot_place(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig
) -> None:
    for name in ("a.mp4", "b.mp4"):
        (inbox.path / name).write_bytes(name.encode())
        await lifecycle.accept(inbox, inbox.path / name)
    first, second = sorted(queue.list(), key=lambda j: j.created_at)
    _finish(queue, first.id, True)
    _finish(queue, second.id, True)
    inbox.done.rmdir()
    inbox.done.write_bytes(b"")  # done/ is not a folder: placing either file fails
    await lifecycle.recover()  # must not raise
    inbox.done.unlink()
    assert {j.finalized_at for j in queue.list()} == {None}
    await lifecycle.recover()
    assert sorted(p.name for p in inbox.done.iterdir() if p.suffix == ".mp4") == [
        "a.mp4",
        "b.mp4",
    ]


async def test_a_job_failed_by_max_attempts_while_running_is_finalized_by_the_sweep(
    queue: JobQueue, inbox: InboxConfig
) -> None:
    lifecycle = Lifecycle(queue, [inbox], QueueConfig(max_attempts=1, finalize_sweep_s=0.2))
    lifecycle.prepare_folders()
    (inbox.path / "poison.mp4").write_bytes(b"kills its worker")
    await lifecycle.accept(inbox, inbox.path / "poison.mp4")
    sweeper = asyncio.create_task(lifecycle.sweep_forever())
    try:
        queue.claim("w1", 1, 0.1)
        await asyncio.sleep(0.2)
        queue.claim("w2", 1, 0.1)  # the crash is charged only once it ran alone
        await asyncio.sleep(0.2)
        assert queue.claim("w3", 1, 30) == []  # fails it: max_attempts
        error = inbox.failed / "poison.mp4.error.json"
        for _ in range(100):
            if error.exists():
                break
            await asyncio.sleep(0.1)
    finally:
        sweeper.cancel()
    doc = json.loads(error.read_text())
    assert doc["error"]["code"] == "max_attempts"
    assert (inbox.failed / "poison.mp4").read_bytes() == b"kills its worker"
    assert not any(inbox.work.iterdir())


async def test_an_oversize_file_is_refused_before_it_is_read(
    queue: JobQueue, inbox: InboxConfig
) -> None:
    lifecycle = Lifecycle(queue, [inbox], QueueConfig(), max_file_bytes=10)
    lifecycle.prepare_folders()
    src = inbox.path / "huge.mp4"
    src.write_bytes(b"x" * 11)
    await lifecycle.accept(inbox, src)
    assert queue.list() == []
    doc = json.loads((inbox.failed / "huge.mp4.error.json").read_text())
    assert doc["error"]["code"] == "file_too_large"
    assert (doc["job_id"], doc["sha256"]) == (None, None)
    assert (inbox.failed / "huge.mp4").stat().st_size == 11


@pytest.mark.parametrize("ok", [True, False])
async def test_a_file_that_changed_after_hashing_is_judged_again(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig, ok: bool
) -> None:
    src = inbox.path / "growing.mp4"
    src.write_bytes(b"first half")
    await lifecycle.accept(inbox, src)
    [job] = queue.list()
    assert job.work_path is not None
    # The writer still had it open, and went on.
    with Path(job.work_path).open("ab") as f:  # noqa: ASYNC230
        f.write(b" and the rest")
    _finish(queue, job.id, ok)
    view = queue.get(job.id)
    assert view is not None
    lifecycle.finalize(view)

    # No verdict beside bytes it did not judge: the whole file is a new job.
    assert list(inbox.done.iterdir()) == list(inbox.failed.iterdir()) == []
    [again] = [j for j in queue.list() if j.id != job.id]
    assert again.state is JobState.QUEUED
    assert again.work_path is not None
    assert Path(again.work_path).read_bytes() == b"first half and the rest"
    assert again.video_sha256 == sha256_file(Path(again.work_path))
    assert again.source_ref == str(src)
    old = queue.get(job.id)
    assert old is not None
    assert old.finalized_at is not None
    assert not Path(job.work_path).parent.exists()

    _finish(queue, again.id, True)
    view = queue.get(again.id)
    assert view is not None
    lifecycle.finalize(view)
    sidecar = json.loads((inbox.done / "growing.mp4.verdict.json").read_text())
    assert sidecar["sha256"] == sha256_file(inbox.done / "growing.mp4")


async def test_a_touched_but_unchanged_file_is_not_judged_again(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig
) -> None:
    src = inbox.path / "clip.mp4"
    src.write_bytes(b"abc")
    await lifecycle.accept(inbox, src)
    [job] = queue.list()
    assert job.work_path is not None
    os.utime(job.work_path, ns=(1, 1))
    _finish(queue, job.id, True)
    view = queue.get(job.id)
    assert view is not None
    lifecycle.finalize(view)
    assert (inbox.done / "clip.mp4.verdict.json").is_file()
    assert len(queue.list()) == 1


def _upload_job(queue: JobQueue, upload_dir: Path, content: bytes) -> str:
    job_id = uuid.uuid4().hex
    copy = upload_dir / f"{job_id}.video"
    copy.write_bytes(content)
    os.utime(copy, ns=(len(queue.list()), len(queue.list())))  # older first
    queue.enqueue(
        job_id=job_id,
        sha256=sha256_file(copy),
        size_bytes=len(content),
        source_kind="upload",
        source_ref="clip.mp4",
        detectors=["color-cues-lstm-v1"],
        work_path=str(copy),
    )
    return job_id


async def test_ended_uploads_are_kept_for_playback_and_retry_oldest_out_first(
    queue: JobQueue, tmp_path: Path
) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    lifecycle = Lifecycle(queue, [], QueueConfig(), keep_uploads_bytes=10)
    first = _upload_job(queue, uploads, b"123456")
    _finish(queue, first, False)
    view = queue.get(first)
    assert view is not None
    lifecycle.finalize(view)
    kept = uploads / "kept" / f"{first}.video"
    assert kept.read_bytes() == b"123456"
    view = queue.get(first)
    assert view is not None
    assert view.output_path == str(kept)

    # A failed upload runs again from its kept copy.
    retry_job(queue, [], first)
    assert (uploads / f"{first}.video").read_bytes() == b"123456"
    _finish(queue, first, True)
    view = queue.get(first)
    assert view is not None
    lifecycle.finalize(view)

    second = _upload_job(queue, uploads, b"abcdef")
    _finish(queue, second, True)
    view = queue.get(second)
    assert view is not None
    lifecycle.finalize(view)
    # 12 bytes kept would pass the 10 allowed: the older copy goes.
    assert sorted(p.name for p in (uploads / "kept").iterdir()) == [f"{second}.video"]
    assert sorted(p.name for p in uploads.iterdir()) == ["kept"]


async def test_ended_uploads_are_deleted_when_keeping_is_off(
    queue: JobQueue, tmp_path: Path
) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    lifecycle = Lifecycle(queue, [], QueueConfig(), keep_uploads_bytes=0)
    job_id = _upload_job(queue, uploads, b"123")
    _finish(queue, job_id, True)
    view = queue.get(job_id)
    assert view is not None
    lifecycle.finalize(view)
    assert list(uploads.iterdir()) == []


async def test_a_name_that_is_not_utf8_is_queued_under_a_readable_name(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig
) -> None:
    raw = os.fsencode(inbox.path) + b"/bad\xff\xfename.mp4"
    with open(raw, "wb") as f:  # noqa: ASYNC230
        f.write(b"abc")
    await lifecycle.accept(inbox, Path(os.fsdecode(raw)))
    [job] = queue.list()
    assert job.source_ref == str(inbox.path / "bad\ufffd\ufffdname.mp4")
    _finish(queue, job.id, True)
    view = queue.get(job.id)
    assert view is not None
    lifecycle.finalize(view)
    assert (inbox.done / "bad\ufffd\ufffdname.mp4").read_bytes() == b"abc"
    assert (inbox.done / "bad\ufffd\ufffdname.mp4.verdict.json").is_file()


async def test_start_up_repairs_a_stranded_file_with_a_name_that_is_not_utf8(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig
) -> None:
    job_id = uuid.uuid4().hex
    (inbox.work / job_id).mkdir()
    with open(os.fsencode(inbox.work / job_id) + b"/x\xff.mp4", "wb") as f:  # noqa: ASYNC230
        f.write(b"abc")
    await lifecycle.recover()
    [job] = queue.list()
    assert job.id == job_id
    assert job.work_path == str(inbox.work / job_id / "x\ufffd.mp4")


async def test_only_one_process_places_a_file(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig
) -> None:
    (inbox.path / "clip.mp4").write_bytes(b"abc")
    await lifecycle.accept(inbox, inbox.path / "clip.mp4")
    [job] = queue.list()
    assert not queue.claim_finalize(job.id, 60)  # still queued: nothing to place
    _finish(queue, job.id, True)
    assert queue.claim_finalize(job.id, 0.5)  # another process is placing it
    view = queue.get(job.id)
    assert view is not None
    lifecycle.finalize(view)  # so this one leaves it alone
    assert list(inbox.done.iterdir()) == []
    await asyncio.sleep(0.6)  # the other one died: its hold runs out
    view = queue.get(job.id)
    assert view is not None
    lifecycle.finalize(view)
    assert (inbox.done / "clip.mp4.verdict.json").is_file()
    assert not queue.claim_finalize(job.id, 0)  # finalized: never again


async def test_start_up_finishes_a_retry_a_crash_interrupted(
    lifecycle: Lifecycle, queue: JobQueue, inbox: InboxConfig
) -> None:
    (inbox.path / "clip.mp4").write_bytes(b"abc")
    await lifecycle.accept(inbox, inbox.path / "clip.mp4")
    [job] = queue.list()
    _finish(queue, job.id, False)
    view = queue.get(job.id)
    assert view is not None
    lifecycle.finalize(view)
    assert job.work_path is not None
    # The retry moved the file back, then the process died before queueing the job.
    Path(job.work_path).parent.mkdir()
    os.rename(inbox.failed / "clip.mp4", job.work_path)
    await lifecycle.recover()
    again = queue.get(job.id)
    assert again is not None
    assert (again.state, again.attempts) == (JobState.QUEUED, 0)


async def test_files_are_placed_by_the_host_they_came_from_or_one_that_sees_them(
    queue: JobQueue, inbox: InboxConfig
) -> None:
    here = Lifecycle(queue, [inbox], QueueConfig(), host_name="host-a")
    here.prepare_folders()
    elsewhere = Lifecycle(queue, [inbox], QueueConfig(), host_name="host-b")
    src = inbox.path / "clip.mp4"
    src.write_bytes(b"video bytes")
    await here.accept(inbox, src)
    [job] = queue.list()
    assert job.origin == "host-a"
    _finish(queue, job.id, ok=True)
    work_file = Path(job.work_path or "")

    # Another host that cannot see the file leaves it to its own host's sweep.
    hidden = work_file.with_name("hidden.mp4")
    work_file.rename(hidden)
    ended = queue.get(job.id)
    assert ended is not None
    elsewhere.finalize(ended)
    assert queue.get(job.id).finalized_at is None  # type: ignore[union-attr]
    assert not list(inbox.done.iterdir())

    # One that sees it (a shared folder, or this host under a new name) places it.
    hidden.rename(work_file)
    elsewhere.finalize(ended)
    assert queue.get(job.id).finalized_at is not None  # type: ignore[union-attr]
    assert sorted(p.name for p in inbox.done.iterdir()) == ["clip.mp4", "clip.mp4.verdict.json"]
