"""Watch folder ingest: turn files that have finished arriving into `on_stable` callbacks.

Events alone are not trusted: inotify drops events when its queue overflows and network shares
deliver none for remote writers. Events, a startup scan and a periodic rescan all feed one
candidate table, and a file is handed over only once it has been quiet and its size and mtime
have stopped changing. Where inotify reports writes, a file written to is also held until its
writer closes it (IN_CLOSE_WRITE), so a writer that pauses longer than the quiet period is not
read half-way; ``open_write_wait_s`` bounds that wait for a writer that never closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from time import monotonic

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

logger = logging.getLogger(__name__)

_JUNK_PREFIXES = (".", "~$")
_JUNK_SUFFIXES = (
    ".part",
    ".partial",
    ".tmp",
    ".temp",
    ".crdownload",
    ".download",
    ".swp",
    ".verdict.json",
    ".error.json",
)
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})

# (st_size, st_mtime_ns) of a regular file
_Signature = tuple[int, int]


def is_junk(name: str) -> bool:
    """Whether a file name is a temp, hidden, partial or sidecar file that must never be a job."""
    lower = name.lower()
    return name.startswith(_JUNK_PREFIXES) or lower.endswith(_JUNK_SUFFIXES) or lower in _JUNK_NAMES


@dataclass
class _Candidate:
    last_event: float
    signature: _Signature | None = None
    changed_at: float = 0.0
    writing: bool = False  # written to since the last close-after-write (inotify only)


@dataclass(frozen=True)
class _HandedOver:
    signature: _Signature
    at: float


def _lstat_all(paths: Iterable[Path]) -> dict[Path, os.stat_result | None]:
    result: dict[Path, os.stat_result | None] = {}
    for path in paths:
        try:
            result[path] = path.lstat()
        except OSError:
            result[path] = None
    return result


class _EventForwarder(FileSystemEventHandler):
    """Runs in the observer thread; hands wanted paths over to the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        wanted: Callable[[Path], bool],
        touched: Callable[[Path], None],
        gone: Callable[[Path], None],
        written: Callable[[Path], None],
        closed: Callable[[Path], None],
    ) -> None:
        self._loop = loop
        self._wanted = wanted
        self._touched = touched
        self._gone = gone
        self._written = written
        self._closed = closed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            self._forward(self._gone, event.src_path)
            self._forward(self._touched, event.dest_path)
        elif isinstance(event, FileDeletedEvent):
            self._forward(self._gone, event.src_path)
        elif isinstance(event, FileModifiedEvent):
            self._forward(self._written, event.src_path)
        elif isinstance(event, FileClosedEvent):
            self._forward(self._closed, event.src_path)
        else:
            self._forward(self._touched, event.src_path)

    def _forward(self, target: Callable[[Path], None], raw: bytes | str) -> None:
        path = Path(os.fsdecode(raw))
        if self._wanted(path):
            self._loop.call_soon_threadsafe(target, path)


