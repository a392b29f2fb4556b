"""The desk's pages and the few requests its scripts make.

Every handler runs behind ``desk_route``: it finds the signed-in person (or sends them to sign
in), checks the scope the API would ask for the same thing, and for state-changing requests the
CSRF token. Pages show the API's own documents (``job_document``) and change things through the
API's own functions, so the desk can do nothing the API would refuse.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import stat
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Literal

import aiohttp_jinja2
from aiohttp import web

from detectors.base import Label
from processor import retry
from processor.api import native as api_native
from processor.api.common import (
    JOB_ID,
    PRINCIPAL,
    STATE,
    ApiError,
    ApiState,
    io,
    job_document,
    may,
)
from processor.api.reviews import checked, record
from processor.desk import words
from processor.desk.session import CSRF_FIELD, Sessions, Viewer, check_csrf
from processor.verdict import weights_warning
from processor.webhooks import review_targets
from storage.queue import JobState, JobView, StoredResult
from storage.reviews import REVIEW_STATES, JobFilter, Reviews

PAGE_SIZE = 50
QUEUE_SIZE = 200
_HEX = re.compile(r"^[0-9a-f]{8,64}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_STATES = {"queued", "running", "failed", "cancelled"}
_LABELS = {label.value for label in Label}
_SOURCE_KINDS = tuple(words.SOURCES)


@dataclass
class Desk:
    """The desk's own state beside the API's."""

    sessions: Sessions


DESK = web.AppKey("drishtiksha_desk", Desk)
VIEWER = web.RequestKey("drishtiksha_desk_viewer", Viewer)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def desk_route(
    *, scope: Literal["read", "submit"] = "read", page: bool = True, csrf: bool = False
) -> Callable[[Handler], Handler]:
    """Wrap a desk handler: session (a page sends a stranger to sign in; anything else is
    refused with 401), ``scope`` ("read" or "submit"), and the CSRF token when ``csrf``."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            state, desk = request.app[STATE], request.app[DESK]
            viewer = desk.sessions.viewer(request)
            fresh: web.Response | None = None
            if viewer is None and state.keyring.open:
                # The open desk still needs a cookie: it carries the CSRF token.
                fresh = web.Response()
                viewer = desk.sessions.open_session(fresh, None, None)
            if viewer is None:
                if page and request.method == "GET":
                    target = urllib.parse.quote(request.path_qs, safe="")
                    return see_other(f"/desk/signin?next={target}")
                raise ApiError(401, "signed_out", "sign in to the desk first")
            request[VIEWER] = viewer
            if viewer.principal is not None:
                # The API's own checks (uploads per key, server paths for admin) see the key.
                request[PRINCIPAL] = viewer.principal
            try:
                if not viewer.may(scope):
                    raise ApiError(
                        403,
                        "insufficient_scope",
                        f"the key '{viewer.name}' lacks the '{scope}' scope this needs",
                    )
                if csrf:
                    urlencoded = request.content_type == "application/x-www-form-urlencoded"
                    # Only a form body is read here: an upload's stream belongs to the handler.
                    form = await request.post() if urlencoded else {}
                    token = form.get(CSRF_FIELD)
                    check_csrf(request, viewer, token if isinstance(token, str) else None)
                response = await handler(request)
            except ApiError as exc:
                if not page or request.headers.get("Accept") == "application/json":
                    raise
                response = error_page(request, exc)
            if fresh is not None:
                for cookie in fresh.cookies.values():
                    response.cookies[cookie.key] = cookie
            return response

        return run

    return wrap


def see_other(location: str) -> web.Response:
    """A redirect after a form, returned rather than raised: the API's middleware renders
    raised HTTP exceptions as its JSON errors."""
    return web.Response(status=303, headers={"Location": location})


def error_page(request: web.Request, exc: ApiError) -> web.Response:
    """An error as a page, for a person rather than a program."""
    return aiohttp_jinja2.render_template(
        "error.html", request, context(request, title="Error", error=exc), status=exc.status
    )


def context(request: web.Request, **values: Any) -> dict[str, Any]:
    """What every template gets: who is looking and what they may do."""
    viewer = request.get(VIEWER)
    return {
        "viewer": viewer,
        "may_submit": viewer is not None and viewer.may("submit"),
        "signed_in": viewer is not None and viewer.principal is not None,
        "decisions": words.DECISIONS,
        **values,
    }


