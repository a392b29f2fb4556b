"""The overall verdict, and the documents Drishtiksha emits about a job (the .verdict.json and
.error.json sidecars, and the results, verdicts and videos the API shows), each built as its
model in ``processor.documents``."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from detectors import registry
from detectors.base import Detector, DetectorResult, Label, describe
from processor import documents
from processor.config import FusionConfig
from processor.documents import ERROR_SCHEMA, SCHEMA
from storage.queue import JobState, JobView, StoredResult, VideoView


class Vote(Protocol):
    """What fusion reads of one detector's result (a stored result, or one in memory)."""

    @property
    def detector(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def fake_probability(self) -> float | None: ...

    @property
    def details(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class DetectorVote:
    """A detector's result held in memory (``analyze``, ``eval``), as fusion reads it."""

    detector: str
    label: str
    fake_probability: float | None
    details: dict[str, Any] = field(default_factory=dict)


def overall_verdict(results: Sequence[Vote], fusion: FusionConfig | None = None) -> dict[str, Any]:
    """Combine detectors by ``fusion.rule`` (default ``any_fake``). Abstaining detectors are left
    out; if all abstain, so does the verdict. Each detector's own result is reported beside it.

    ``any_fake``: FAKE if any detector says FAKE, else UNCERTAIN if any says UNCERTAIN, else
    REAL; the probability is the highest. It is the conservative rule for moderation: a single
    confident detector is enough to send a clip to a human.

    ``weighted_mean``: the weighted mean of the voting detectors' fake probabilities (UNCERTAIN
    ones included: their probability still carries evidence), judged against the fusion's
    threshold and UNCERTAIN band. Meaningful when the detectors' probabilities are calibrated
    (detectors loaded from the weights manifest are).

    Under either rule a FAKE marked ``decisive`` in its details (a signed declaration of
    generative AI, from ``c2pa-provenance``) decides the verdict: it is a statement of fact by
    the maker, not a score to average away. ``decided_by`` and ``reason`` then say so.
    """
    fusion = fusion or FusionConfig()
    voting = [r for r in results if r.label != "ABSTAIN" and r.fake_probability is not None]
    weights = [fusion.weights.get(r.detector, 1.0) for r in voting]
    if fusion.rule == "weighted_mean":
        voting = [r for r, w in zip(voting, weights, strict=True) if w > 0]
        weights = [w for w in weights if w > 0]
    if not voting:
        return {"label": "ABSTAIN", "fake_probability": None, "rule": fusion.rule}
    decisive = [r for r in voting if r.label == "FAKE" and r.details.get("decisive")]
    if decisive:
        return {
            "label": "FAKE",
            "fake_probability": decisive[0].fake_probability,
            "rule": fusion.rule,
            "decided_by": decisive[0].detector,
            "reason": decisive[0].details.get("message", ""),
        }
    if fusion.rule == "any_fake":
        labels = {r.label for r in voting}
        label = "FAKE" if "FAKE" in labels else "UNCERTAIN" if "UNCERTAIN" in labels else "REAL"
        return {
            "label": label,
            "fake_probability": max(r.fake_probability or 0.0 for r in voting),
            "rule": fusion.rule,
        }
    mean = sum(w * (r.fake_probability or 0.0) for r, w in zip(voting, weights, strict=True))
    mean /= sum(weights)
    band = fusion.uncertain_band
    if band is not None and band[0] <= mean <= band[1]:
        label = "UNCERTAIN"
    else:
        label = "FAKE" if mean >= fusion.threshold else "REAL"
    return {"label": label, "fake_probability": mean, "rule": fusion.rule}


def result_model(r: StoredResult) -> documents.Result:
    """One detector's result as shown to users."""
    return documents.Result(
        detector=r.detector,
        version=r.version,
        weights=r.weights_id,
        label=Label(r.label),
        fake_probability=r.fake_probability,
        threshold=r.threshold,
        elapsed_s=round(r.elapsed_s, 4),
        cached_from_job=r.cached_from_job,
        details=r.details,
        frame_scores=[documents.FrameScore(t=s["t"], p=s["p"]) for s in r.frame_scores],
    )


def result_document(r: StoredResult) -> dict[str, Any]:
    """``result_model`` as the JSON object clients receive."""
    return result_model(r).dump()


def video_model(video: VideoView | None) -> documents.VideoFacts | None:
    """What the decoder learnt about a video, as shown to users."""
    if video is None:
        return None
    return documents.VideoFacts(
        sha256=video.sha256,
        size_bytes=video.size_bytes,
        container=video.container,
        codec=video.codec,
        width=video.width,
        height=video.height,
        fps=video.fps,
        duration_s=video.duration_s,
    )


def video_document(video: VideoView | None) -> dict[str, Any] | None:
    """``video_model`` as the JSON object clients receive."""
    model = video_model(video)
    return model.dump() if model is not None else None


def frames_document(job: JobView) -> dict[str, Any]:
    """Each detector's per-frame fake probabilities for ``job``."""
    return documents.Frames(
        job_id=job.id,
        state=job.state,
        detectors=[
            documents.DetectorFrames(
                detector=r.detector,
                version=r.version,
                weights=r.weights_id,
                label=Label(r.label),
                fake_probability=r.fake_probability,
                threshold=r.threshold,
                frames=[documents.FrameScore(t=s["t"], p=s["p"]) for s in r.frame_scores],
            )
            for r in job.results
        ],
    ).dump()


def _times(job: JobView) -> documents.SidecarTimes:
    return documents.SidecarTimes(
        created=job.created_at, started=job.started_at, finished=job.finished_at
    )


def weights_warning(results: Sequence[StoredResult]) -> str | None:
    """What a reader must know about the weights behind these results, or None: dummy weights
    mean nothing, and weights whose held-out ROC AUC interval reaches chance are a weak hint."""
    notes = []
    dummy = sorted(r.detector for r in results if r.weights_id == "dummy")
    if dummy:
        notes.append(
            f"weights: dummy for {', '.join(dummy)}: random weights, this verdict means nothing"
        )
    for r in results:
        held = (r.details.get("operating_point") or {}).get("held_out")
        if held and held["roc_auc_ci95"][0] <= 0.5:
            low, high = held["roc_auc_ci95"]
            notes.append(
                f"{r.detector} measured ROC AUC {held['roc_auc']:.2f} [{low:.2f}, {high:.2f}] on "
                f"{held['clips']} held-out clips: not distinguishable from chance, a weak hint "
                "at best"
            )
    return "; ".join(notes) or None


def job_verdict_model(job: JobView) -> documents.Verdict | None:
    """A job's overall verdict as stored when it finished, with its ``explanation`` in plain
    words; None unless it is done. A job finished by a worker of an older release during a
    rolling upgrade stored none: it gets the rule those releases reported, "any FAKE"."""
    if job.state is not JobState.DONE:
        return None
    verdict = job.verdict if job.verdict is not None else overall_verdict(job.results)
    return explained_model(verdict, job.results)


def job_verdict(job: JobView) -> dict[str, Any] | None:
    """``job_verdict_model`` as the JSON object clients receive."""
    model = job_verdict_model(job)
    return model.dump() if model is not None else None


def explained_model(verdict: dict[str, Any], results: Sequence[StoredResult]) -> documents.Verdict:
    """``verdict`` with its plain-words ``explanation``, as every document gives it."""
    return documents.Verdict(**verdict, explanation=explanation(verdict, results))


def explained(verdict: dict[str, Any], results: Sequence[StoredResult]) -> dict[str, Any]:
    """``explained_model`` as the JSON object clients receive."""
    return explained_model(verdict, results).dump()


_HEADLINES = {
    Label.FAKE: "Likely manipulated",
    Label.UNCERTAIN: "Too close to call",
    Label.REAL: "No sign of manipulation found",
    Label.ABSTAIN: "No judgement",
}


def explanation(verdict: dict[str, Any], results: Sequence[StoredResult]) -> str:
    """The verdict in plain words: a headline, then what the detectors behind it say (each
    detector explains its own result, so the sidecar, the API and the desk say the same)."""
    label = verdict["label"]
    decided_by = verdict.get("decided_by")
    voting = [r for r in results if r.label != "ABSTAIN"]
    if decided_by is not None:
        behind = [r for r in results if r.detector == decided_by]
    elif label == "ABSTAIN":
        behind = list(results)
    else:
        behind = [r for r in voting if r.label == label] or voting
    reasons = " ".join(explain_result(r) for r in behind)
    return f"{_HEADLINES[Label(label)]}. {reasons}".strip()


def explain_result(r: StoredResult) -> str:
    """One stored result in plain words, by its detector's ``explain`` (or the generic
    reading when this build does not know the detector)."""
    result = DetectorResult(
        label=Label(r.label),
        fake_probability=r.fake_probability,
        threshold=r.threshold,
        details=r.details,
    )
    cls = _detector_class(r.detector)
    return cls.explain(result) if cls is not None else describe(r.detector, result)


@functools.cache
def _detector_class(key: str) -> type[Detector[Any]] | None:
    # The plugins importable in this process never change while it runs. One key at a time:
    # explaining a face-cues verdict must not import the SigLIP plugin (and transformers).
    return registry.find(key)


def verdict_document(job: JobView, video: VideoView | None, file: Path) -> dict[str, Any]:
    """The .verdict.json for a done job."""
    return documents.VerdictSidecar(
        schema=SCHEMA,
        file=file.name,
        source=documents.Source(kind=job.source_kind, ref=job.source_ref),
        sha256=job.video_sha256,
        job_id=job.id,
        cached=job.cached,
        verdict=job_verdict_model(job),
        detectors=[result_model(r) for r in job.results],
        video=video_model(video),
        timestamps=_times(job),
        warning=weights_warning(job.results),
    ).dump()


def refusal_document(file: Path, ref: str, code: str, message: str) -> dict[str, Any]:
    """The .error.json for an inbox file refused before any job was made for it (over the
    size limit): the shape of ``error_document`` with no job, hash or attempts."""
    now = dt.datetime.now(dt.UTC)
    return documents.ErrorSidecar(
        schema=ERROR_SCHEMA,
        file=file.name,
        source=documents.Source(kind="folder", ref=ref),
        sha256=None,
        job_id=None,
        state=JobState.FAILED,
        error=documents.JobError(code=code, message=message),
        attempts=0,
        timestamps=documents.SidecarTimes(created=now, started=None, finished=now),
    ).dump()


def error_document(job: JobView, file: Path) -> dict[str, Any]:
    """The .error.json for a failed or cancelled job."""
    return documents.ErrorSidecar(
        schema=ERROR_SCHEMA,
        file=file.name,
        source=documents.Source(kind=job.source_kind, ref=job.source_ref),
        sha256=job.video_sha256,
        job_id=job.id,
        state=job.state,
        error=documents.JobError(
            code=job.error_code or job.state.value,
            message=job.error_message or f"job {job.state.value}",
        ),
        attempts=job.attempts,
        timestamps=_times(job),
    ).dump()
