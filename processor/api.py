"""The HTTP API: health and read access to jobs and verdicts."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web
from sqlalchemy import Engine

from processor.config import Config
from processor.verdict import overall_verdict, result_document
from processor.worker import Worker
from storage.db import ping
from storage.queue import JobQueue, JobState, JobView

QUEUE = web.AppKey("queue", JobQueue)
ENGINE = web.AppKey("engine", Engine)
WORKER: web.AppKey[Worker | None] = web.AppKey("worker")

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def error(status: int, code: str, message: str) -> web.HTTPException:
    """One JSON error shape for every endpoint."""
    exc = web.HTTPException(
        text=web.json_response({"error": {"code": code, "message": message}}).text,
        content_type="application/json",
    )
    exc.set_status(status)
    return exc


def job_document(job: JobView) -> dict[str, Any]:
    """A job as the API shows it."""
    return {
        "id": job.id,
        "state": job.state.value,
        "sha256": job.video_sha256,
        "source": {"kind": job.source_kind, "ref": job.source_ref, "inbox": job.inbox},
        "detectors": job.detectors,
        "priority": job.priority,
        "attempts": job.attempts,
        "cached": job.cached,
        "error": (
            {"code": job.error_code, "message": job.error_message} if job.error_code else None
        ),
        "output_path": job.output_path,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "verdict": overall_verdict(job.results) if job.state is JobState.DONE else None,
        "results": [result_document(r) for r in job.results],
    }


async def health(request: web.Request) -> web.Response:
    """Ready when the database answers; reports queue counts."""
    queue = request.app[QUEUE]
    try:
        await asyncio.to_thread(ping, request.app[ENGINE])
        counts = await asyncio.to_thread(queue.counts)
    except Exception as exc:  # any failure to reach the database means not ready
        return web.json_response(
            {"status": "unhealthy", "database": f"unreachable: {type(exc).__name__}"},
            status=503,
        )
    worker = request.app[WORKER]
    body: dict[str, Any] = {"status": "healthy", "database": "ok", "jobs": counts}
    if worker is not None:
        body["worker"] = {"id": worker.worker_id, "held_jobs": len(worker.held)}
        body["detectors"] = {
            key: {"version": det.version, "weights": det.weights_id}
            for key, det in worker.pipeline.detectors.items()
        }
    return web.json_response(body)


async def get_job(request: web.Request) -> web.Response:
    """One job with its results."""
    job_id = request.match_info["job_id"]
    if not _JOB_ID.match(job_id):
        raise error(400, "bad_job_id", "a job id is 32 lowercase hex characters")
    job = await asyncio.to_thread(request.app[QUEUE].get, job_id)
    if job is None:
        raise error(404, "job_not_found", f"no job {job_id}")
    return web.json_response(job_document(job))


async def list_jobs(request: web.Request) -> web.Response:
    """Newest first, with cursor pagination (``?before=<job id>``)."""
    state_arg = request.query.get("state")
    try:
        state = JobState(state_arg) if state_arg else None
        limit = int(request.query.get("limit", "50"))
    except ValueError as exc:
        raise error(400, "bad_query", str(exc)) from exc
    if not 1 <= limit <= 500:
        raise error(400, "bad_query", "limit must be between 1 and 500")
    before = request.query.get("before")
    if before is not None and not _JOB_ID.match(before):
        raise error(400, "bad_query", "before must be a job id")
    jobs = await asyncio.to_thread(
        lambda: request.app[QUEUE].list(state=state, limit=limit, before=before)
    )
    return web.json_response(
        {
            "jobs": [job_document(j) for j in jobs],
            "next": jobs[-1].id if len(jobs) == limit else None,
        }
    )


async def get_video(request: web.Request) -> web.Response:
    """Have we seen these exact bytes, and what did we say?"""
    sha = request.match_info["sha256"].lower()
    if not _SHA256.match(sha):
        raise error(400, "bad_sha256", "a sha256 is 64 hex characters")
    queue = request.app[QUEUE]
    video = await asyncio.to_thread(queue.get_video, sha)
    if video is None:
        raise error(404, "video_not_found", "these bytes have never been seen")
    jobs = await asyncio.to_thread(queue.jobs_for_video, sha)
    return web.json_response(
        {
            "sha256": sha,
            "size_bytes": video.size_bytes,
            "first_seen": video.first_seen.isoformat(),
            "jobs": [job_document(j) for j in jobs],
        }
    )


def init_app(
    config: Config, queue: JobQueue, engine: Engine, worker: Worker | None
) -> web.Application:
    """The aiohttp application over an open queue."""
    app = web.Application()
    app[QUEUE] = queue
    app[ENGINE] = engine
    app[WORKER] = worker
    app.router.add_get("/health", health)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_get("/v1/videos/{sha256}", get_video)
    return app
