"""FolderWatcher against a real filesystem and real watchdog observers."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from processor.ingest.folder import FolderWatcher

QUIET_S = 0.4
CHECK_S = 0.1
# Long enough for anything the watcher was going to report to have been reported.
SETTLE_S = 3 * QUIET_S + 5 * CHECK_S
WAIT_S = 15.0


class Recorder:
    """An `on_stable` callback that records each call with the file's sha256 at that moment."""

    def __init__(self, *, fail_first: int = 0) -> None:
        self.calls: asyncio.Queue[tuple[Path, str]] = asyncio.Queue()
        self._fail_left = fail_first

    async def __call__(self, path: Path) -> None:
        digest = hashlib.sha256(await asyncio.to_thread(path.read_bytes)).hexdigest()
        await self.calls.put((path, digest))
        if self._fail_left:
            self._fail_left -= 1
            raise RuntimeError("simulated enqueue failure")

    async def next(self) -> tuple[Path, str]:
        return await asyncio.wait_for(self.calls.get(), WAIT_S)

    async def assert_silent(self) -> None:
        """Assert that nothing (more) is reported within SETTLE_S."""
        try:
            extra = await asyncio.wait_for(self.calls.get(), SETTLE_S)
        except TimeoutError:
            return
        pytest.fail(f"unexpected callback for {extra[0]}")


MakeWatcher = Callable[..., Awaitable[FolderWatcher]]


