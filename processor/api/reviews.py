"""People's reviews over the API: ``GET/PUT /v1/jobs/{id}/review`` and the CSV export
``GET /v1/reviews.csv`` a team retrains on. The desk records reviews through ``record`` too."""

from __future__ import annotations

import csv
import datetime as dt
import io as textio
import json
from pathlib import PurePath
from typing import Any

from aiohttp import web

from processor.api.common import PRINCIPAL, STATE, ApiError, ApiState, io, iso, job_id_param
from processor.webhooks import review_payload, review_targets
from storage.models import REVIEW_DECISIONS
from storage.queue import JobView
from storage.reviews import ExportRow, Reviews, ReviewView

ANONYMOUS = "anonymous"
MAX_NOTE = 4000
# Human decisions that are a label to train on; a second look is not one yet.
TRAINING_LABELS = {"confirmed_fake": "FAKE", "confirmed_real": "REAL"}
CSV_COLUMNS = (
    "file",
    "label",
    "sha256",
    "job_id",
    "source_kind",
    "source",
    "machine_label",
    "machine_fake_probability",
    "decision",
    "note",
    "reviewer",
    "reviewed_at",
)
# A cell starting with one of these is a formula to a spreadsheet: a note must stay text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def review_document(review: ReviewView | None) -> dict[str, Any] | None:
    """One review as the API shows it."""
    if review is None:
        return None
    return {
        "decision": review.decision,
        "note": review.note,
        "by": review.reviewer,
        "at": iso(review.created_at),
    }


def who(request: web.Request) -> str:
    """The name a review is recorded under: the key's, or anonymous when none is needed."""
    principal = request.get(PRINCIPAL)
    return principal.name if principal is not None else ANONYMOUS


def checked(decision: Any, note: Any) -> tuple[str, str]:
    """A review's decision and note as sent, or 400."""
    if decision not in REVIEW_DECISIONS:
        raise ApiError(400, "bad_review", f"decision must be one of {', '.join(REVIEW_DECISIONS)}")
    if note is None:
        note = ""
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise ApiError(400, "bad_review", f"note must be text of at most {MAX_NOTE} characters")
    return decision, note.strip()


async def record(state: ApiState, job: JobView, decision: str, note: str, by: str) -> ReviewView:
    """Store a review of ``job`` and announce it to the receivers of ``reviewed`` events."""
    at = dt.datetime.now(dt.UTC)
    payload = review_payload(job, {"decision": decision, "note": note, "by": by, "at": iso(at)})
    urls = review_targets(state.config.webhooks)
    return await io(
        lambda: Reviews(state.queue).add(
            job.id, decision, note, by, at=at, webhook_urls=urls, webhook_payload=payload
        )
    )


async def _job(request: web.Request) -> JobView:
    state = request.app[STATE]
    job_id = await job_id_param(request)
    job = await io(state.queue.get, job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    return job


async def _reviews_of(state: ApiState, job: JobView) -> web.Response:
    history = await io(Reviews(state.queue).history, job.id)
    return web.json_response(
        {
            "job_id": job.id,
            "review": review_document(history[0] if history else None),
            "history": [review_document(r) for r in history],
        }
    )


async def get_review(request: web.Request) -> web.Response:
    """GET /v1/jobs/{job_id}/review: the current review and every earlier one."""
    job = await _job(request)
    return await _reviews_of(request.app[STATE], job)


async def put_review(request: web.Request) -> web.Response:
    """PUT /v1/jobs/{job_id}/review: record a person's judgement (``{"decision", "note"}``);
    earlier reviews are kept as the job's history."""
    state = request.app[STATE]
    job = await _job(request)
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad_review", "the body must be a JSON object") from None
    if not isinstance(body, dict) or set(body) - {"decision", "note"}:
        raise ApiError(400, "bad_review", "the body takes the fields decision and note only")
    decision, note = checked(body.get("decision"), body.get("note"))
    await record(state, job, decision, note, who(request))
    return await _reviews_of(state, job)


def _cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def export_csv(rows: list[ExportRow]) -> str:
    """The CSV of reviewed jobs. ``file`` is the name the job's video was given in done/ (or
    its source's name), so the CSV placed in done/ is data for ``drishtiksha train``; rows
    whose review is a second look have no ``label`` yet and are left out."""
    out = textio.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        label = TRAINING_LABELS.get(row.review.decision)
        if label is None:
            continue
        verdict = row.verdict or {}
        probability = verdict.get("fake_probability")
        writer.writerow(
            [
                _cell(PurePath(row.output_path or row.source_ref).name),
                label,
                row.sha256,
                row.job_id,
                row.source_kind,
                _cell(PurePath(row.source_ref).name),
                verdict.get("label", ""),
                "" if probability is None else f"{probability:.4f}",
                row.review.decision,
                _cell(row.review.note),
                _cell(row.review.reviewer),
                iso(row.review.created_at),
            ]
        )
    return out.getvalue()


async def reviews_csv(request: web.Request) -> web.Response:
    """GET /v1/reviews.csv: jobs people confirmed fake or real, with the machine's verdict."""
    state = request.app[STATE]
    body = await io(lambda: export_csv(list(Reviews(state.queue).export())))
    return web.Response(
        text=body,
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="reviews.csv"'},
    )
