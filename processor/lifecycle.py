"""Moving files through the inbox -> work -> done/failed lifecycle, with the job rows that make
each step recoverable after a crash.

The order of steps is what guarantees exactly one job per dropped file:
1. the file is renamed into ``work/<job id>/`` (atomic; the inbox no longer shows it);
2. the job row with that id is committed (enqueue is idempotent on the id);
3. when the job ends, its destination is committed (``output_path``) before the file moves;
4. the file moves, the sidecar is written, the job is marked finalized.
A crash between 1 and 2 leaves a work folder with no row: ``recover`` enqueues it. A crash in
3-4 leaves an unfinalized job: ``recover`` finishes the move.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from processor import fleet
from processor.blobs import S3Blobs, SourceChanged, SourceMissing, StoreUnavailable, Unreachable
from processor.config import BlobsConfig, Config, InboxConfig, QueueConfig, WebhooksConfig
from processor.files import (
    ERROR_SUFFIX,
    VERDICT_SUFFIX,
    fit_name,
    free_name,
    fsync_dir,
    move_no_overwrite,
    name_max,
    sha256_file,
    write_json_atomic,
)
from processor.verdict import error_document, refusal_document, verdict_document
from processor.webhooks import enqueue_for
from storage.errors import StorageError
from storage.queue import JobQueue, JobState, JobView

log = logging.getLogger(__name__)

_JOB_DIR_LEN = 32  # uuid4().hex
# How long one finalize may hold a job before another process may take it over (a crash
# mid-move is finished by the next sweep after this).
FINALIZE_HOLD_S = 60.0
KEPT_UPLOADS = "kept"  # <upload_dir>/kept/: ended uploads kept for playback and retry
# A file still being written changes between the stats around its hashing; after this many
# tries it is queued under the last hash, and finalize judges it again if it changed since.
_HASH_TRIES = 5
# While the object store cannot take an accepted file, its job waits in the work area and the
# upload is tried again, at most this long apart.
_STORE_RETRY_MAX_S = 60.0
_STORE_ERRORS = (Unreachable, StoreUnavailable, SourceChanged, SourceMissing)


def file_stat(path: Path) -> tuple[int, int]:
    """(size, mtime_ns): what changes when a writer adds to a file."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


