"""Every document the daemon emits comes from one model in ``processor.documents``, and the
OpenAPI description is generated from those models: what is built is what is described."""

from __future__ import annotations

import ast
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from detectors.base import Label
from processor.api import openapi as api_openapi
from processor.api.common import job_document
from processor.documents import DOCUMENTS
from processor.verdict import (
    error_document,
    explained,
    frames_document,
    job_verdict,
    overall_verdict,
    refusal_document,
    result_document,
    verdict_document,
    video_document,
)
from processor.webhooks import event_payload, review_payload
from storage.queue import JobState, JobView, StoredResult, VideoView

ROOT = Path(__file__).resolve().parents[2]
# Modules that still list the labels by hand: each is to take them from Label instead, and
# leave this set, which is only ever to shrink.
# The synthetic desk benchmark gives each label its own share of the rows.
LISTS_LABELS = {"processor/bench/desk.py"}
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
JOB_ID = "e8ec0eda0ab54705aba0ac68540514e3"
SHA = "5f1c" * 16


def stored(detector: str, label: str, p: float | None, **details: Any) -> StoredResult:
    return StoredResult(
        JOB_ID,
        detector,
        "1.0.0",
        "dummy" if detector == "face-cues-v1" else "8d5c0052af46",
        label,
        p,
        0.539,
        [{"t": 0.25, "p": 0.74}, {"t": 0.75, "p": 0.81}],
        details,
        1.123456,
        None,
        NOW,
    )


DECISIVE = [
    stored("face-cues-v1", "FAKE", 0.779, frames=48),
    stored("c2pa-provenance", "FAKE", 1.0, decisive=True, message="signed by test signer"),
]
ABSTAINED = [stored("c2pa-provenance", "ABSTAIN", None, reason="no_manifest")]
VIDEO = VideoView(SHA, 1048576, "mov,mp4,m4a,3gp,3g2,mj2", "h264", 1280, 720, 30.0, 10.0, NOW)


def job(
    state: JobState,
    results: list[StoredResult],
    verdict: dict[str, Any] | None = None,
    error: str | None = None,
) -> JobView:
    return JobView(
        id=JOB_ID,
        video_sha256=SHA,
        source_kind="folder",
        source_ref="/srv/inbox/clip.mp4",
        inbox="main",
        work_path="/srv/work/clip.mp4",
        output_path="/srv/done/clip.mp4",
        detectors=[r.detector for r in results] or ["face-cues-v1"],
        state=state,
        priority=0,
        attempts=1,
        max_attempts=3,
        lease_owner=None,
        lease_expires=None,
        run_after=NOW,
        error_code=error,
        error_message=f"cannot decode /srv/work/clip.mp4 ({error})" if error else None,
        cached=False,
        created_at=NOW,
        started_at=None if state is JobState.QUEUED else NOW,
        finished_at=NOW if state in (JobState.DONE, JobState.FAILED) else None,
        finalized_at=None,
        verdict=verdict,
        results=results,
    )


JOBS = [
    job(JobState.DONE, DECISIVE),
    job(
        JobState.DONE,
        ABSTAINED,
        verdict={"label": "ABSTAIN", "fake_probability": None, "rule": "weighted_mean"},
    ),
    job(JobState.FAILED, [], error="corrupt_video"),
    job(JobState.QUEUED, []),
]
DONE = [j for j in JOBS if j.state is JobState.DONE]
ENDED = [j for j in JOBS if j.state in (JobState.DONE, JobState.FAILED)]


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return api_openapi.document("1.0.0", ["face-cues-v1", "c2pa-provenance"], 60.0)