# --- sign in and out ----------------------------------------------------------------------------


async def signin_page(request: web.Request) -> web.StreamResponse:
    """GET /desk/signin."""
    if request.app[STATE].keyring.open:
        return see_other("/desk/")
    return aiohttp_jinja2.render_template(
        "signin.html", request, context(request, title="Sign in", next=_next(request), failed=False)
    )


async def signin(request: web.Request) -> web.StreamResponse:
    """POST /desk/signin: the key from the form opens a session."""
    state = request.app[STATE]
    origin = request.headers.get("Origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != request.host:
        raise ApiError(403, "cross_site_request", "the request came from another site's page")
    form = await request.post()
    key = form.get("key")
    principal = state.keyring.identify(key if isinstance(key, str) else None)
    if principal is None or not isinstance(key, str):
        return aiohttp_jinja2.render_template(
            "signin.html",
            request,
            context(request, title="Sign in", next=_next(request), failed=True),
            status=401,
        )
    response = see_other(_next(request))
    request.app[DESK].sessions.open_session(response, key.encode(), principal)
    return response


@desk_route(csrf=True)
async def signout(request: web.Request) -> web.StreamResponse:
    """POST /desk/signout."""
    response = see_other("/desk/signin")
    Sessions.close_session(response)
    return response


def _next(request: web.Request) -> str:
    target = request.query.get("next", "/desk/")
    # Only back into the desk: never a redirect to another site.
    return target if target.startswith("/desk/") and "//" not in target else "/desk/"


# --- the list -----------------------------------------------------------------------------------


def list_filter(request: web.Request) -> tuple[JobFilter, dict[str, str]]:
    """The list's filters from the query; unknown values are ignored, not errors: a person
    edits these by hand, and an empty list says enough."""
    q = request.query
    chosen: dict[str, str] = {}
    state = label = review = source = detector = None
    show = q.get("show", "")
    if show in _STATES:
        state = JobState(show)
    elif show in _LABELS:
        label = show
    if show in _STATES | _LABELS:
        chosen["show"] = show
    if q.get("review", "") in REVIEW_STATES:
        review = chosen["review"] = q["review"]
    if q.get("source", "") in _SOURCE_KINDS:
        source = chosen["source"] = q["source"]
    if q.get("detector", "") in request.app[STATE].detector_keys:
        detector = chosen["detector"] = q["detector"]
    since = _day(q.get("from", ""))
    until = _day(q.get("to", ""))
    if since is not None:
        chosen["from"] = q["from"]
    if until is not None:
        chosen["to"] = q["to"]
        until += dt.timedelta(days=1)  # the whole of the last day
    text = q.get("q", "").strip()[:200]
    if text:
        chosen["q"] = text
    return (
        JobFilter(
            state=state,
            label=label,
            review=review,
            source_kind=source,
            detector=detector,
            since=since,
            until=until,
            search=text or None,
            sha256_prefix=text.lower() if _HEX.match(text.lower()) else None,
        ),
        chosen,
    )


def _day(raw: str) -> dt.datetime | None:
    if not _DATE.match(raw):
        return None
    try:
        return dt.datetime.fromisoformat(raw).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


async def rows_for(state: ApiState, request: web.Request, jobs: list[JobView]) -> list[Any]:
    """The list's lines for ``jobs``, each with its current review."""
    reviews = await io(Reviews(state.queue).current, [j.id for j in jobs])
    paths = may(request, "admin")
    return [words.row(j, job_document(j, paths=paths), reviews.get(j.id)) for j in jobs]


async def status_of(state: ApiState) -> dict[str, Any]:
    """The status strip."""
    counts = await io(state.queue.counts)
    workers = await io(state.queue.workers, state.config.queue.lease_s)
    # disk_usage is a filesystem call, and on a network share a slow one.
    return await io(words.status_strip, state, counts, sum(w.alive for w in workers))


@desk_route()
async def list_page(request: web.Request) -> web.StreamResponse:
    """GET /desk/: recent verdicts, newest first, filtered, a page at a time."""
    state = request.app[STATE]
    where, chosen = list_filter(request)
    before = request.query.get("before")
    before = before if before is not None and JOB_ID.match(before) else None
    jobs = await io(lambda: Reviews(state.queue).jobs(where, limit=PAGE_SIZE, before=before))
    return aiohttp_jinja2.render_template(
        "list.html",
        request,
        context(
            request,
            title="Verdicts",
            rows=await rows_for(state, request, jobs),
            chosen=chosen,
            query=urllib.parse.urlencode(chosen),
            older=jobs[-1].id if len(jobs) == PAGE_SIZE else None,
            first_page=before is None,
            status=await status_of(state),
            detectors=state.detector_keys,
            sources=words.SOURCES,
            review_states={"unreviewed": "Not reviewed", **words.DECISIONS},
            # The filter's order: what most needs a reviewer first.
            labels=[x.value for x in (Label.FAKE, Label.UNCERTAIN, Label.REAL, Label.ABSTAIN)],
            states=sorted(_STATES),
        ),
    )


@desk_route()
async def queue_page(request: web.Request) -> web.StreamResponse:
    """GET /desk/queue: what to review next."""
    state = request.app[STATE]
    jobs = await io(Reviews(state.queue).review_queue, QUEUE_SIZE)
    return aiohttp_jinja2.render_template(
        "queue.html",
        request,
        context(
            request,
            title="Review queue",
            rows=await rows_for(state, request, jobs),
            status=await status_of(state),
        ),
    )


# --- one job ------------------------------------------------------------------------------------


async def _job(request: web.Request) -> JobView:
    job_id = request.match_info["job_id"]
    if not JOB_ID.match(job_id):
        raise ApiError(404, "job_not_found", f"no job {job_id[:40]}")
    job = await io(request.app[STATE].queue.get, job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    return job


def video_file(job: JobView) -> Path | None:
    """The job's video while the server still has it: a folder job's file in done/ or
    failed/, an upload's kept copy (``api.keep_uploads_bytes``), or the work area's copy while
    the job is open."""
    for candidate in (job.output_path, job.work_path):
        # lstat: a symlink put in done/ must not turn this route into a reader of any file.
        with contextlib.suppress(OSError):
            if candidate and stat.S_ISREG(Path(candidate).lstat().st_mode):
                return Path(candidate)
    return None


def drawable(job: JobView) -> list[StoredResult]:
    """The results an annotated version can be drawn for: a done job's scored ones (an
    abstention has no score to draw)."""
    if job.state is not JobState.DONE:
        return []
    return [r for r in job.results if r.fake_probability is not None]


async def annotated_versions(state: ApiState, job: JobView) -> list[tuple[str, bool]]:
    """Each drawable detector and whether its annotated version is already rendered."""
    return [
        (r.detector, await io(api_native.artefact_path(state, job.id, r.detector).is_file))
        for r in drawable(job)
    ]


@desk_route()
async def job_page(request: web.Request) -> web.StreamResponse:
    """GET /desk/jobs/{job_id}: the video, the verdict in words, each detector, the review."""
    state = request.app[STATE]
    job = await _job(request)
    doc = job_document(job, paths=may(request, "admin"))
    history = await io(Reviews(state.queue).history, job.id)
    video = await io(state.queue.get_video, job.video_sha256)
    return aiohttp_jinja2.render_template(
        "job.html",
        request,
        context(
            request,
            title=words.file_name(job),
            job=job,
            doc=doc,
            name=words.file_name(job),
            badge=words.badge(doc),
            source=words.SOURCES.get(job.source_kind, job.source_kind),
            playable=await io(video_file, job) is not None,
            annotated=await annotated_versions(state, job),
            cards=words.detector_cards(job, doc),
            timeline=words.timeline(doc),
            warning=weights_warning(job.results),
            error=words.error_words(job, doc),
            retryable=words.retryable(job),
            review=history[0] if history else None,
            history=history,
            video=video,
            webhooks=bool(review_targets(state.config.webhooks)),
        ),
    )


@desk_route(page=False)
async def job_json(request: web.Request) -> web.StreamResponse:
    """GET /desk/jobs/{job_id}.json: the API's job document, readable with the desk's
    session (the API itself wants the key in a header, which a link cannot send)."""
    job = await _job(request)
    return web.json_response(job_document(job, paths=may(request, "admin")))


# The only types the video route sends; the player sniffs the container itself.
_VIDEO_TYPES = {".webm": "video/webm", ".mkv": "video/x-matroska", ".mov": "video/quicktime"}


@desk_route(page=False)
async def job_video(request: web.Request) -> web.StreamResponse:
    """GET /desk/jobs/{job_id}/video: the clip itself, to play inline; range requests let
    the player seek."""
    job = await _job(request)
    path = await io(video_file, job)
    if path is None:
        raise ApiError(404, "video_gone", "the server no longer holds this job's video")
    quoted = urllib.parse.quote(words.file_name(job))
    return web.FileResponse(
        path,
        headers={
            "Content-Disposition": f"inline; filename*=UTF-8''{quoted}",
            "Cache-Control": "private, max-age=300",
            # Whatever was dropped in the inbox is served as a video, never as a page or a
            # script the browser would run on the desk's origin.
            "Content-Type": _VIDEO_TYPES.get(path.suffix.lower(), "video/mp4"),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
        },
    )


@desk_route(page=False)
async def job_annotated(request: web.Request) -> web.StreamResponse:
    """GET /desk/jobs/{job_id}/annotated?detector=: the clip with the face boxes and score bar
    of one detector's result, to play inline with range requests. The API's own rendering
    (``GET /v1/jobs/{id}/visualization``) and its kept file: a key that may submit has it
    rendered on first asking; a read-only key plays one already rendered."""
    state = request.app[STATE]
    job = await _job(request)
    wanted = request.query.get("detector")
    result = next((r for r in drawable(job) if wanted in (None, r.detector)), None)
    if result is None:
        raise ApiError(404, "result_not_found", f"job {job.id} has no scored result to draw")
    path = api_native.artefact_path(state, job.id, result.detector)
    if not await io(path.is_file):
        if not request[VIEWER].may("submit"):
            raise ApiError(
                403,
                "insufficient_scope",
                "no annotated version of this clip has been rendered yet, and rendering one "
                "needs a key that may submit",
            )
        source = await io(video_file, job)
        if source is None:
            raise ApiError(404, "video_gone", "the server no longer holds this job's video")
        path = await api_native.render_result(
            state, job.id, result, source, sha256=job.video_sha256
        )
    name = f"{PurePath(words.file_name(job)).stem}.{result.detector}.annotated.mp4"
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "video/mp4",
            "Content-Disposition": f"inline; filename*=UTF-8''{urllib.parse.quote(name)}",
            "Cache-Control": "private, max-age=300",
        },
    )


