"""The native API: jobs and verdicts under ``/v1``, plus ``/health`` and ``/metrics``."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from detectors import registry
from detectors.base import Label
from detectors.errors import MediaError, TransientError
from processor import retry
from processor.api.common import (
    JOB_ID,
    SHA256,
    SHA256_PREFIX,
    STATE,
    ApiError,
    ApiState,
    cpu,
    io,
    job_document,
    job_id_param,
    may,
    now_iso,
    wait_for_job,
)
from processor.api.uploads import (
    check_video,
    client_of,
    discard,
    enqueue,
    receive,
    upload_slot,
)
from processor.files import sha256_file
from processor.verdict import (
    explained,
    frames_document,
    overall_verdict,
    result_document,
    video_document,
)
from storage.db import ping
from storage.errors import StorageError
from storage.queue import JobState, StoredResult, WorkerView

log = logging.getLogger(__name__)

_LABELS = tuple(label.value for label in Label)
_SOURCE_KIND = re.compile(r"^[a-z0-9_]{1,16}$")
_DETECTOR_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PRIORITY_RANGE = (-1_000_000, 1_000_000)
_MAX_LIMIT = 500
# Rendered visualisations live in <upload_dir's parent>/artefacts/<job id>/ (var/artefacts by
# default): beside the server's own upload area, never in an inbox or done/ folder users own.
ARTEFACTS_DIR = "artefacts"


def requested_detectors(state: ApiState, arg: str | None) -> list[str]:
    """``?detectors=a,b`` checked against the detectors the worker loads; default: the first
    inbox's list."""
    if arg is None:
        return list(state.config.inboxes[0].detectors)
    # Exactly what /openapi.json says: keys joined by commas, nothing empty, no spaces.
    keys = arg.split(",")
    unknown = [k for k in keys if k not in state.detector_keys]
    if unknown:
        raise ApiError(
            400,
            "unknown_detector",
            f"unknown or unloaded detectors {unknown}; give keys joined by commas from "
            f"{', '.join(state.detector_keys)}",
        )
    return list(dict.fromkeys(keys))


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_query", f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, "bad_query", f"{name} must be between {lo} and {hi}")
    return value


def _seconds_param(request: web.Request, name: str, cap: float) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "bad_query", f"{name} must be a number of seconds") from None
    if not 0 <= value <= cap:
        raise ApiError(400, "bad_query", f"{name} must be between 0 and {cap:g} seconds")
    return value


def _time_param(request: web.Request, name: str) -> dt.datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, "bad_query", f"{name} must be an ISO 8601 date and time") from None
    # A time without an offset is taken as UTC, the time zone of every stored timestamp.
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def loaded_detectors(workers: list[WorkerView]) -> dict[str, list[dict[str, Any]]]:
    """What the live workers sharing the database have loaded, per detector key: each one's
    version, weights, device and frames, as published in its heartbeat. The database is what
    every process of every role sees alike, so the API answers from it, not from a worker of
    its own."""
    loaded: dict[str, list[dict[str, Any]]] = {}
    for worker in workers:
        caps = worker.capabilities or {}
        if not worker.alive:
            continue
        for key, published in (caps.get("detectors") or {}).items():
            if not isinstance(published, dict) or "version" not in published:
                continue  # a document this release does not know how to read
            loaded.setdefault(key, []).append({**published, "device": caps.get("device")})
    return loaded


def _cached(state: ApiState, sha256: str, detectors: list[str]) -> list[StoredResult] | None:
    """Stored results for these bytes from every detector at a version and weights a live
    worker has loaded (what a new job would be judged with), or None."""
    loaded = loaded_detectors(state.queue.workers(state.config.queue.lease_s))
    classes = registry.available()
    hits: list[StoredResult] = []
    for key in detectors:
        final = classes[key].final_abstentions if key in classes else frozenset[str]()
        hit = next(
            (
                found
                for d in loaded.get(key, [])
                if (
                    found := state.queue.find_cached(
                        sha256, key, str(d["version"]), str(d["weights_id"]), final
                    )
                )
                is not None
            ),
            None,
        )
        if hit is None:
            return None
        hits.append(hit)
    return hits