class Lifecycle:
    """Creates jobs from inbox files and finalizes files of finished jobs."""

    def __init__(
        self,
        queue: JobQueue,
        inboxes: list[InboxConfig],
        queue_config: QueueConfig,
        on_enqueued: Callable[[], None] = lambda: None,
        webhooks: WebhooksConfig | None = None,
        max_file_bytes: int | None = None,
        keep_uploads_bytes: int = 0,
        blobs: S3Blobs | None = None,
        blobs_config: BlobsConfig | None = None,
        host_name: str | None = None,
    ) -> None:
        self.queue = queue
        self.blobs = blobs
        self.blobs_config = blobs_config or BlobsConfig()
        # Jobs whose ``origin`` is another host are that host's to place; None places all.
        self.host_name = host_name
        self.max_file_bytes = max_file_bytes
        self.keep_uploads_bytes = keep_uploads_bytes
        self.inboxes = {inbox.name: inbox for inbox in inboxes}
        self.queue_config = queue_config
        self.on_enqueued = on_enqueued
        self.webhooks = webhooks if webhooks is not None and webhooks.targets else None
        # A backlog found by the startup scan arrives all at once; hashing a few files at a
        # time keeps memory and database contention bounded.
        self._accepting = asyncio.Semaphore(4)
        self._closing = asyncio.Event()
        self._retrying: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(
        cls, config: Config, queue: JobQueue, blobs: S3Blobs | None = None
    ) -> Lifecycle:
        """The lifecycle every process of a host shares, whatever its role."""
        return cls(
            queue,
            config.inboxes,
            config.queue,
            webhooks=config.webhooks,
            max_file_bytes=config.limits.max_file_bytes,
            keep_uploads_bytes=config.api.keep_uploads_bytes,
            blobs=blobs,
            blobs_config=config.blobs,
            host_name=config.host_name,
        )

    def mine(self, origin: str | None) -> bool:
        """Whether a job from ``origin`` has its files on this host (None: on any)."""
        return origin is None or self.host_name is None or origin == self.host_name

    def places(self, job: JobView) -> bool:
        """Whether this host places the job's files: it came from here, or it is an inbox file
        lying in this host's own work folder of that inbox (a folder shared between hosts with
        one configuration, or this host under a new name)."""
        if self.mine(job.origin):
            return True
        inbox = self.inboxes.get(job.inbox or "")
        if inbox is None or job.work_path is None:
            return False
        work_file = Path(job.work_path)
        return work_file.parent.parent == inbox.work and work_file.exists()

    def store(self, path: Path, sha256: str, size: int) -> str | None:
        """Put accepted bytes in the object store (when one is configured) before their job
        is committed, so a worker on any host can read them; the object's URL."""
        return None if self.blobs is None else self.blobs.put_file(path, sha256, size)

    def prepare_folders(self) -> None:
        """Create every configured folder (the work area must exist before the first move)."""
        for inbox in self.inboxes.values():
            for folder in (inbox.path, inbox.work, inbox.done, inbox.failed):
                folder.mkdir(parents=True, exist_ok=True)

    async def accept(self, inbox: InboxConfig, path: Path) -> None:
        """A stable file in ``inbox``: move it into the work area and queue its job."""
        async with self._accepting:
            size = (await asyncio.to_thread(path.lstat)).st_size
            if self.max_file_bytes is not None and size > self.max_file_bytes:
                # Refused before reading a byte: hashing a multi-GB file only to refuse it
                # would hold up every file behind it.
                await asyncio.to_thread(self._refuse_oversize, inbox, path, size)
                return
            job_id = uuid.uuid4().hex
            job_dir = inbox.work / job_id
            name = await asyncio.to_thread(self._claim_file, path, job_dir)
            await self._enqueue(inbox, job_dir / name, job_id, str(path.with_name(name)))

    def _refuse_oversize(self, inbox: InboxConfig, path: Path, size: int) -> None:
        """Move a file over ``limits.max_file_bytes`` to failed/ with its .error.json; no job
        is made (as an over-limit upload gets a 413), since its bytes were never read."""
        inbox.failed.mkdir(parents=True, exist_ok=True)
        name = utf8_name(inbox.failed, path.name)
        while True:
            dest = free_name(inbox.failed, name, ERROR_SUFFIX)
            try:
                move_no_overwrite(path, dest)
            except FileExistsError:
                continue
            break
        fsync_dir(inbox.failed)
        message = f"{size} bytes is over limits.max_file_bytes ({self.max_file_bytes})"
        doc = refusal_document(dest, str(path.with_name(name)), "file_too_large", message)
        write_json_atomic(dest.with_name(dest.name + ERROR_SUFFIX), doc)
        log.warning("refused %s: %s; moved to %s", dest.name, message, dest)

    @staticmethod
    def _claim_file(path: Path, job_dir: Path) -> str:
        """Move ``path`` into ``job_dir``; returns the name it has there (``utf8_name``)."""
        # The watcher skips symlinks, but one could replace the file after its last check; a
        # link to /etc/passwd must never be read as a video.
        if not stat.S_ISREG(path.lstat().st_mode):
            raise ValueError(f"{path} is no longer a regular file; left in place")
        name = utf8_name(job_dir.parent, path.name)
        job_dir.mkdir()
        try:
            move_no_overwrite(path, job_dir / name)
        except BaseException:
            job_dir.rmdir()
            raise
        fsync_dir(job_dir.parent)
        return name

    def close(self) -> None:
        """Stop waiting for the object store: files still waiting for it stay in the work
        area, unqueued, where the next start's recovery finds them."""
        self._closing.set()

    async def _enqueue(
        self,
        inbox: InboxConfig,
        work_file: Path,
        job_id: str,
        ref: str,
        *,
        background: bool = False,
    ) -> None:
        """Queue a file of the work area. While the object store refuses it, try again (at
        most a minute apart) until ``close``: in the background when ``background``, so that a
        store outage does not hold up start-up."""
        delay = 1.0
        while True:
            try:
                created, size, digest = await asyncio.to_thread(
                    self._queue_file, inbox, work_file, job_id, ref, list(inbox.detectors)
                )
                break
            except _STORE_ERRORS as exc:
                # The file waits in the work area, unqueued, until the store takes it.
                log.error(
                    "%s: the object store did not take it (%s); again in %.0f s", ref, exc, delay
                )
                if background:
                    retry = self._enqueue(inbox, work_file, job_id, ref)
                    task = asyncio.create_task(retry)
                    self._retrying.add(task)
                    task.add_done_callback(self._retrying.discard)
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
                if self._closing.is_set():
                    log.warning("%s: left in the work area, to be queued at the next start", ref)
                    return
                delay = min(delay * 2, _STORE_RETRY_MAX_S)
        if created:
            log.info("job %s queued: %s (%d bytes, sha256 %s)", job_id, ref, size, digest[:12])
            self.on_enqueued()

    def _queue_file(
        self,
        inbox: InboxConfig,
        work_file: Path,
        job_id: str,
        ref: str,
        detectors: list[str],
        hashed: tuple[tuple[int, int], str] | None = None,
    ) -> tuple[bool, int, str]:
        """Commit the job of a file in the work area, hashing it unless ``hashed`` (its
        ``_stable_hash``, taken already) is given; (created, size, sha256)."""
        (size, mtime_ns), digest = hashed or _stable_hash(work_file)
        blob_url = self.store(work_file, digest, size)
        created = self.queue.enqueue(
            job_id=job_id,
            sha256=digest,
            size_bytes=size,
            source_kind="folder",
            source_ref=ref,
            detectors=detectors,
            inbox=inbox.name,
            work_path=str(work_file),
            priority=inbox.priority,
            max_attempts=self.queue_config.max_attempts,
            file_stat=(size, mtime_ns),
            blob_url=blob_url,
            origin=self.host_name,
        )
        return created, size, digest

    async def recover(self) -> None:
        """Repair what a crash left half done: work folders without a job, and finished jobs
        whose files were not yet moved."""
        for inbox in self.inboxes.values():
            dirs = [
                d
                for d in inbox.work.iterdir()
                if d.is_dir() and len(d.name) == _JOB_DIR_LEN and not d.is_symlink()
            ]
            known = await asyncio.to_thread(self.queue.known_job_ids, [d.name for d in dirs])
            for job_dir in dirs:
                try:
                    orphan = await asyncio.to_thread(
                        self._recover_folder, job_dir, job_dir.name in known
                    )
                    if orphan is not None:
                        await self._enqueue(
                            inbox,
                            orphan,
                            job_dir.name,
                            str(inbox.path / orphan.name),
                            background=True,
                        )
                except Exception:
                    # One folder that cannot be repaired must not keep the daemon from starting.
                    log.exception("cannot recover %s; left as it is", job_dir)
        await self.sweep()

    def _recover_folder(self, job_dir: Path, known: bool) -> Path | None:
        """Repair one work folder; returns its file when it must be queued under the
        folder's id (moved there, never queued)."""
        files = [f for f in job_dir.iterdir() if f.is_file()]
        if known:
            if files:
                self._resume_retry(job_dir.name)
            return None
        if not files:
            # The crash came between mkdir and the rename: the file is still in the inbox.
            job_dir.rmdir()
            return None
        work_file = files[0]
        log.warning("recovering %s: moved to the work area but never queued", work_file)
        name = utf8_name(job_dir, work_file.name)
        if name != work_file.name:
            os.rename(work_file, job_dir / name)
        return job_dir / name

    def _resume_retry(self, job_id: str) -> None:
        """A retry moves a failed job's file back into its work folder, then queues the job; a
        crash in between leaves a finalized failed job with its file here: queue it now."""
        job = self.queue.get(job_id)
        if (
            job is not None
            and job.state in (JobState.FAILED, JobState.CANCELLED)
            and job.finalized_at is not None
            and job.work_path is not None
            and Path(job.work_path).is_file()
            and self.queue.retry(job_id)
        ):
            log.warning("job %s: finishing a retry that a crash interrupted", job_id)
            self.on_enqueued()

    async def sweep(self, finished_before: dt.datetime | None = None) -> None:
        """Finalize jobs that ended without their files being placed: at start-up all of them;
        while running, those that ended before ``finished_before`` (a job failed by
        ``max_attempts`` in some worker's claim, a move that failed for lack of space). One job
        that cannot be placed is logged and left for the next sweep; it never stops the rest."""
        for job in await asyncio.to_thread(self.queue.unfinalized, finished_before):
            try:
                await asyncio.to_thread(self.finalize, job)
            except Exception:
                log.exception("job %s: could not place its file; will try again", job.id)

    async def sweep_forever(self) -> None:
        """Run ``sweep`` every ``queue.finalize_sweep_s``, for jobs ended at least that long
        ago (the worker that ended a job normally places its file at once); meanwhile, every
        ``queue.heartbeat_s``, declare silent workers dead (``fleet.watch_forever``), so that
        their jobs come back even when no worker is left to notice."""
        period = self.queue_config.finalize_sweep_s
        watch = asyncio.create_task(fleet.watch_forever(self.queue, self.queue_config))
        try:
            while True:
                await asyncio.sleep(period)
                try:
                    await self.sweep(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=period))
                except StorageError as exc:
                    log.warning("finalize sweep failed, will retry: %s", exc)
                except Exception:
                    log.exception("finalize sweep failed, will retry")
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    def finalize(self, job: JobView) -> None:
        """Put a finished job's file where it belongs, queue its webhooks, and mark it
        finalized. Idempotent: a crash before the mark repeats it all at the next start (so a
        webhook may be sent twice; receivers dedupe)."""
        if not self.places(job):
            return  # another host's files: its own sweep places them
        # The worker that ended the job and the ingest side's sweep (in this process or
        # another) may reach the same job at once: only the one holding the claim moves it.
        if not self.queue.claim_finalize(job.id, FINALIZE_HOLD_S):
            return
        try:
            current = self.queue.get(job.id)
            if current is None or self._rejudge_if_changed(current):
                return
            self._place_file(current)
            self._write_back(current)
            if self.webhooks is not None:
                enqueue_for(self.queue, self.webhooks, current)
            self.queue.mark_finalized(current.id)
        except BaseException:
            # Failed, not crashed: the next sweep may try again at once.
            self.queue.release_finalize(job.id)
            raise

    def _write_back(self, job: JobView) -> None:
        """Store a done job's verdict document in the object store, for pipelines that read
        results from the bucket rather than the API."""
        where = self.blobs_config.verdicts
        if self.blobs is None or where == "off" or job.state is not JobState.DONE:
            return
        beside = job.blob_url if where == "beside" and job.source_kind == "s3" else None
        name = Path(job.output_path or job.work_path or job.source_ref).name
        doc = verdict_document(job, self.queue.get_video(job.video_sha256), Path(name))
        url = self.blobs.put_verdict(job.video_sha256, job.id, doc, beside)
        log.info("job %s: verdict stored at %s", job.id, url)

    def _keep_upload(self, job: JobView, copy: Path) -> None:
        """Keep the API's copy of an ended upload under ``<upload_dir>/kept/`` (the desk plays
        it, a failed one can be retried), then delete the oldest kept copies past
        ``keep_uploads_bytes``. The original stays with the client, so this is a cache."""
        kept = copy.parent / KEPT_UPLOADS / copy.name
        if copy.exists():
            kept.parent.mkdir(exist_ok=True)
            os.replace(copy, kept)  # server-chosen names: <job id>.video, never a user's
            self.queue.set_output_path(job.id, str(kept))
        log.info("job %s %s: upload %s kept", job.id, job.state.value, job.source_ref)
        _prune_oldest(kept.parent, self.keep_uploads_bytes)

    def _rejudge_if_changed(self, job: JobView) -> bool:
        """An inbox file that changed after its sha256 was taken (a writer that paused longer
        than ``quiet_s``, then went on) was judged on bytes that are no longer there. Then the
        file becomes a new job under its new hash, and this job ends without a file or sidecar:
        no verdict is ever written beside bytes other than those it judged."""
        if job.source_kind != "folder" or job.file_stat is None or job.work_path is None:
            return False
        if job.state is JobState.CANCELLED or job.output_path is not None:
            return False  # cancelled jobs are not judged; a placed file was checked already
        inbox = self.inboxes.get(job.inbox or "")
        work_file = Path(job.work_path)
        try:
            now = file_stat(work_file)
        except FileNotFoundError:
            return False
        if inbox is None or now == job.file_stat:
            return False
        hashed = _stable_hash(work_file)
        if hashed[1] == job.video_sha256:
            return False  # touched, not changed
        new_id = uuid.uuid4().hex
        new_file = inbox.work / new_id / work_file.name
        self._claim_file(work_file, new_file.parent)
        # The old job ends first: a crash before the new row is committed leaves a work folder
        # with no job, which start-up queues (``recover``); the other order could leave the old
        # job to be placed again, without its file.
        self.queue.mark_finalized(job.id)
        # A rename keeps the size and mtime, so the hash taken above still belongs to the file.
        _, size, digest = self._queue_file(
            inbox, new_file, new_id, job.source_ref, list(job.detectors), hashed
        )
        with contextlib.suppress(OSError):
            os.rmdir(work_file.parent)
        log.warning(
            "job %s: %s changed after it was hashed (%d -> %d bytes); judging it again as "
            "job %s (sha256 %s)",
            job.id,
            job.source_ref,
            job.file_stat[0],
            size,
            new_id,
            digest[:12],
        )
        self.on_enqueued()
        return True

    def _place_file(self, job: JobView) -> None:
        """Move the file to done/ or failed/ with its sidecar, or drop our own copy."""
        if job.source_kind == "upload" and job.work_path is not None and self.keep_uploads_bytes:
            self._keep_upload(job, Path(job.work_path))
            return
        if job.source_kind in ("upload", "s3") and job.work_path is not None:
            # The API's own copy of an uploaded video, or the download of an S3 object: the
            # verdict lives in the database and the original stays with the client or in the
            # bucket, so the copy goes once the job is over.
            Path(job.work_path).unlink(missing_ok=True)
            if job.source_kind == "s3":
                with contextlib.suppress(OSError):
                    os.rmdir(Path(job.work_path).parent)  # the download's own work/<job id>/
            log.info("job %s %s: %s %s", job.id, job.state.value, job.source_kind, job.source_ref)
            return
        inbox = self.inboxes.get(job.inbox or "")
        if job.work_path is None or inbox is None:
            # Not an inbox file (or its inbox was removed from the config): nothing to move.
            return
        ok = job.state is JobState.DONE
        folder, suffix = (inbox.done, VERDICT_SUFFIX) if ok else (inbox.failed, ERROR_SUFFIX)
        folder.mkdir(parents=True, exist_ok=True)
        work_file = Path(job.work_path)
        dest = Path(job.output_path) if job.output_path else None
        while work_file.exists():
            if dest is not None and dest.exists() and os.path.samefile(dest, work_file):
                # A crash between link and unlink in move_no_overwrite: finish the move.
                work_file.unlink()
                break
            if dest is None or dest.exists():
                dest = free_name(folder, work_file.name, suffix)
                self.queue.set_output_path(job.id, str(dest))
            try:
                move_no_overwrite(work_file, dest)
            except FileExistsError:
                continue  # another process took the name between the check and the move
            fsync_dir(folder)
        if dest is None or not dest.exists():
            log.error("job %s: file %s is missing; writing the sidecar only", job.id, work_file)
            dest = dest or folder / work_file.name
        video = self.queue.get_video(job.video_sha256)
        doc = verdict_document(job, video, dest) if ok else error_document(job, dest)
        write_json_atomic(dest.with_name(dest.name + suffix), doc)
        with contextlib.suppress(OSError):
            os.rmdir(work_file.parent)
        log.info("job %s %s: %s -> %s", job.id, job.state.value, job.source_ref, dest)


