"""The older service's endpoints, kept for its clients: ``GET /``, ``POST /analyze``,
``/analyze/detailed``, ``/analyze/frames`` and ``/analyze/visualize``.

Each analysis is a job in the same queue as every other, at a high priority, and the request
waits for it. Responses carry exactly the older service's fields. Its ``confidence`` is the
confidence in the stated prediction: the fake probability for FAKE, one minus it for REAL.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from detectors import registry
from detectors.base import FrameScore
from detectors.temporal import TemporalAnalysis, analyse
from processor.api.common import STATE, ApiError, ApiState, io, iso, now_iso, wait_for_job
from processor.api.native import render_result, video_response
from processor.api.uploads import (
    VIDEO_SUFFIX,
    Upload,
    check_video,
    client_of,
    enqueue,
    receive,
    upload_slot,
)
from processor.verdict import weights_warning
from storage.queue import JobState, JobView, StoredResult

# The older service's rolling window (its ``rolling_window_size``), in frames.
ROLLING_WINDOW = 10
_ARCHITECTURES = {
    "siglip-lstm-v1": "SIGLIP-LSTM",
    "siglip-lstm-v3": "SIGLIP-LSTM",
    "color-cues-lstm-v1": "ColorCues-LSTM",
}
MODEL_SUGGESTIONS = [
    "Check model name spelling",
    "Verify model is loaded",
    "See /health endpoint for model status",
]


def model_param(state: ApiState, request: web.Request) -> str:
    """``?model=``, default ``api.default_model``; an unknown one gets the older service's
    "Model not found" answer."""
    model = request.query.get("model") or state.config.api.default_model
    if model not in state.detector_keys:
        raise ApiError(
            422,
            "model_not_found",
            f"Requested model '{model}' is not available",
            title="Model not found",
            extra={
                "available_models": state.detector_keys,
                "suggestions": MODEL_SUGGESTIONS,
            },
        )
    return model


async def service_info(request: web.Request) -> web.Response:
    """GET /: what this service is and which models it serves."""
    state = request.app[STATE]
    return web.json_response(
        {
            "service": "drishtiksha",
            "message": "Drishtiksha deepfake detection daemon",
            "status": "running",
            "version": state.version,
            "available_models": state.detector_keys,
            "default_model": state.config.api.default_model,
            "docs": "/docs",
            "redoc": "/redoc",
            "openapi": "/openapi.json",
            "timestamp": now_iso(),
        }
    )


async def _judged(
    request: web.Request, before_enqueue: Callable[[Upload], Awaitable[None]] | None = None
) -> tuple[ApiState, str, JobView, StoredResult]:
    """Receive the upload, queue it for the model and wait for the model's result;
    ``before_enqueue`` sees the vetted upload while its file is sure to exist."""
    state = request.app[STATE]
    model = model_param(state, request)
    with upload_slot(state, client_of(request)):
        upload = await receive(request, state)
    await check_video(upload, state.limits)
    if before_enqueue is not None:
        await before_enqueue(upload)
    await enqueue(state, upload, [model], state.config.api.analyze_priority)
    timeout_s = state.config.api.request_timeout_s
    job = await wait_for_job(request, state.queue, upload.job_id, timeout_s)
    poll = f"/v1/jobs/{upload.job_id}"
    if job is None or job.state in (JobState.QUEUED, JobState.RUNNING):
        raise ApiError(
            504,
            "analysis_timeout",
            f"the analysis did not finish within {timeout_s:g} s; it goes on, see {poll}",
            title="Analysis timed out",
            extra={"job_id": upload.job_id},
        )
    if job.state is JobState.CANCELLED:
        raise ApiError(409, "cancelled", f"the job was cancelled ({poll})", title="Cancelled")
    if job.state is JobState.FAILED:
        raise ApiError(
            422,
            job.error_code or "failed",
            f"Media could not be processed. Reason: {job.error_message or job.error_code}",
            title="Analysis failed",
            extra={"job_id": job.id},
        )
    result = next(r for r in job.results if r.detector == model)
    if result.fake_probability is None:
        reason = str(result.details.get("reason", "abstained"))
        raise ApiError(
            422,
            reason,
            f"The model could not judge this video: {result.details.get('message', reason)}",
            title="Analysis not possible",
            extra={"job_id": job.id},
        )
    return state, model, job, result


def _prediction(probability: float, threshold: float) -> tuple[str, float]:
    """(label, confidence in that label) as the older service reported them."""
    if probability >= threshold:
        return "FAKE", probability
    return "REAL", 1.0 - probability


def _base(model: str, job: JobView, result: StoredResult) -> dict[str, Any]:
    assert result.fake_probability is not None
    prediction, confidence = _prediction(result.fake_probability, result.threshold)
    if job.started_at is not None and job.finished_at is not None:
        processing_time = (job.finished_at - job.started_at).total_seconds()
    else:
        processing_time = result.elapsed_s
    body: dict[str, Any] = {
        "prediction": prediction,
        "confidence": round(confidence, 4),
        "processing_time": round(processing_time, 3),
        "model": model,
        "timestamp": iso(job.finished_at),
        # Beyond the older service's fields (its clients ignore extra keys): every verdict
        # names the weights behind it, and random weights are never passed off as a verdict.
        "weights": result.weights_id,
    }
    warning = weights_warning([result])
    if warning is not None:
        body["warning"] = warning
    return body


def _temporal(result: StoredResult) -> TemporalAnalysis:
    scores = [FrameScore(s["t"], s["p"]) for s in result.frame_scores]
    return analyse(scores, result.threshold, ROLLING_WINDOW)


def _in_prediction_scale(value: float | None, prediction: str) -> float:
    """A mean fake probability as confidence in ``prediction``."""
    if value is None:
        return 0.0
    return round(value if prediction == "FAKE" else 1.0 - value, 4)


async def analyze(request: web.Request) -> web.Response:
    """POST /analyze: prediction, confidence, processing time."""
    _, model, job, result = await _judged(request)
    return web.json_response(_base(model, job, result))


async def analyze_detailed(request: web.Request) -> web.Response:
    """POST /analyze/detailed: adds analysis details, model and system information."""
    state, model, job, result = await _judged(request)
    body = _base(model, job, result)
    ta = _temporal(result)
    rolling = ta["rolling_mean"][-1] if ta["rolling_mean"] else None
    cls = registry.available().get(model)
    body["analysis_details"] = {
        "frame_count": ta["frames"],
        "avg_confidence": _in_prediction_scale(ta["mean"], body["prediction"]),
        "confidence_std": round(ta["std"] or 0.0, 4),
        "temporal_consistency": round(ta["consistency"] or 0.0, 4),
        "rolling_average": _in_prediction_scale(rolling, body["prediction"]),
    }
    body["model_info"] = {
        "version": result.version,
        "architecture": _ARCHITECTURES.get(model, cls.__name__ if cls else model),
        "device": state.device or "unknown",
    }
    body["system_info"] = _system_info(state)
    return web.json_response(body)


async def analyze_frames(request: web.Request) -> web.Response:
    """POST /analyze/frames: per-frame predictions, temporal analysis and a summary."""
    state, model, job, result = await _judged(request)
    body = _base(model, job, result)
    ta = _temporal(result)
    video = await io(state.queue.get_video, job.video_sha256)
    fps = video.fps if video is not None and video.fps else None

    def frame_number(index: int) -> int:
        # The older service numbered every frame of the video from 1; a sampled frame keeps
        # its number in the video where the frame rate is known.
        if fps is None:
            return index + 1
        return round(result.frame_scores[index]["t"] * fps) + 1

    frames = []
    for i, s in enumerate(result.frame_scores):
        label, confidence = _prediction(s["p"], result.threshold)
        frames.append(
            {"frame": frame_number(i), "confidence": round(confidence, 4), "prediction": label}
        )
    fake = sum(1 for f in frames if f["prediction"] == "FAKE")
    trend = ta["trend"]
    if trend == "stable":
        level = "high" if (ta["mean"] or 0.0) >= result.threshold else "low"
        trend_text = f"stable_{level}"
    else:
        trend_text = trend
    body["frame_predictions"] = frames
    body["temporal_analysis"] = {
        "consistency_score": round(ta["consistency"] or 0.0, 4),
        "pattern_detection": ta["pattern"],
        "anomaly_frames": [frame_number(a["index"]) for a in ta["anomalies"]],
        "confidence_trend": trend_text,
    }
    body["summary"] = {
        "total_frames": len(frames),
        "fake_frames": fake,
        "real_frames": len(frames) - fake,
        "avg_confidence": _in_prediction_scale(ta["mean"], body["prediction"]),
    }
    return web.json_response(body)


def _hold(path: Path) -> Path:
    """A second name for an upload, so it outlives the job's finalization (which deletes the
    upload's file). Named as a received file of no job, so a crash leaves nothing the upload
    area's sweep does not remove."""
    held = path.with_name(uuid.uuid4().hex + VIDEO_SUFFIX)
    try:
        os.link(path, held)
    except OSError:
        shutil.copyfile(path, held)  # a file system without hard links
    return held


async def analyze_visualize(request: web.Request) -> web.StreamResponse:
    """POST /analyze/visualize: the video annotated with the model's face box, per-frame score
    and verdict, as an MP4 body (kept, so GET /v1/jobs/{id}/visualization serves it again)."""
    held: list[Path] = []

    async def hold(upload: Upload) -> None:
        held.append(await io(_hold, upload.path))

    try:
        state, model, job, result = await _judged(request, hold)
        path = await render_result(state, job.id, result, held[0])
    finally:
        for copy in held:
            await io(copy.unlink, True)
    return video_response(path, f"{job.id}.{model}.annotated.mp4")


def _system_info(state: ApiState) -> dict[str, str]:
    """The older service's system_info, for the process that ran the model when it is this
    one."""
    if state.worker is None:
        return {"gpu_memory_used": "unknown", "processing_device": "unknown"}
    if state.device is not None and state.device.startswith("cuda"):
        # Loaded already: the worker's detectors run on this device.
        import torch

        used = torch.cuda.memory_allocated(state.device) / 1e9
        return {
            "gpu_memory_used": f"{used:.1f}GB",
            "processing_device": torch.cuda.get_device_name(state.device),
        }
    return {"gpu_memory_used": "0.0GB", "processing_device": "CPU"}