async def submit_job(request: web.Request) -> web.Response:
    """POST /v1/jobs: upload a video and queue it (or answer from stored results)."""
    state = request.app[STATE]
    detectors = requested_detectors(state, request.query.get("detectors"))
    priority = _int_param(request, "priority", 0, *_PRIORITY_RANGE)
    wait_s = _seconds_param(request, "wait", state.config.api.request_timeout_s)
    with upload_slot(state, client_of(request)):
        upload = await receive(request, state)
    hits = await io(_cached, state, upload.sha256, detectors)
    if hits is not None:
        await discard(upload)
        return web.json_response(
            {
                "cached": True,
                "sha256": upload.sha256,
                "detectors": detectors,
                "verdict": explained(overall_verdict(hits, state.config.fusion), hits),
                "results": [
                    result_document(h) | {"cached_from_job": h.cached_from_job or h.job_id}
                    for h in hits
                ],
            },
            status=200,
        )
    await check_video(upload, state.limits)
    await enqueue(state, upload, detectors, priority)
    job = await io(state.queue.get, upload.job_id)
    if wait_s:
        job = await wait_for_job(request, state.queue, upload.job_id, wait_s)
    if job is None:
        raise ApiError(500, "job_vanished", f"job {upload.job_id} was queued but is gone")
    return web.json_response(
        job_document(job, paths=may(request, "admin")),
        status=201,
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


async def get_job(request: web.Request) -> web.Response:
    """GET /v1/jobs/{job_id}."""
    state = request.app[STATE]
    job_id = await job_id_param(request)
    job = await io(state.queue.get, job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    return web.json_response(job_document(job, paths=may(request, "admin")))


async def list_jobs(request: web.Request) -> web.Response:
    """GET /v1/jobs: newest first, filtered, with a cursor (``?before=<job id>``)."""
    state = request.app[STATE]
    q = request.query
    try:
        job_state = JobState(q["state"]) if "state" in q else None
    except ValueError:
        choices = ", ".join(s.value for s in JobState)
        raise ApiError(400, "bad_query", f"state must be one of {choices}") from None
    label = q["label"].upper() if "label" in q else None
    if label is not None and label not in _LABELS:
        raise ApiError(400, "bad_query", f"label must be one of {', '.join(_LABELS)}")
    detector = q.get("detector")
    if detector is not None and not _DETECTOR_KEY.match(detector):
        raise ApiError(400, "bad_query", "detector must be a detector key")
    source_kind = q.get("source_kind")
    if source_kind is not None and not _SOURCE_KIND.match(source_kind):
        raise ApiError(400, "bad_query", "source_kind must be a word such as folder or upload")
    before = q.get("before")
    if before is not None and not JOB_ID.match(before):
        raise ApiError(400, "bad_query", "before must be a job id")
    limit = _int_param(request, "limit", 50, 1, _MAX_LIMIT)
    since, until = _time_param(request, "since"), _time_param(request, "until")
    jobs = await io(
        lambda: state.queue.list(
            state=job_state,
            limit=limit,
            before=before,
            label=label,
            detector=detector,
            source_kind=source_kind,
            since=since,
            until=until,
        )
    )
    return web.json_response(
        {
            "jobs": [job_document(j, paths=may(request, "admin")) for j in jobs],
            "next": jobs[-1].id if len(jobs) == limit else None,
        }
    )


async def cancel_job(request: web.Request) -> web.Response:
    """DELETE /v1/jobs/{job_id}: cancel a queued job."""
    state = request.app[STATE]
    job_id = await job_id_param(request)
    cancelled = await io(state.queue.cancel, job_id)
    job = await io(state.queue.get, job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    if not cancelled:
        raise ApiError(
            409,
            "not_queued",
            f"job {job_id} is {job.state.value}; only a queued job can be cancelled",
        )
    # Nobody else finalizes a job that never ran: move its inbox file to failed/ (or drop an
    # upload's copy) now.
    await io(state.lifecycle.finalize, job)
    return web.json_response(job_document(job, paths=may(request, "admin")))


async def retry_job(request: web.Request) -> web.Response:
    """POST /v1/jobs/{job_id}/retry: queue a failed or cancelled job again, attempts reset."""
    state = request.app[STATE]
    job_id = await job_id_param(request)
    try:
        job = await io(retry.retry_job, state.queue, state.lifecycle.inboxes, job_id)
    except retry.RetryRefused as exc:
        raise ApiError(404 if exc.code == "job_not_found" else 409, exc.code, exc.message) from None
    state.lifecycle.on_enqueued()
    return web.json_response(job_document(job, paths=may(request, "admin")))


async def job_frames(request: web.Request) -> web.Response:
    """GET /v1/jobs/{job_id}/frames: per-frame fake probabilities of each detector."""
    state = request.app[STATE]
    job_id = await job_id_param(request)
    job = await io(state.queue.get, job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    return web.json_response(frames_document(job))


def artefact_path(state: ApiState, job_id: str, detector: str) -> Path:
    """Where the annotated video of one job's detector result is kept once rendered."""
    folder = state.config.api.upload_dir.parent / ARTEFACTS_DIR / job_id
    return folder / f"{detector}.annotated.mp4"


async def render_result(
    state: ApiState, job_id: str, result: StoredResult, source: Path, sha256: str | None = None
) -> Path:
    """The annotated video of ``result`` over ``source``, rendered in a thread unless already
    kept; with ``sha256``, a source whose bytes changed since the job is refused (404)."""
    dst = artefact_path(state, job_id, result.detector)

    def work() -> None:
        if dst.is_file():
            return
        if sha256 is not None and sha256_file(source) != sha256:
            raise ApiError(
                404,
                "video_changed",
                "the job's video was replaced since it was judged; its scores would not fit",
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        # matplotlib and the drawing code load on the first rendering, not at start-up.
        from processor.visualize import render_video, shared_face_finder

        render_video(
            source,
            dst,
            result.frame_scores,
            label=result.label,
            fake_probability=result.fake_probability,
            threshold=result.threshold,
            detector=result.detector,
            weights_id=result.weights_id,
            face_finder=shared_face_finder(),
            limits=state.limits,
            max_side=state.config.decode.max_side,
        )

    try:
        await cpu(work)
    except MediaError as exc:
        raise ApiError(422, exc.code, f"the video cannot be rendered: {exc.message}") from exc
    except TransientError as exc:
        raise ApiError(503, exc.code, exc.message, headers={"Retry-After": "5"}) from exc
    api = state.config.api
    await io(
        prune_artefacts, dst.parent.parent, api.artefacts_max_files, api.artefacts_max_bytes, dst
    )
    return dst


def prune_artefacts(root: Path, max_files: int, max_bytes: int, keep: Path) -> int:
    """Delete the oldest renderings under ``root`` until at most ``max_files`` of them, of
    ``max_bytes`` in all, remain; ``keep`` (the one about to be served) stays. Returns how
    many went."""
    kept = []
    for path in root.glob("*/*.annotated.mp4"):
        with contextlib.suppress(FileNotFoundError):
            kept.append((path.stat().st_mtime, path.stat().st_size, path))
    kept.sort(reverse=True)  # newest first
    files = total = removed = 0
    for _, size, path in kept:
        files += 1
        total += size
        if path == keep or (files <= max_files and total <= max_bytes):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only once empty
    if removed:
        log.info("removed %d old renderings from %s", removed, root)
    return removed


def video_response(path: Path, filename: str) -> web.FileResponse:
    """An MP4 file as the response body, streamed from disk."""
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "video/mp4",
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )


async def job_visualization(request: web.Request) -> web.StreamResponse:
    """GET /v1/jobs/{job_id}/visualization: the annotated video of one detector's result,
    rendered from the job's file while the server still has it (a folder job's file in done/),
    then kept."""
    state = request.app[STATE]
    job_id = await job_id_param(request)
    detector = request.query.get("detector")
    if detector is not None and not _DETECTOR_KEY.match(detector):
        raise ApiError(400, "bad_query", "detector must be a detector key")
    job = await io(state.queue.get, job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    if job.state is not JobState.DONE:
        raise ApiError(
            409, "job_not_done", f"job {job_id} is {job.state.value}; only a done job is drawn"
        )
    key = detector or job.detectors[0]
    result = next((r for r in job.results if r.detector == key), None)
    if result is None:
        raise ApiError(404, "result_not_found", f"job {job_id} has no result from {key}")
    filename = f"{job_id}.{key}.annotated.mp4"
    kept = artefact_path(state, job_id, key)
    if await io(kept.is_file):
        return video_response(kept, filename)

    # A done folder job's file is in done/ (output_path), or still in the work area until it
    # is finalized; an upload's server copy is deleted once the job is over.
    def existing() -> Path | None:
        return next(
            (Path(p) for p in (job.output_path, job.work_path) if p and Path(p).is_file()), None
        )

    if not may(request, "submit"):
        raise ApiError(
            403,
            "insufficient_scope",
            f"job {job_id} has no rendering of {key} yet, and rendering one needs the "
            "'submit' scope",
        )
    source = await io(existing)
    if source is None:
        raise ApiError(
            404,
            "video_gone",
            f"job {job_id}'s video is no longer on the server (uploads are deleted once "
            "judged; folder videos may have been moved); use POST /analyze/visualize",
        )
    path = await render_result(state, job_id, result, source, sha256=job.video_sha256)
    return video_response(path, filename)


async def get_video(request: web.Request) -> web.Response:
    """GET /v1/videos/{sha256}: have we seen these exact bytes, and what did we say?"""
    state = request.app[STATE]
    sha = request.match_info["sha256"].lower()
    if not SHA256_PREFIX.match(sha):
        raise ApiError(
            400, "bad_sha256", "a sha256 is 64 hex characters (or a unique start of 12 or more)"
        )
    if not SHA256.match(sha):
        matches = await io(state.queue.video_hashes_starting, sha, 2)
        if len(matches) > 1:
            raise ApiError(
                409,
                "ambiguous_sha256",
                f"several videos' sha256 start with {sha}; give more characters",
            )
        sha = matches[0] if matches else sha
    video = await io(state.queue.get_video, sha)
    if video is None:
        raise ApiError(404, "video_not_found", "these bytes have never been seen")
    jobs = await io(state.queue.jobs_for_video, sha)
    return web.json_response(
        {
            **(video_document(video) or {}),
            "first_seen": video.first_seen.isoformat(),
            "jobs": [job_document(j, paths=may(request, "admin")) for j in jobs],
        }
    )


def detector_report(
    state: ApiState, workers: list[WorkerView] | None = None
) -> list[dict[str, Any]]:
    """Every detector this build knows: version, whether it is configured, whether a live
    worker sharing the database has it loaded (with what weights, where), and why not. The
    same answer from every process, whatever its role. ``workers``: the fleet as just read,
    else it is read here."""
    found, failed = registry.available(), registry.unavailable()
    if workers is None:
        workers = state.queue.workers(state.config.queue.lease_s)
    loaded = loaded_detectors(workers)
    rows: list[dict[str, Any]] = []
    for key in sorted({*found, *failed, *state.config.detectors}):
        section = state.config.detectors.get(key)
        held = loaded.get(key, [])
        first = held[0] if held else None
        reason: str | None = None
        if key in failed:
            reason = failed[key]
        elif key not in found:
            reason = "configured, but no detector is registered under this key"
        elif section is None:
            reason = "not configured (no section under detectors)"
        elif key not in state.detector_keys:
            reason = "configured, but no inbox uses it, so no worker loads it"
        elif first is None:
            reason = "no live worker has it loaded (none running, or still starting)"
        cls = found.get(key)
        rows.append(
            {
                "key": key,
                "version": cls.version if cls is not None else None,
                "configured": section is not None,
                "loaded": first is not None,
                "workers": len(held),
                "weights": first.get("weights_id") if first else None,
                "dummy_weights": first.get("weights_id") == "dummy" if first else None,
                "device": first.get("device") if first else None,
                "num_frames": first.get("num_frames") if first else None,
                "reason": reason,
            }
        )
    return rows


async def list_detectors(request: web.Request) -> web.Response:
    """GET /v1/detectors."""
    state = request.app[STATE]
    return web.json_response(
        {
            "device": state.device,
            "default": list(state.config.inboxes[0].detectors),
            "detectors": await io(detector_report, state),
        }
    )


def worker_alive(state: ApiState) -> bool:
    """Whether this process's worker runs its loops and heartbeats."""
    return state.worker is not None and state.worker.alive()


async def health(request: web.Request) -> web.Response:
    """GET /health: ready (200) when the database answers and, in a process with a worker,
    the worker's loops run with every detector loaded; 503 otherwise. Open to anyone, so it
    says only that, and what the older service's clients read; the rest is GET /v1/status."""
    state = request.app[STATE]
    ready, _ = await _readiness(state)
    body = {
        "service": "drishtiksha",
        "status": "healthy" if ready else "unhealthy",
        "ready": ready,
        "version": state.version,
        "timestamp": now_iso(),
        # The older service's clients read these two.
        "available_models": state.detector_keys,
        "default_model": state.config.api.default_model,
    }
    return web.json_response(body, status=200 if ready else 503)


async def status(request: web.Request) -> web.Response:
    """GET /v1/status: readiness with its reasons: the database, this process's worker, every
    worker sharing the database and what it holds, and the detectors."""
    state = request.app[STATE]
    ready, body = await _readiness(state)
    body["status"] = "healthy" if ready else "unhealthy"
    body["ready"] = ready
    return web.json_response(body)


async def _readiness(state: ApiState) -> tuple[bool, dict[str, Any]]:
    """Whether this process is ready, and the detailed status that says why."""
    body: dict[str, Any] = {
        "service": "drishtiksha",
        "version": state.version,
        "timestamp": now_iso(),
        "uptime_s": round(time.monotonic() - state.started, 1),
    }
    ready = True
    try:
        await io(ping, state.engine)
        body["database"] = "ok"
        body["jobs"] = await io(state.queue.counts)
    except StorageError as exc:
        ready = False
        body["database"] = f"unreachable: {type(exc).__name__}"
    worker = state.worker
    if worker is not None:
        alive = worker_alive(state)
        # A worker that cannot read jobs' bytes (no credentials, no shared folder) is alive
        # but of no use: not ready, and the reason is shown.
        ready = ready and alive and worker.problem is None
        body["worker"] = {
            "id": worker.worker_id,
            "alive": alive,
            "held_jobs": len(worker.held),
            "batches_run": worker.batches_run,
            "problem": worker.problem,
        }
    else:
        body["worker"] = None
    fleet: list[WorkerView] | None = None
    if "jobs" in body:
        # Every worker sharing the database, so one host's status shows the whole fleet.
        lease_s = state.config.queue.lease_s
        fleet = await io(state.queue.workers, lease_s)
        body["workers"] = [
            {
                "id": w.id,
                "host": w.host,
                "alive": w.alive,
                "held_jobs": len(w.held_jobs),
                "device": (w.capabilities or {}).get("device"),
                "detectors": sorted((w.capabilities or {}).get("detectors") or {}),
            }
            for w in fleet
        ]
        # Queued jobs that wait for a worker with detectors no live one has loaded.
        body["stranded"] = [
            {"detectors": keys.split(",") if keys else [], "queued": n}
            for keys, n in (await io(state.queue.stranded, lease_s)).items()
        ]
    try:
        rows = await io(detector_report, state, fleet)
    except StorageError:
        rows = []  # the database's state is reported above
    report = {row["key"]: row for row in rows if row["configured"]}
    if worker is not None:
        ready = ready and all(report[k]["loaded"] for k in state.detector_keys if k in report)
    body["detectors"] = {
        key: {
            "loaded": row["loaded"],
            "version": row["version"],
            "weights": row["weights"],
            "reason": row["reason"],
        }
        for key, row in report.items()
    }
    body["available_models"] = state.detector_keys
    body["default_model"] = state.config.api.default_model
    return ready, body


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text exposition."""
    state = request.app[STATE]
    return web.Response(
        body=await state.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
