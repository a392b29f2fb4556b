"""Live updates for the list: server-sent events.

Workers may run in other processes, so the database is the only place a job's progress shows:
each open list polls the same query it was rendered from, about once a second, and sends the
lines that changed (new jobs, a new state, a new review) already rendered, plus the status
strip now and then. One small query per open page per second is what a newsroom's handful of
editors cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp_jinja2
from aiohttp import web

from processor.api.common import STATE, io
from processor.desk.views import (
    DESK,
    PAGE_SIZE,
    context,
    desk_route,
    list_filter,
    rows_for,
    status_of,
)
from storage.reviews import Reviews

POLL_S = 1.0
STATUS_EVERY_S = 5.0
# A comment line now and then keeps proxies from closing a quiet stream.
KEEPALIVE_S = 15.0

STOPPING = web.AppKey("drishtiksha_desk_stopping", asyncio.Event)


@desk_route(page=False)
async def events(request: web.Request) -> web.StreamResponse:
    """GET /desk/events?<the list's filters>: ``row`` events (``{id, html}``) for lines of
    the list's first page that are new or changed, and ``status`` events for the strip."""
    state = request.app[STATE]
    stopping = request.app[STOPPING]
    sessions = request.app[DESK].sessions
    env = aiohttp_jinja2.get_env(request.app)
    row_template, status_template = env.get_template("row.html"), env.get_template("status.html")
    where, _ = list_filter(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    seen: dict[str, str] = {}
    last_status = last_write = 0.0
    try:
        while not stopping.is_set():
            # The stream ends when its session expires.
            if not state.keyring.open and sessions.viewer(request) is None:
                break
            jobs = await io(lambda: Reviews(state.queue).jobs(where, limit=PAGE_SIZE))
            # Oldest first, so a page that inserts each new line at the top ends newest first.
            for row in reversed(await rows_for(state, request, jobs)):
                if seen.get(row["id"]) != row["signature"]:
                    seen[row["id"]] = row["signature"]
                    html = row_template.render(context(request, row=row))
                    await _send(response, "row", json.dumps({"id": row["id"], "html": html}))
                    last_write = time.monotonic()
            now = time.monotonic()
            if now - last_status >= STATUS_EVERY_S:
                html = status_template.render(status=await status_of(state))
                await _send(response, "status", json.dumps({"html": html}))
                last_status = last_write = now
            elif now - last_write >= KEEPALIVE_S:
                await response.write(b": keep-alive\n\n")
                last_write = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), POLL_S)
    except ConnectionError:
        pass  # the page was closed
    return response


async def _send(response: web.StreamResponse, event: str, data: str) -> None:
    await response.write(f"event: {event}\ndata: {data}\n\n".encode())