@pytest.fixture
async def start_watcher() -> AsyncIterator[MakeWatcher]:
    started: list[FolderWatcher] = []

    async def start(
        folder: Path, on_stable: Callable[[Path], Awaitable[None]], **options: Any
    ) -> FolderWatcher:
        # rescan_s is huge so that a periodic rescan never does the work a test credits to events.
        options = {"quiet_s": QUIET_S, "check_interval_s": CHECK_S, "rescan_s": 3600} | options
        watcher = FolderWatcher(folder, on_stable, **options)
        started.append(watcher)
        await watcher.start()
        return watcher

    yield start
    for watcher in started:
        # A stop() that hangs on a stuck callback should fail the test, not stall the run.
        await asyncio.wait_for(watcher.stop(), WAIT_S)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def write_slowly(path: Path, chunks: list[bytes], pause_s: float) -> None:
    """Write chunks to one open file, flushed to the filesystem each time, pausing between."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(pause_s)
            os.write(fd, chunk)
    finally:
        os.close(fd)


async def test_slow_writer_is_reported_once_after_the_last_chunk(
    tmp_path: Path, start_watcher: MakeWatcher
) -> None:
    recorder = Recorder()
    await start_watcher(tmp_path, recorder)
    chunks = [os.urandom(64 * 1024) for _ in range(25)]
    # 25 chunks 0.1 s apart: each pause is a quarter of quiet_s, the whole write about 6x it.
    writing = asyncio.create_task(write_slowly(tmp_path / "clip.mp4", chunks, QUIET_S / 4))

    path, digest = await recorder.next()

    assert writing.done(), "reported while the writer was still writing"
    assert path == tmp_path / "clip.mp4"
    assert digest == sha256(b"".join(chunks))
    await recorder.assert_silent()


async def test_writer_pausing_longer_than_quiet_s_is_read_only_once_it_closes(
    tmp_path: Path, start_watcher: MakeWatcher
) -> None:
    recorder = Recorder()
    await start_watcher(tmp_path, recorder)
    chunks = [os.urandom(64 * 1024) for _ in range(4)]
    # Each pause is three quiet periods: only the writer's close tells that it is done.
    writing = asyncio.create_task(write_slowly(tmp_path / "clip.mp4", chunks, 3 * QUIET_S))

    path, digest = await recorder.next()

    assert writing.done(), "reported while the writer still had it open"
    assert path == tmp_path / "clip.mp4"
    assert digest == sha256(b"".join(chunks))
    await recorder.assert_silent()


async def test_a_writer_that_never_closes_is_taken_after_open_write_wait_s(
    tmp_path: Path, start_watcher: MakeWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    await start_watcher(tmp_path, recorder, open_write_wait_s=4 * QUIET_S)
    fd = os.open(tmp_path / "clip.mp4", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"abc")
        path, digest = await recorder.next()
    finally:
        os.close(fd)
    assert (path, digest) == (tmp_path / "clip.mp4", sha256(b"abc"))
    assert "not closed" in caplog.text


async def test_part_file_renamed_is_reported_under_its_final_name_only(
    tmp_path: Path, start_watcher: MakeWatcher
) -> None:
    recorder = Recorder()
    await start_watcher(tmp_path, recorder)
    content = os.urandom(100_000)
    (tmp_path / "clip.mp4.part").write_bytes(content)
    # A stalled download: the .part sits unchanged far longer than quiet_s before the rename.
    await recorder.assert_silent()
    (tmp_path / "clip.mp4.part").rename(tmp_path / "clip.mp4")

    path, digest = await recorder.next()

    assert path == tmp_path / "clip.mp4"
    assert digest == sha256(content)
    await recorder.assert_silent()


async def test_junk_files_are_never_reported(tmp_path: Path, start_watcher: MakeWatcher) -> None:
    recorder = Recorder()
    await start_watcher(tmp_path, recorder)
    junk = [
        ".hidden.mp4",
        ".DS_Store",
        "._clip.mp4",
        "~$report.docx",
        "clip.mp4.crdownload",
        "clip.tmp",
        "clip.mp4.verdict.json",
        "clip.mp4.error.json",
        "Thumbs.db",
    ]
    for name in junk:
        (tmp_path / name).write_bytes(b"junk")
    # Written last: once it is reported, junk written before it would have been reported too.
    (tmp_path / "sentinel.mp4").write_bytes(b"video")

    path, _ = await recorder.next()

    assert path.name == "sentinel.mp4"
    await recorder.assert_silent()


async def test_files_present_before_start_are_reported(
    tmp_path: Path, start_watcher: MakeWatcher
) -> None:
    (tmp_path / "a.mp4").write_bytes(b"a")
    (tmp_path / "b.mp4").write_bytes(b"b")
    (tmp_path / "c.part").write_bytes(b"c")
    recorder = Recorder()
    await start_watcher(tmp_path, recorder)

    reported = {(await recorder.next())[0].name, (await recorder.next())[0].name}

    assert reported == {"a.mp4", "b.mp4"}
    await recorder.assert_silent()


async def test_rescan_finds_a_file_the_observer_never_reported(
    tmp_path: Path, start_watcher: MakeWatcher
) -> None:
    recorder = Recorder()
    # A polling observer that never gets round to polling stands in for a lost inotify event.
    watcher = await start_watcher(tmp_path, recorder, polling=True, polling_interval_s=3600)
    (tmp_path / "missed.mp4").write_bytes(b"missed")
    await recorder.assert_silent()

    await watcher.rescan()

    path, digest = await recorder.next()
    assert path == tmp_path / "missed.mp4"
    assert digest == sha256(b"missed")


async def test_periodic_rescan_outlives_a_failed_one_and_stops_with_the_watcher(
    tmp_path: Path,
    start_watcher: MakeWatcher,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    watcher = await start_watcher(
        tmp_path, recorder, polling=True, polling_interval_s=3600, rescan_s=0.2
    )
    scan = watcher._scan
    scans = 0

    def flaky_scan() -> list[Path]:
        nonlocal scans
        scans += 1
        if scans == 1:
            raise RuntimeError("simulated share failure")
        return scan()

    monkeypatch.setattr(watcher, "_scan", flaky_scan)
    (tmp_path / "missed.mp4").write_bytes(b"missed")

    path, _ = await recorder.next()

    assert path == tmp_path / "missed.mp4"
    assert scans >= 2
    assert "simulated share failure" in caplog.text
    await watcher.stop()
    stopped_at = scans
    await asyncio.sleep(0.6)
    assert scans == stopped_at, "rescans went on after stop()"


async def test_file_growing_without_events_waits_for_size_and_mtime_to_settle(
    tmp_path: Path, start_watcher: MakeWatcher
) -> None:
    recorder = Recorder()
    quiet_s = 1.0
    # No events at all, like a remote writer on a share: only stat can tell the file is growing.
    watcher = await start_watcher(
        tmp_path, recorder, quiet_s=quiet_s, polling=True, polling_interval_s=3600
    )
    chunks = [os.urandom(16 * 1024) for _ in range(12)]
    # Pauses span several checks, so two checks in a row often see the same size; only the
    # quiet_s window on size and mtime keeps the file from being reported mid-write.
    writing = asyncio.create_task(write_slowly(tmp_path / "remote.mp4", chunks, quiet_s / 3))
    await asyncio.sleep(0)
    await watcher.rescan()

    path, digest = await recorder.next()

    assert writing.done(), "reported while the writer was still writing"
    assert path == tmp_path / "remote.mp4"
    assert digest == sha256(b"".join(chunks))


async def test_events_hold_a_file_back_even_when_size_and_mtime_stay_put(
    tmp_path: Path, start_watcher: MakeWatcher
) -> None:
    # Filesystems with coarse mtimes (FAT: 2 s) can rewrite a file in place without changing
    # its size or mtime; the modify events are then the only sign of life.
    path = tmp_path / "inplace.mp4"
    chunk = 4096
    path.write_bytes(bytes(chunk * 25))
    os.utime(path, ns=(10**18, 10**18))
    recorder = Recorder()
    await start_watcher(tmp_path, recorder)

    async def rewrite_in_place() -> bytes:
        fd = os.open(path, os.O_WRONLY)
        try:
            for i in range(25):
                await asyncio.sleep(QUIET_S / 4)
                os.pwrite(fd, b"\xff" * chunk, i * chunk)
                os.utime(fd, ns=(10**18, 10**18))
        finally:
            os.close(fd)
        return b"\xff" * chunk * 25

    writing = asyncio.create_task(rewrite_in_place())

    _, digest = await recorder.next()

    assert writing.done(), "reported while the writer was still writing"
    assert digest == sha256(writing.result())


async def test_polling_observer_reports_a_dropped_file(
    tmp_path: Path, start_watcher: MakeWatcher
) -> None:
    recorder = Recorder()
    await start_watcher(tmp_path, recorder, polling=True, polling_interval_s=0.2)
    content = os.urandom(10_000)
    (tmp_path / "share.mp4").write_bytes(content)

    path, digest = await recorder.next()

    assert path == tmp_path / "share.mp4"
    assert digest == sha256(content)
    await recorder.assert_silent()


async def test_failed_callback_is_retried_by_the_next_rescan(
    tmp_path: Path, start_watcher: MakeWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(fail_first=1)
    watcher = await start_watcher(tmp_path, recorder)
    (tmp_path / "flaky.mp4").write_bytes(b"flaky")

    assert (await recorder.next())[0].name == "flaky.mp4"
    await recorder.assert_silent()
    assert any(
        "flaky.mp4" in record.getMessage() and record.levelno == logging.ERROR
        for record in caplog.records
    )

    await watcher.rescan()
    assert (await recorder.next())[0].name == "flaky.mp4"
    # The watcher is still alive for new files.
    (tmp_path / "next.mp4").write_bytes(b"next")
    assert (await recorder.next())[0].name == "next.mp4"


async def test_handed_over_file_left_in_place_is_reported_again_only_when_changed(
    tmp_path: Path, start_watcher: MakeWatcher
) -> None:
    recorder = Recorder()
    watcher = await start_watcher(tmp_path, recorder)
    path = tmp_path / "kept.mp4"
    path.write_bytes(b"first")
    assert (await recorder.next())[0] == path

    await watcher.rescan()
    await recorder.assert_silent()

    with path.open("ab") as f:
        f.write(b" and more")
    reported, digest = await recorder.next()
    assert reported == path
    assert digest == sha256(b"first and more")


async def test_file_in_flight_is_not_reported_twice_and_stop_waits_for_it(
    tmp_path: Path, start_watcher: MakeWatcher
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    calls: list[Path] = []

    async def slow(path: Path) -> None:
        calls.append(path)
        entered.set()
        await release.wait()

    watcher = await start_watcher(tmp_path, slow)
    path = tmp_path / "busy.mp4"
    path.write_bytes(b"one")
    await asyncio.wait_for(entered.wait(), WAIT_S)
    try:
        with path.open("ab") as f:
            f.write(b" two")
        await asyncio.sleep(SETTLE_S)
        assert calls == [path]

        stopping = asyncio.create_task(watcher.stop())
        await asyncio.sleep(CHECK_S)
        assert not stopping.done(), "stop() returned while a callback was running"
    finally:
        release.set()
    await asyncio.wait_for(stopping, WAIT_S)


async def test_symlinks_are_ignored(
    tmp_path: Path, start_watcher: MakeWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0")
    (inbox / "before.mp4").symlink_to(secret)
    recorder = Recorder()
    watcher = await start_watcher(inbox, recorder)
    (inbox / "after.mp4").symlink_to(secret)
    await watcher.rescan()
    (inbox / "sentinel.mp4").write_bytes(b"video")

    assert (await recorder.next())[0].name == "sentinel.mp4"
    await recorder.assert_silent()
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "before.mp4" in logged
    assert "after.mp4" in logged


@pytest.mark.parametrize("recursive", [False, True])
async def test_subdirectories_only_when_recursive(
    tmp_path: Path, start_watcher: MakeWatcher, recursive: bool
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".sync").mkdir()
    (tmp_path / "sub" / "old.mp4").write_bytes(b"old")
    recorder = Recorder()
    watcher = await start_watcher(tmp_path, recorder, recursive=recursive)
    (tmp_path / "sub" / "new.mp4").write_bytes(b"new")
    (tmp_path / ".sync" / "hidden.mp4").write_bytes(b"hidden")
    await watcher.rescan()
    (tmp_path / "sentinel.mp4").write_bytes(b"video")

    reported = set()
    expected = {"sentinel.mp4", "sub/old.mp4", "sub/new.mp4"} if recursive else {"sentinel.mp4"}
    for _ in expected:
        reported.add((await recorder.next())[0].relative_to(tmp_path).as_posix())

    assert reported == expected
    await recorder.assert_silent()
