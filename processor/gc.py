"""Clean-up of what the daemon keeps only for a while: bytes workers fetched, renderings for the
API, the upload area's leftovers, and downloads of S3 objects whose jobs are over. Nothing a
running job still reads is removed, and never a user's own file (inbox, done/, failed/)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from processor.config import Config
from storage.queue import JobQueue, JobState

log = logging.getLogger(__name__)

_JOB_DIR_LEN = 32  # uuid4().hex, as the work areas name their folders


@dataclass(frozen=True)
class Removed:
    path: Path
    why: str


def prune_scratch(scratch: Path, queue: JobQueue, *, dry_run: bool = False) -> list[Removed]:
    """Fetched bytes of jobs that no longer run (a worker killed mid-job leaves its copy)."""
    if not scratch.is_dir():
        return []
    folders = [d for d in scratch.iterdir() if d.is_dir() and not d.is_symlink()]
    removed = []
    for folder in folders:
        job = queue.get(folder.name.split("-", 1)[0])  # <job id>-<pid> (blobs.scratch_dir)
        if job is not None and job.state is JobState.RUNNING:
            continue  # a worker may be reading it right now
        removed.append(Removed(folder, "fetched bytes of a job no longer running"))
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
    return removed


def collect(config: Config, queue: JobQueue, *, dry_run: bool = False) -> list[Removed]:
    """Everything ``drishtiksha gc`` removes (or, with ``dry_run``, would remove)."""
    # Imported here: the worker uses prune_scratch, and the API modules import the worker.
    from processor.api import uploads as api_uploads
    from processor.api.native import ARTEFACTS_DIR, prune_artefacts

    removed = prune_scratch(config.blobs.scratch, queue, dry_run=dry_run)
    for source in config.sqs:
        removed += _finished_downloads(source.work, queue, dry_run=dry_run)
    if not dry_run:
        api = config.api
        artefacts = api.upload_dir.parent / ARTEFACTS_DIR
        count = prune_artefacts(
            artefacts, api.artefacts_max_files, api.artefacts_max_bytes, artefacts
        )
        if count:
            removed.append(Removed(artefacts, f"{count} renderings past the configured limits"))
        count = api_uploads.sweep(api.upload_dir, queue.known_job_ids)
        if count:
            removed.append(Removed(api.upload_dir, f"{count} stale partial or unqueued uploads"))
    return removed


def _finished_downloads(work: Path, queue: JobQueue, *, dry_run: bool) -> list[Removed]:
    """Downloads of S3 objects whose jobs were finalized but not cleaned (a crash between)."""
    if not work.is_dir():
        return []
    folders = [d for d in work.iterdir() if d.is_dir() and len(d.name) == _JOB_DIR_LEN]
    removed = []
    for folder in folders:
        job = queue.get(folder.name)
        if job is None or job.finalized_at is None:
            continue  # not queued yet (being downloaded) or still open
        removed.append(Removed(folder, "download of a finished S3 job"))
        if not dry_run:
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)
    return removed


async def gc_forever(config: Config, queue: JobQueue) -> None:
    """Run ``collect`` every ``queue.gc_interval_s`` until cancelled."""
    while True:
        await asyncio.sleep(config.queue.gc_interval_s)
        try:
            for item in await asyncio.to_thread(collect, config, queue):
                log.info("removed %s: %s", item.path, item.why)
        except Exception:
            log.exception("clean-up failed; will try again in %.0f s", config.queue.gc_interval_s)
