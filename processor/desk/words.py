"""What the desk says about a job, in words a person reads: built from the API's own job
document (``job_document``), never from the rows a second way."""

from __future__ import annotations

import shutil
from pathlib import PurePath
from typing import Any

from processor.api.common import ApiState
from processor.api.native import detector_report
from processor.verdict import explain_result, weights_warning
from storage.queue import JobState, JobView
from storage.reviews import ReviewView

DECISIONS = {
    "confirmed_fake": "Confirmed fake",
    "confirmed_real": "Confirmed real",
    "second_look": "Needs a second look",
}
SOURCES = {"folder": "inbox", "upload": "upload", "s3": "S3", "cli": "command line"}
# The error codes of the README's table, in a sentence each.
ERRORS = {
    "empty_file": "The file is empty (zero bytes).",
    "not_a_video": "This is not a video (a text file or a still image named like one?).",
    "corrupt_video": "The video is damaged or cut short and cannot be read through.",
    "no_video_stream": "The file holds sound only, no picture.",
    "file_too_large": "The file is larger than this server accepts.",
    "too_long": "The video is longer than this server accepts.",
    "too_many_pixels": "The picture is larger than this server accepts.",
    "too_many_frames": "The video has more frames than this server accepts.",
    "transient": "Reading or writing the file failed for a passing reason.",
    "device_oom": "The GPU ran out of memory.",
    "storage_busy": "The database was too busy.",
    "max_attempts": "The worker judging it kept dying, so it was given up.",
    "cancelled": "Someone cancelled it before it ran.",
}


def file_name(job: JobView) -> str:
    """The name a person knows the clip by: an inbox file's name without its folder; an
    upload's name as the client sent it (data, not a path: it may hold a slash)."""
    if job.source_kind == "folder":
        return PurePath(job.source_ref).name or job.source_ref
    return job.source_ref


def badge(doc: dict[str, Any]) -> str:
    """The list's label for a job document: its verdict once done, else its state."""
    if doc["verdict"] is not None:
        return str(doc["verdict"]["label"])
    return str(doc["state"]).upper() if doc["state"] == "failed" else str(doc["state"])


def error_words(job: JobView, doc: dict[str, Any]) -> str | None:
    """What went wrong, in words, with the recorded message after it as ``doc`` (the job's
    document for this viewer, server paths cut for all but admin keys) gives it."""
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        return None
    code = job.error_code or job.state.value
    head = ERRORS.get(code, f"It failed ({code}).")
    message = doc["error"]["message"] if doc["error"] else None
    return f"{head} {message}" if message else head


def retryable(job: JobView) -> bool:
    """Whether the Retry button applies (``POST /v1/jobs/{id}/retry`` decides for sure)."""
    return job.state in (JobState.FAILED, JobState.CANCELLED) and job.finalized_at is not None


def row(job: JobView, doc: dict[str, Any], review: ReviewView | None) -> dict[str, Any]:
    """One line of the list."""
    verdict = doc["verdict"]
    return {
        "id": job.id,
        "name": file_name(job),
        "source": SOURCES.get(job.source_kind, job.source_kind),
        "badge": badge(doc),
        "probability": None if verdict is None else verdict.get("fake_probability"),
        "review": None if review is None else DECISIONS[review.decision],
        "review_key": None if review is None else review.decision,
        "created": doc["created_at"],
        "sha256": job.video_sha256,
        "signature": f"{doc['state']}|{badge(doc)}|{review.id if review else ''}",
    }


def detector_cards(job: JobView, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One card per detector result: what it said, how sure, and how much to trust it."""
    cards = []
    for stored, result in zip(job.results, doc["results"], strict=True):
        op = result["details"].get("operating_point") or {}
        held = op.get("held_out")
        cards.append(
            {
                "detector": result["detector"],
                "label": result["label"],
                "probability": result["fake_probability"],
                "threshold": result["threshold"],
                "uncertain_band": op.get("uncertain_band"),
                "held_out": held,
                "weights": result["weights"],
                "warning": weights_warning([stored]),
                "explanation": explain_result(stored),
                "provenance": result["details"].get("provenance"),
                "cached_from_job": result["cached_from_job"],
            }
        )
    return cards


def timeline(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per detector, the scores over time the player's timeline draws."""
    return [
        {
            "detector": r["detector"],
            "threshold": r["threshold"],
            "points": [[s["t"], s["p"]] for s in r["frame_scores"]],
        }
        for r in doc["results"]
        if r["frame_scores"]
    ]


def status_strip(state: ApiState, counts: dict[str, int], alive: int) -> dict[str, Any]:
    """Workers alive, queue depth, detectors with their weights, disk free in done/."""
    detectors = [
        {
            "key": r["key"],
            "loaded": r["loaded"],
            "weights": (r["weights"] or "")[:12],
        }
        for r in detector_report(state)
        if r["key"] in state.detector_keys
    ]
    done = state.config.inboxes[0].done
    try:
        free = shutil.disk_usage(done if done.exists() else done.parent).free
    except OSError:
        free = None
    return {
        "workers": alive,
        "queued": counts.get("queued", 0),
        "running": counts.get("running", 0),
        "detectors": detectors,
        "disk_free_gb": None if free is None else free / 1024**3,
    }
