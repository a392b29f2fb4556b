"""The documents Drishtiksha writes about a job: the .verdict.json and .error.json sidecars."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from storage.queue import JobView, StoredResult, VideoView

SCHEMA = "drishtiksha.verdict/1"
ERROR_SCHEMA = "drishtiksha.error/1"


def overall_verdict(results: list[StoredResult]) -> dict[str, Any]:
    """Combine detectors: FAKE if any detector says FAKE, REAL if every detector that did not
    abstain says REAL. Abstaining detectors are left out; if all abstain, so does the verdict.

    "Any FAKE" is the conservative rule for moderation: a single confident detector is enough
    to send a clip to a human. Calibrated fusion replaces it once detectors have model cards.
    """
    voting = [r for r in results if r.label != "ABSTAIN" and r.fake_probability is not None]
    if not voting:
        return {"label": "ABSTAIN", "fake_probability": None, "rule": "any_fake"}
    labels = {r.label for r in voting}
    label = "FAKE" if "FAKE" in labels else "UNCERTAIN" if "UNCERTAIN" in labels else "REAL"
    return {
        "label": label,
        "fake_probability": max(r.fake_probability or 0.0 for r in voting),
        "rule": "any_fake",
    }


def result_document(r: StoredResult) -> dict[str, Any]:
    """One detector's result as shown to users."""
    return {
        "detector": r.detector,
        "version": r.version,
        "weights": r.weights_id,
        "label": r.label,
        "fake_probability": r.fake_probability,
        "threshold": r.threshold,
        "elapsed_s": round(r.elapsed_s, 4),
        "cached_from_job": r.cached_from_job,
        "details": r.details,
        "frame_scores": r.frame_scores,
    }


def _video_document(video: VideoView | None) -> dict[str, Any] | None:
    if video is None:
        return None
    return {
        "sha256": video.sha256,
        "size_bytes": video.size_bytes,
        "container": video.container,
        "codec": video.codec,
        "width": video.width,
        "height": video.height,
        "fps": video.fps,
        "duration_s": video.duration_s,
    }


def _times(job: JobView) -> dict[str, dt.datetime | None]:
    return {"created": job.created_at, "started": job.started_at, "finished": job.finished_at}


def verdict_document(job: JobView, video: VideoView | None, file: Path) -> dict[str, Any]:
    """The .verdict.json for a done job."""
    dummy = sorted(r.detector for r in job.results if r.weights_id == "dummy")
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "file": file.name,
        "source": {"kind": job.source_kind, "ref": job.source_ref},
        "sha256": job.video_sha256,
        "job_id": job.id,
        "cached": job.cached,
        "verdict": overall_verdict(job.results),
        "detectors": [result_document(r) for r in job.results],
        "video": _video_document(video),
        "timestamps": _times(job),
    }
    if dummy:
        doc["warning"] = (
            f"weights: dummy for {', '.join(dummy)}: random weights, this verdict means nothing"
        )
    return doc


def error_document(job: JobView, file: Path) -> dict[str, Any]:
    """The .error.json for a failed or cancelled job."""
    return {
        "schema": ERROR_SCHEMA,
        "file": file.name,
        "source": {"kind": job.source_kind, "ref": job.source_ref},
        "sha256": job.video_sha256,
        "job_id": job.id,
        "state": job.state.value,
        "error": {
            "code": job.error_code or job.state.value,
            "message": job.error_message or f"job {job.state.value}",
        },
        "attempts": job.attempts,
        "timestamps": _times(job),
    }
