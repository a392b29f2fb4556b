"""Running a failed or cancelled job again: its file back into the work area, then its row back
in the queue. Shared by ``drishtiksha jobs retry`` and ``POST /v1/jobs/{id}/retry``.

The file moves first: a job is queued again only once its file is where a worker reads it, and
a crash between the two leaves the file in ``work/<job id>/``, where the next retry finds it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

from processor.files import ERROR_SUFFIX, fsync_dir, move_no_overwrite
from storage.queue import JobQueue, JobState, JobView

log = logging.getLogger(__name__)

RETRYABLE = frozenset({JobState.FAILED, JobState.CANCELLED})


class RetryRefused(Exception):
    """The job cannot be run again; ``code`` says why (``job_not_found``, ``not_retryable``,
    ``not_finalized``, ``file_gone``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def retry_job(queue: JobQueue, inboxes: Collection[str], job_id: str) -> JobView:
    """Queue ``job_id`` again with its attempts reset; the job as it is now. ``inboxes``: the
    names of the configured inboxes (a folder job's file goes back only to a known one)."""
    job = queue.get(job_id)
    if job is None:
        raise RetryRefused("job_not_found", f"no job {job_id}")
    if job.state not in RETRYABLE:
        raise RetryRefused(
            "not_retryable",
            f"job {job_id} is {job.state.value}; only a failed or cancelled job can be retried",
        )
    if job.finalized_at is None:
        # Its file is still on its way to failed/; taking it now would race that move.
        raise RetryRefused(
            "not_finalized", f"job {job_id} is still being finalized; try again shortly"
        )
    _take_file_back(job, inboxes)
    if not queue.retry(job_id):
        raise RetryRefused("not_retryable", f"job {job_id} was retried by someone else meanwhile")
    error = f"{job.error_code}: {job.error_message}" if job.error_code else "no error recorded"
    log.info("job %s queued again by retry (was %s, %s)", job_id, job.state.value, error)
    retried = queue.get(job_id)
    assert retried is not None  # jobs are never deleted
    return retried


def _take_file_back(job: JobView, inboxes: Collection[str]) -> None:
    """Make the job's file lie at its work path again: moved back from failed/ (its error
    sidecar removed) for a folder job, or from the kept uploads for an upload; refused when
    the file is gone."""
    if job.work_path is None:
        raise RetryRefused("file_gone", f"job {job.id} has no file of its own to run again")
    work = Path(job.work_path)
    if job.source_kind == "folder" and job.inbox not in inboxes:
        raise RetryRefused(
            "file_gone",
            f"job {job.id}: its inbox {job.inbox!r} is no longer configured, so nothing would "
            "put its file in done/ or failed/ after the run",
        )
    if work.is_file():
        return  # a retry stopped between moving the file back and queueing the job
    if job.source_kind not in ("folder", "upload") or job.output_path is None:
        raise RetryRefused(
            "file_gone",
            f"job {job.id}: its file {work} is gone ({job.source_kind} copies are removed when "
            "their job ends); submit the video again",
        )
    kept = Path(job.output_path)
    if not kept.is_file():
        raise RetryRefused("file_gone", f"job {job.id}: its file is no longer at {kept}")
    work.parent.mkdir(parents=True, exist_ok=True)
    move_no_overwrite(kept, work)
    fsync_dir(work.parent)
    # The sidecar described the failure being undone; the log line of the retry keeps it.
    # (A kept upload has none.)
    kept.with_name(kept.name + ERROR_SUFFIX).unlink(missing_ok=True)