def conforms(openapi: dict[str, Any], component: str, doc: Any) -> None:
    """``doc``, sent as JSON, is valid against the OpenAPI document's ``component``."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": openapi["components"]}
    sent = json.loads(json.dumps(doc, default=str))
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(sent)]
    assert not errors, f"{component}: {errors}"


def test_every_document_model_is_an_openapi_component(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    for model in DOCUMENTS:
        assert components[model.__name__]["title"] == model.__name__
    Draft202012Validator.check_schema({"components": openapi["components"]})


@pytest.mark.parametrize("state_job", JOBS, ids=lambda j: j.state.value)
def test_jobs_and_their_parts_conform(openapi: dict[str, Any], state_job: JobView) -> None:
    for paths in (True, False):
        conforms(openapi, "Job", job_document(state_job, paths=paths))
    conforms(openapi, "Frames", frames_document(state_job))
    for r in state_job.results:
        conforms(openapi, "Result", result_document(r))
    verdict = job_verdict(state_job)
    if verdict is not None:
        conforms(openapi, "Verdict", verdict)


def test_pages_and_cached_answers_conform(openapi: dict[str, Any]) -> None:
    # As GET /v1/jobs and a POST /v1/jobs answered from stored results put them together.
    conforms(openapi, "JobList", {"jobs": [job_document(j) for j in JOBS], "next": JOB_ID})
    cached = {
        "cached": True,
        "sha256": SHA,
        "detectors": [r.detector for r in DECISIVE],
        "verdict": explained(overall_verdict(DECISIVE), DECISIVE),
        "results": [result_document(r) | {"cached_from_job": JOB_ID} for r in DECISIVE],
    }
    conforms(openapi, "CachedVerdict", cached)


def test_a_video_conforms(openapi: dict[str, Any]) -> None:
    doc = {
        **(video_document(VIDEO) or {}),
        "first_seen": VIDEO.first_seen.isoformat(),
        "jobs": [job_document(j) for j in JOBS],
    }
    conforms(openapi, "Video", doc)


@pytest.mark.parametrize("done", DONE, ids=["decisive", "abstained"])
def test_the_sidecar_conforms_and_keeps_its_shape(openapi: dict[str, Any], done: JobView) -> None:
    doc = verdict_document(done, VIDEO, Path("/srv/done/clip.mp4"))
    conforms(openapi, "VerdictSidecar", doc)
    assert list(doc)[:10] == [
        "schema",
        "file",
        "source",
        "sha256",
        "job_id",
        "cached",
        "verdict",
        "detectors",
        "video",
        "timestamps",
    ]
    # As sidecars have always been written: Python's str() of each time, with a space.
    assert doc["timestamps"]["created"] == "2026-01-02 03:04:05.678901+00:00"
    # The warning is left out, not null, when there is nothing to warn of.
    assert ("warning" in doc) is any(r.weights_id == "dummy" for r in done.results)


def test_error_sidecars_conform(openapi: dict[str, Any]) -> None:
    failed, cancelled = JOBS[2], job(JobState.CANCELLED, [])
    for doc in (
        error_document(failed, Path("/srv/failed/clip.mp4")),
        error_document(cancelled, Path("/srv/failed/clip.mp4")),
        refusal_document(Path("/srv/failed/big.mp4"), "/srv/inbox/big.mp4", "file_too_large", "x"),
    ):
        conforms(openapi, "ErrorSidecar", doc)
        assert doc["schema"] == "drishtiksha.error/1"
    assert error_document(cancelled, Path("c.mp4"))["error"] == {
        "code": "cancelled",
        "message": "job cancelled",
    }


def test_a_verdict_names_what_decided_it_only_when_something_did() -> None:
    decided, abstained = (job_verdict(j) for j in DONE)
    assert decided is not None
    assert abstained is not None
    assert list(decided) == [
        "label",
        "fake_probability",
        "rule",
        "decided_by",
        "reason",
        "explanation",
    ]
    assert decided["decided_by"] == "c2pa-provenance"
    assert list(abstained) == ["label", "fake_probability", "rule", "explanation"]
    assert abstained["fake_probability"] is None


@pytest.mark.parametrize("ended", ENDED, ids=lambda j: j.state.value)
def test_webhook_events_conform(openapi: dict[str, Any], ended: JobView) -> None:
    payload = event_payload(ended)
    conforms(openapi, "WebhookEvent", payload)
    assert payload["event"] == f"job.{ended.state.value}"


def test_review_events_conform(openapi: dict[str, Any]) -> None:
    review = {"decision": "confirmed_real", "note": "", "by": "desk", "at": "2026-01-02T03:04:05Z"}
    payload = review_payload(DONE[0], review)
    conforms(openapi, "ReviewEvent", payload)
    assert payload["review"] == review


def test_labels_are_defined_once(openapi: dict[str, Any]) -> None:
    """The labels are ``detectors.base.Label``; the schema and the code take them from there
    rather than listing them again."""
    labels = {label.value for label in Label}
    assert openapi["components"]["schemas"]["Label"]["enum"] == [label.value for label in Label]
    listings = set()
    for path in sorted((ROOT / "processor").rglob("*.py")) + sorted(
        (ROOT / "detectors").rglob("*.py")
    ):
        name = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if not isinstance(node, ast.List | ast.Tuple | ast.Set | ast.Dict) or items is None:
                continue
            words = {i.value for i in items if isinstance(i, ast.Constant)}
            if labels <= words:
                listings.add(name)
    assert listings == LISTS_LABELS, "take the labels from detectors.base.Label"
