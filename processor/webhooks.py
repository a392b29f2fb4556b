"""Webhooks: an HTTP POST to each configured receiver when a job ends (and, for receivers that
ask for ``reviewed``, when a person reviews one).

Deliveries go through an outbox table (``storage.deliveries``): a finished job adds its rows,
and a dispatcher task in every running process sends them, retrying with capped exponential
back-off for ``retry_for_s``, then parking a delivery as dead until someone sends it again.
Inference never waits for a receiver, a restart loses no delivery, and every attempt is recorded.
Delivery is at least once: receivers should dedupe on the ``X-Drishtiksha-Delivery`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from processor.config import WebhooksConfig
from processor.documents import JobError, Review, ReviewEvent, Source, WebhookEvent
from processor.verdict import job_verdict_model
from storage.deliveries import Deliveries, Delivery, DeliveryView
from storage.errors import StorageError
from storage.queue import JobQueue, JobView

log = logging.getLogger(__name__)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def event_payload(job: JobView) -> dict[str, Any]:
    """What a receiver learns about a finished job (the rest is at GET /v1/jobs/{id})."""
    return WebhookEvent(
        event=f"job.{job.state.value}",
        job_id=job.id,
        state=job.state,
        sha256=job.video_sha256,
        source=Source(kind=job.source_kind, ref=job.source_ref),
        verdict=job_verdict_model(job),
        error=JobError(code=job.error_code, message=job.error_message) if job.error_code else None,
        finished_at=job.finished_at,
    ).dump()


def review_payload(job: JobView, review: dict[str, Any]) -> dict[str, Any]:
    """What a receiver learns when a person reviews a job: the machine's verdict and the
    person's ``review`` (decision, note, by, at)."""
    return ReviewEvent(
        event="job.reviewed",
        job_id=job.id,
        state=job.state,
        sha256=job.video_sha256,
        source=Source(kind=job.source_kind, ref=job.source_ref),
        verdict=job_verdict_model(job),
        review=Review(**review),
    ).dump()


def review_targets(config: WebhooksConfig) -> list[str]:
    """The receivers that asked for ``reviewed`` events."""
    return [t.url for t in config.targets if "reviewed" in t.events]


def enqueue_for(queue: JobQueue, config: WebhooksConfig, job: JobView) -> None:
    """Add the deliveries a finished job owes to the outbox."""
    urls = [t.url for t in config.targets if job.state.value in t.events]
    if urls:
        Deliveries(queue).add(job.id, f"job.{job.state.value}", event_payload(job), urls)


def retry_delay(config: WebhooksConfig, attempts: int) -> float | None:
    """Seconds to wait after the ``attempts``-th failed try in a row, or None when the
    delivery is to be parked: the next try would come more than ``retry_for_s`` after the
    first, or ``max_attempts`` is reached.

    The period is counted in the waits of this schedule, not by the clock, so time the daemon
    was down (or a re-send by hand, which starts the count again) never uses it up."""
    if config.max_attempts is not None and attempts >= config.max_attempts:
        return None
    # The waits are base, 2 base, 4 base, ... up to the cap, then the cap each time: add up
    # the ``attempts - 1`` already waited without a step per capped one.
    waited = 0.0
    delay = min(config.retry_base_s, config.retry_max_s)
    waits = attempts - 1
    while waits > 0 and delay < config.retry_max_s:
        waited += delay
        delay = min(delay * 2, config.retry_max_s)
        waits -= 1
    waited += waits * delay
    return delay if waited + delay <= config.retry_for_s else None


class Dispatcher:
    """Sends due deliveries until stopped."""

    def __init__(self, queue: JobQueue, config: WebhooksConfig) -> None:
        self.deliveries = Deliveries(queue)
        self.config = config
        self._secrets = {t.url: t.secret for t in config.targets}

    async def run(self, stop: asyncio.Event) -> None:
        """Poll the outbox and send what is due, a few deliveries at a time."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                try:
                    due = await asyncio.to_thread(
                        self.deliveries.take, 16, self.config.timeout_s * 2
                    )
                except StorageError as exc:
                    log.warning("webhook outbox unavailable, will retry: %s", exc)
                    due = []
                if due:
                    await asyncio.gather(*(self._send(session, d) for d in due))
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.poll_s)

    async def _send(self, session: aiohttp.ClientSession, delivery: Delivery) -> None:
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "drishtiksha-webhooks",
            "X-Drishtiksha-Event": delivery.event,
            "X-Drishtiksha-Delivery": str(delivery.id),
            "X-Drishtiksha-Timestamp": stamp,
        }
        secret = self._secrets.get(delivery.url)
        if secret:
            headers["X-Drishtiksha-Signature"] = sign(secret, stamp, body)
        status: int | None = None
        error: str | None = None
        attempted_at = dt.datetime.now(dt.UTC)
        start = time.monotonic()
        try:
            async with session.post(delivery.url, data=body, headers=headers) as resp:
                status = resp.status
                if not 200 <= resp.status < 300:
                    error = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        elapsed_s = time.monotonic() - start
        retry_at = None
        if error is not None:
            delay = retry_delay(self.config, delivery.attempts)
            if delay is not None:
                retry_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
            then = (
                f"retry in {delay:g} s"
                if delay is not None
                else f"parked as dead (`drishtiksha webhooks retry {delivery.id}` sends it again)"
            )
            log.warning(
                "webhook %s for job %s to %s failed (attempt %d): %s; %s",
                delivery.id,
                delivery.job_id,
                delivery.url,
                delivery.attempts,
                error,
                then,
            )
        try:
            await asyncio.to_thread(
                lambda: self.deliveries.record(
                    delivery.id,
                    attempted_at=attempted_at,
                    elapsed_s=elapsed_s,
                    status=status,
                    error=error,
                    retry_at=retry_at,
                )
            )
        except StorageError as exc:
            # The hold on the row expires and it is sent again: at least once.
            log.warning("could not record webhook %s: %s", delivery.id, exc)


def delivery_document(
    delivery: DeliveryView, *, full_url: bool = True, history: bool = False
) -> dict[str, Any]:
    """A delivery as the API and ``drishtiksha webhooks list --json`` show it. Without
    ``full_url`` the receiver's URL is cut to its scheme and host: hook URLs often carry a
    token in their path or query."""
    doc: dict[str, Any] = {
        "id": delivery.id,
        "job_id": delivery.job_id,
        "event": delivery.event,
        "url": delivery.url if full_url else _origin(delivery.url),
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "created_at": _iso(delivery.created_at),
        "next_attempt_at": _iso(delivery.next_attempt_at),
        "delivered_at": _iso(delivery.delivered_at),
        "dead_at": _iso(delivery.dead_at),
    }
    if history:
        doc["history"] = [
            {
                "at": _iso(a.attempted_at),
                "status": a.status,
                "error": a.error,
                "elapsed_s": round(a.elapsed_s, 3),
            }
            for a in delivery.history
        ]
    return doc


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