class FolderWatcher:
    """Report each file in `folder` once it has stopped changing, via `await on_stable(path)`."""

    def __init__(
        self,
        folder: Path,
        on_stable: Callable[[Path], Awaitable[None]],
        *,
        quiet_s: float = 2.0,
        check_interval_s: float = 0.5,
        rescan_s: float = 60.0,
        polling: bool = False,
        polling_interval_s: float = 1.0,
        recursive: bool = False,
        open_write_wait_s: float = 600.0,
    ) -> None:
        self._folder = folder.absolute()
        self._open_write_wait_s = open_write_wait_s
        self._on_stable = on_stable
        self._quiet_s = quiet_s
        self._check_interval_s = check_interval_s
        self._rescan_s = rescan_s
        self._polling = polling
        self._polling_interval_s = polling_interval_s
        self._recursive = recursive
        self._candidates: dict[Path, _Candidate] = {}
        self._in_flight: dict[Path, asyncio.Task[None]] = {}
        self._handed_over: dict[Path, _HandedOver] = {}
        self._observer: BaseObserver | None = None
        self._checker: asyncio.Task[None] | None = None
        self._rescanner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the observer, scan the folder once, then check and rescan periodically."""
        observer: BaseObserver = (
            PollingObserver(timeout=self._polling_interval_s) if self._polling else Observer()
        )
        # The polling observer reports modifications from snapshots and never a close: there
        # a write is only a touch, and the quiet period alone decides.
        written = self._touched if self._polling else self._written
        observer.schedule(
            _EventForwarder(
                asyncio.get_running_loop(),
                self._wanted,
                self._touched,
                self._gone,
                written,
                self._closed,
            ),
            str(self._folder),
            recursive=self._recursive,
            event_filter=[
                FileCreatedEvent,
                FileModifiedEvent,
                FileClosedEvent,
                FileMovedEvent,
                FileDeletedEvent,
            ],
        )
        # Starting takes the polling observer's first snapshot, or adds the inotify watches, in
        # the calling thread: a whole tree's worth of I/O on a big or remote folder.
        await asyncio.to_thread(observer.start)
        self._observer = observer
        # Scan after the observer is up, so a file arriving in between is seen by one of them.
        await self.rescan()
        self._checker = asyncio.create_task(self._check_loop(), name=f"ingest:{self._folder}")
        self._rescanner = asyncio.create_task(
            self._rescan_loop(), name=f"ingest-rescan:{self._folder}"
        )
        logger.info(
            "watching %s (%s)",
            self._folder,
            f"polling every {self._polling_interval_s} s" if self._polling else "inotify",
        )

    async def stop(self) -> None:
        """Stop watching and wait for callbacks already running to finish."""
        for task in (self._rescanner, self._checker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._rescanner = self._checker = None
        if self._observer is not None:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join)
            self._observer = None
        await asyncio.gather(*self._in_flight.values())
        self._candidates.clear()

    async def rescan(self) -> None:
        """Add every regular, non-junk file in the folder as a candidate."""
        started = monotonic()
        found = set(await asyncio.to_thread(self._scan))
        now = monotonic()
        for path in found:
            self._candidates.setdefault(path, _Candidate(last_event=now))
        # Forget handed-over files that are gone, so a new file of the same name, size and mtime
        # (cp -p, rsync -t) is a job again. Entries newer than the scan may simply be unlisted.
        for path, handed in list(self._handed_over.items()):
            if handed.at < started and path not in found:
                del self._handed_over[path]

    def _wanted(self, path: Path) -> bool:
        """Whether an event path is a non-junk file this watcher covers (thread-safe)."""
        try:
            parts = path.relative_to(self._folder).parts
        except ValueError:
            return False
        if not parts or (len(parts) > 1 and not self._recursive):
            return False
        return not any(is_junk(part) for part in parts)

    def _scan(self) -> list[Path]:
        found: list[Path] = []
        pending = [self._folder]
        while pending:
            directory = pending.pop()
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        if is_junk(entry.name):
                            continue
                        if entry.is_symlink():
                            logger.warning("ignoring symlink %s", entry.path)
                        elif entry.is_dir(follow_symlinks=False):
                            if self._recursive:
                                pending.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            found.append(Path(entry.path))
            except OSError:
                # A share that is briefly unreachable must not kill the periodic job.
                logger.warning("cannot scan %s", directory, exc_info=True)
        return found

    def _touched(self, path: Path) -> None:
        candidate = self._candidates.get(path)
        if candidate is None:
            self._candidates[path] = _Candidate(last_event=monotonic())
        else:
            candidate.last_event = monotonic()

    def _written(self, path: Path) -> None:
        self._touched(path)
        self._candidates[path].writing = True

    def _closed(self, path: Path) -> None:
        self._touched(path)
        self._candidates[path].writing = False

    def _gone(self, path: Path) -> None:
        self._candidates.pop(path, None)
        self._handed_over.pop(path, None)

    async def _rescan_loop(self) -> None:
        # Each wait starts when the previous rescan ends, so a slow share is never scanned by
        # two rescans at once and a backlog of missed ones never runs back to back.
        while True:
            await asyncio.sleep(self._rescan_s)
            try:
                await self.rescan()
            except Exception:
                logger.exception(
                    "rescan of %s failed; trying again in %s s", self._folder, self._rescan_s
                )

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval_s)
            if self._candidates:
                await self._check()

    async def _check(self) -> None:
        # Quiet windows are measured from the time before the stats and changes are stamped with
        # the time after them, so a slow batch (a busy share) can only understate how long a
        # file has been quiet, never overstate it.
        checked_at = monotonic()
        paths = [path for path in self._candidates if path not in self._in_flight]
        stats = await asyncio.to_thread(_lstat_all, paths)
        seen_at = monotonic()
        for path, st in stats.items():
            candidate = self._candidates.get(path)
            if candidate is None:
                continue
            if st is None or not stat.S_ISREG(st.st_mode):
                if st is not None and stat.S_ISLNK(st.st_mode):
                    logger.warning("ignoring symlink %s", path)
                del self._candidates[path]
                continue
            signature = (st.st_size, st.st_mtime_ns)
            if signature != candidate.signature:
                candidate.signature = signature
                candidate.changed_at = seen_at
                continue
            if (
                checked_at - candidate.last_event < self._quiet_s
                or checked_at - candidate.changed_at < self._quiet_s
            ):
                continue
            if candidate.writing:
                if checked_at - candidate.last_event < self._open_write_wait_s:
                    continue  # its writer still has it open
                logger.warning(
                    "%s: written to and not closed for %.0f s; taking it as complete",
                    path,
                    checked_at - candidate.last_event,
                )
            del self._candidates[path]
            handed = self._handed_over.get(path)
            if handed is not None and handed.signature == signature:
                continue
            self._in_flight[path] = asyncio.create_task(
                self._hand_over(path, signature), name=f"ingest:{path}"
            )

    async def _hand_over(self, path: Path, signature: _Signature) -> None:
        try:
            await self._on_stable(path)
        except Exception:
            logger.exception("ingest callback failed for %s; the next rescan retries it", path)
            self._candidates.pop(path, None)
        else:
            self._handed_over[path] = _HandedOver(signature, monotonic())
        finally:
            del self._in_flight[path]