@desk_route(scope="submit", csrf=True)
async def review(request: web.Request) -> web.StreamResponse:
    """POST /desk/jobs/{job_id}/review: a person's judgement, from the page's form or (as
    JSON back) from the review queue's keys."""
    state = request.app[STATE]
    job = await _job(request)
    form = await request.post()
    decision, note = checked(form.get("decision"), form.get("note"))
    viewer = request[VIEWER]
    saved = await record(state, job, decision, note, viewer.name)
    if request.headers.get("Accept") == "application/json":
        return web.json_response(
            {"job_id": job.id, "decision": saved.decision, "label": words.DECISIONS[decision]}
        )
    return see_other(f"/desk/jobs/{job.id}#review")


@desk_route(scope="submit", csrf=True)
async def retry_job(request: web.Request) -> web.StreamResponse:
    """POST /desk/jobs/{job_id}/retry: run a failed or cancelled job again."""
    state = request.app[STATE]
    job = await _job(request)
    try:
        await io(retry.retry_job, state.queue, state.lifecycle.inboxes, job.id)
    except retry.RetryRefused as exc:
        raise ApiError(409, exc.code, exc.message) from None
    state.lifecycle.on_enqueued()
    return see_other(f"/desk/jobs/{job.id}")


@desk_route(scope="submit", page=False, csrf=True)
async def upload(request: web.Request) -> web.StreamResponse:
    """POST /desk/upload: the API's own upload (``POST /v1/jobs``), with the desk's session in
    place of the key header."""
    return await api_native.submit_job(request)
