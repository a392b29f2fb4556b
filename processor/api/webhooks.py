"""Webhook deliveries over the API: list them, look at one with every attempt, and send a dead
one again (``/v1/webhooks/deliveries``)."""

from __future__ import annotations

import re

from aiohttp import web

from processor.api.common import JOB_ID_PREFIX, STATE, ApiError, ApiState, io, may
from processor.webhooks import delivery_document
from storage.deliveries import MAX_ID, Deliveries, DeliveryState, DeliveryView

MAX_LIMIT = 500
_DIGITS = re.compile(r"^[0-9]{1,10}$")


def _number(raw: str, name: str, hi: int, code: str = "bad_query") -> int:
    """A whole number from 1 to ``hi`` as given in the path or a query, or 400."""
    value = int(raw) if _DIGITS.fullmatch(raw) else 0
    if not 1 <= value <= hi:
        raise ApiError(400, code, f"{name} must be a whole number from 1 to {hi}")
    return value


async def _job_filter(state: ApiState, raw: str | None) -> str | None:
    """The job the ``job`` query names (a whole id or a unique start); a start that names no
    job is kept as it is, so the list comes back empty."""
    if raw is None:
        return None
    prefix = raw.lower()
    if not JOB_ID_PREFIX.fullmatch(prefix):
        raise ApiError(
            400, "bad_job_id", "job must be a job id: 32 hex characters or a unique start of 8+"
        )
    if len(prefix) == 32:
        return prefix
    matches = await io(state.queue.job_ids_starting, prefix, 2)
    if len(matches) > 1:
        raise ApiError(
            409, "ambiguous_job_id", f"several jobs start with {prefix}; give more characters"
        )
    return matches[0] if matches else prefix


async def list_deliveries(request: web.Request) -> web.Response:
    """GET /v1/webhooks/deliveries: newest first, by state and job, with a cursor."""
    state = request.app[STATE]
    q = request.query
    try:
        wanted = DeliveryState(q["state"]) if "state" in q else None
    except ValueError:
        choices = ", ".join(s.value for s in DeliveryState)
        raise ApiError(400, "bad_query", f"state must be one of {choices}") from None
    job_id = await _job_filter(state, q.get("job"))
    before = _number(q["before"], "before", MAX_ID) if "before" in q else None
    limit = _number(q.get("limit", "50"), "limit", MAX_LIMIT)
    found = await io(
        lambda: Deliveries(state.queue).list(
            state=wanted, job_id=job_id, limit=limit, before=before
        )
    )
    full_url = may(request, "admin")
    return web.json_response(
        {
            "deliveries": [delivery_document(d, full_url=full_url) for d in found],
            "next": found[-1].id if len(found) == limit else None,
        }
    )


async def _delivery(request: web.Request) -> DeliveryView:
    state = request.app[STATE]
    delivery_id = _number(
        request.match_info["delivery_id"], "a delivery id", MAX_ID, "bad_delivery_id"
    )
    delivery = await io(Deliveries(state.queue).get, delivery_id)
    if delivery is None:
        raise ApiError(404, "delivery_not_found", f"no webhook delivery {delivery_id}")
    return delivery


def _document(request: web.Request, delivery: DeliveryView) -> web.Response:
    return web.json_response(
        delivery_document(delivery, full_url=may(request, "admin"), history=True)
    )


async def get_delivery(request: web.Request) -> web.Response:
    """GET /v1/webhooks/deliveries/{delivery_id}: one delivery with every attempt."""
    return _document(request, await _delivery(request))


async def retry_delivery(request: web.Request) -> web.Response:
    """POST /v1/webhooks/deliveries/{delivery_id}/retry: send a dead delivery again, due now,
    with a new retry period."""
    state = request.app[STATE]
    delivery = await _delivery(request)
    requeued = await io(Deliveries(state.queue).requeue, [delivery.id])
    if not requeued:
        current = await _delivery(request)
        raise ApiError(
            409,
            "not_dead",
            f"webhook delivery {delivery.id} is {current.state.value}; only a dead one can be "
            "sent again",
        )
    return _document(request, await _delivery(request))
