"""What every API handler shares: the application state, the typed error, the job document and
the wait for a job to finish."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy import Engine

from detectors.errors import DrishtikshaError
from detectors.frames import DecodeLimits
from processor import documents
from processor.api.auth import Keyring, Principal
from processor.api.metrics import ApiMetrics
from processor.config import Config, Scope
from processor.lifecycle import Lifecycle
from processor.verdict import job_verdict_model, result_model
from processor.worker import Worker
from storage.queue import JobQueue, JobState, JobView

T = TypeVar("T")

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# What a person copies from a log line or a listing: a unique start of the id or hash.
JOB_ID_PREFIX = re.compile(r"^[0-9a-f]{8,32}$")
SHA256_PREFIX = re.compile(r"^[0-9a-f]{12,64}$")
FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})

# How often a request waiting on a job looks at its row: the worker may be another process, so
# the database is the only place its progress shows.
WAIT_POLL_S = 0.2


class ApiError(DrishtikshaError):
    """A request the API refuses or cannot serve, rendered as the route's error document."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        title: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = status in (429, 503)
        self.headers = headers or {}
        self.extra = extra or {}
        self.title = title  # the older service's short "error" text, for its routes


@dataclass
class ApiState:
    """Everything the handlers need, built once by ``init_app``."""

    config: Config
    queue: JobQueue
    engine: Engine
    worker: Worker | None
    lifecycle: Lifecycle
    keyring: Keyring
    metrics: ApiMetrics
    detector_keys: list[str]  # what the worker loads: the only keys a job may ask for
    max_upload_bytes: int
    limits: DecodeLimits  # what probing an upload checks
    device: str | None  # where this process's worker runs its detectors
    version: str
    uploads_active: int = 0
    uploads_by_client: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)


STATE = web.AppKey("drishtiksha_api", ApiState)
# The key that authorized the request, when keys are configured and the route needs one.
PRINCIPAL = web.RequestKey("drishtiksha_principal", Principal)


def may(request: web.Request, scope: Scope) -> bool:
    """Whether the request's key holds ``scope``; with no key configured, everyone does."""
    if request.app[STATE].keyring.open:
        return True
    principal = request.get(PRINCIPAL)
    return principal is not None and principal.may(scope)


# The API's blocking work runs on pools of its own, not on the event loop's default pool that
# a worker in the same process also uses: database and file calls on one, CPU-heavy work
# (hashing whole files, probing media, rendering annotated videos) on a small bounded one, so
# a long render never makes a database call, a heartbeat or a lease renewal wait. Threads
# start only when first needed.
_IO_POOL = ThreadPoolExecutor(16, "api-io")
CPU_THREADS = max(1, min(4, os.cpu_count() or 1))
_CPU_POOL = ThreadPoolExecutor(CPU_THREADS, "api-cpu")


async def io(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking database or file work off the event loop."""
    return await _run(_IO_POOL, fn, args)


async def cpu(fn: Callable[..., T], *args: Any) -> T:
    """Run CPU-heavy work off the event loop, at most ``CPU_THREADS`` at a time."""
    return await _run(_CPU_POOL, fn, args)


async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    # As asyncio.to_thread does: the call sees the caller's context variables.
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(
        pool, functools.partial(context.run, fn, *args)
    )


def iso(value: dt.datetime | None) -> str | None:
    """An aware datetime as ISO 8601 in UTC with a ``Z``, as the older service wrote it."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    """The current time as ``iso`` writes it, to the second."""
    return iso(dt.datetime.now(dt.UTC).replace(microsecond=0)) or ""


def job_document(job: JobView, *, paths: bool = True) -> dict[str, Any]:
    """A job as the API shows it; without ``paths``, the server's file paths (inbox file,
    done/ file) are cut to their file names, in the error message too."""
    ref, output, message = job.source_ref, job.output_path, job.error_message
    if not paths:
        server_paths = [p for p in (job.work_path, job.output_path) if p]
        if job.source_kind == "folder":
            server_paths.append(job.source_ref)
            ref = PurePath(job.source_ref).name
        output = PurePath(output).name if output else None
        for path in sorted(server_paths, key=len, reverse=True):
            message = message.replace(path, PurePath(path).name) if message else message
    return documents.Job(
        id=job.id,
        state=job.state,
        sha256=job.video_sha256,
        source=documents.JobSource(kind=job.source_kind, ref=ref, inbox=job.inbox),
        detectors=job.detectors,
        priority=job.priority,
        attempts=job.attempts,
        cached=job.cached,
        error=documents.JobError(code=job.error_code, message=message) if job.error_code else None,
        output_path=output,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        verdict=job_verdict_model(job),
        results=[result_model(r) for r in job.results],
    ).dump()


async def job_id_param(request: web.Request) -> str:
    """The ``{job_id}`` path parameter: a job id, or a unique start of one (8+ hex
    characters); 404 when no job matches, 409 when several do."""
    job_id = request.match_info["job_id"].lower()
    if not JOB_ID_PREFIX.match(job_id):
        raise ApiError(
            400, "bad_job_id", "a job id is 32 hex characters (or a unique start of 8 or more)"
        )
    if JOB_ID.match(job_id):
        return job_id
    matches = await io(request.app[STATE].queue.job_ids_starting, job_id, 2)
    if not matches:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    if len(matches) > 1:
        raise ApiError(
            409, "ambiguous_job_id", f"several jobs start with {job_id}; give more characters"
        )
    return matches[0]


async def wait_for_job(
    request: web.Request, queue: JobQueue, job_id: str, timeout_s: float
) -> JobView | None:
    """Poll the job's row until it is final or ``timeout_s`` passes; its latest view either
    way (None if it vanished). Stops early when the client has gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = await io(queue.get, job_id)
        if job is None or job.state in FINAL_STATES:
            return job
        remaining = deadline - time.monotonic()
        transport = request.transport
        if remaining <= 0 or transport is None or transport.is_closing():
            return job
        await asyncio.sleep(min(WAIT_POLL_S, remaining))
