"""The desk: web pages, served by the daemon on the API's port, where people see the verdicts,
understand them and record their own judgement.

Server-rendered (Jinja) with a little plain JavaScript and CSS from this package: nothing is
fetched from elsewhere, so the desk works on a newsroom LAN with no internet. Every page sends a
Content-Security-Policy that allows no inline script.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from processor.api.common import STATE
from processor.desk import live, views
from processor.desk.session import Sessions

HERE = Path(__file__).parent
PREFIX = "/desk"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def setup(app: web.Application) -> None:
    """Add the desk to the API's ``app`` (after its state is set)."""
    state = app[STATE]
    app[views.DESK] = views.Desk(Sessions(state.keyring, state.config.api.desk_session_s))
    app[live.STOPPING] = asyncio.Event()
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    routes = [
        ("GET", "", _to_desk),
        ("GET", "/", views.list_page),
        ("GET", "/queue", views.queue_page),
        ("GET", "/events", live.events),
        ("GET", "/signin", views.signin_page),
        ("POST", "/signin", views.signin),
        ("POST", "/signout", views.signout),
        ("POST", "/upload", views.upload),
        # Before the page's route, whose {job_id} would also match "<id>.json".
        ("GET", "/jobs/{job_id}.json", views.job_json),
        ("GET", "/jobs/{job_id}", views.job_page),
        ("GET", "/jobs/{job_id}/video", views.job_video),
        ("GET", "/jobs/{job_id}/annotated", views.job_annotated),
        ("POST", "/jobs/{job_id}/review", views.review),
        ("POST", "/jobs/{job_id}/retry", views.retry_job),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, PREFIX + path, handler)
    app.router.add_static(PREFIX + "/static", HERE / "static", append_version=True)
    # Before the API's middleware: a browser asking for / is sent to the desk even where
    # health_requires_key would refuse it the JSON answer.
    app.middlewares.insert(0, _browsers_to_desk)
    app.on_response_prepare.append(_secure)
    app.on_shutdown.append(_stop_streams)


async def _to_desk(request: web.Request) -> web.StreamResponse:
    return views.see_other(PREFIX + "/")


@web.middleware
async def _browsers_to_desk(request: web.Request, handler: views.Handler) -> web.StreamResponse:
    """``/`` for a browser (one that asks for HTML) is the desk; every other client keeps the
    older service's JSON answer there."""
    if request.path == "/" and request.method == "GET" and _wants_html(request):
        return views.see_other(PREFIX + "/")
    return await handler(request)


def _wants_html(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/html" in accept


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith(PREFIX):
        # A route that set a stricter policy of its own (the video: sandbox) keeps it.
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)


async def _stop_streams(app: web.Application) -> None:
    # Live streams end at once, rather than holding the shutdown for its timeout.
    app[live.STOPPING].set()