def _stable_hash(path: Path) -> tuple[tuple[int, int], str]:
    """The file's sha256 and its (size, mtime_ns) as it was when that hash began. A file that
    changes while being hashed is hashed again; one that never holds still is recorded with
    the stat of its last hash, which then no longer matches, so finalize judges it again."""
    after = file_stat(path)
    for _ in range(_HASH_TRIES):
        before = after
        digest = sha256_file(path)
        after = file_stat(path)
        if after == before:
            break
    return before, digest


def _prune_oldest(folder: Path, max_bytes: int) -> None:
    """Delete the least recently kept files in ``folder`` until they total ``max_bytes``."""
    files = []
    for entry in os.scandir(folder):
        with contextlib.suppress(FileNotFoundError):
            if entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                files.append((st.st_mtime_ns, st.st_size, Path(entry.path)))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
        log.info("deleted kept upload %s (over api.keep_uploads_bytes)", path.name)


def utf8_name(folder: Path, name: str) -> str:
    """``name`` as it can be recorded: a name whose bytes are not UTF-8 (the database, the
    sidecar's JSON and the API all need text) gets U+FFFD for each bad byte, fitted to the
    filesystem's limit in ``folder``; any other name is kept as it is."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        fixed = os.fsencode(name).decode("utf-8", "replace")
        stem, suffix = os.path.splitext(fixed)
        return fit_name(stem, suffix, name_max(folder))
    return name
