"""Webhooks: an HTTP POST to each configured receiver when a job ends (and, for receivers that
ask for ``reviewed``, when a person reviews one).

Deliveries go through an outbox table: a finished job adds its rows, and a dispatcher task sends
them, retrying with exponential back-off. Inference never waits for a receiver, a restart loses
no delivery, and every attempt is recorded. Delivery is at least once: receivers should dedupe on
the ``X-Drishtiksha-Delivery`` header.
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

import aiohttp

from processor.config import WebhooksConfig
from processor.verdict import job_verdict
from storage.errors import StorageError
from storage.queue import Delivery, JobQueue, JobView

log = logging.getLogger(__name__)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def event_payload(job: JobView) -> dict[str, Any]:
    """What a receiver learns about a finished job (the rest is at GET /v1/jobs/{id})."""
    return {
        "event": f"job.{job.state.value}",
        "job_id": job.id,
        "state": job.state.value,
        "sha256": job.video_sha256,
        "source": {"kind": job.source_kind, "ref": job.source_ref},
        "verdict": job_verdict(job),
        "error": (
            {"code": job.error_code, "message": job.error_message} if job.error_code else None
        ),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def review_payload(job: JobView, review: dict[str, Any]) -> dict[str, Any]:
    """What a receiver learns when a person reviews a job: the machine's verdict and the
    person's ``review`` (decision, note, by, at)."""
    return {
        "event": "job.reviewed",
        "job_id": job.id,
        "state": job.state.value,
        "sha256": job.video_sha256,
        "source": {"kind": job.source_kind, "ref": job.source_ref},
        "verdict": job_verdict(job),
        "review": review,
    }


def review_targets(config: WebhooksConfig) -> list[str]:
    """The receivers that asked for ``reviewed`` events."""
    return [t.url for t in config.targets if "reviewed" in t.events]


def enqueue_for(queue: JobQueue, config: WebhooksConfig, job: JobView) -> None:
    """Add the deliveries a finished job owes to the outbox."""
    urls = [t.url for t in config.targets if job.state.value in t.events]
    if urls:
        queue.add_deliveries(job.id, f"job.{job.state.value}", event_payload(job), urls)


class Dispatcher:
    """Sends due deliveries until stopped."""

    def __init__(self, queue: JobQueue, config: WebhooksConfig) -> None:
        self.queue = queue
        self.config = config
        self._secrets = {t.url: t.secret for t in config.targets}

    async def run(self, stop: asyncio.Event) -> None:
        """Poll the outbox and send what is due, a few deliveries at a time."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                try:
                    due = await asyncio.to_thread(
                        self.queue.take_deliveries, 16, self.config.timeout_s * 2
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
        try:
            async with session.post(delivery.url, data=body, headers=headers) as resp:
                status = resp.status
                if not 200 <= resp.status < 300:
                    error = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        retry_at = None
        if error is not None and delivery.attempts < self.config.max_attempts:
            delay = self.config.retry_base_s * 2 ** (delivery.attempts - 1)
            retry_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
        if error is not None:
            log.warning(
                "webhook %s for job %s to %s failed (attempt %d): %s%s",
                delivery.id,
                delivery.job_id,
                delivery.url,
                delivery.attempts,
                error,
                "" if retry_at else "; giving up",
            )
        try:
            await asyncio.to_thread(
                lambda: self.queue.delivery_done(
                    delivery.id, status=status, error=error, retry_at=retry_at
                )
            )
        except StorageError as exc:
            # The hold on the row expires and it is sent again: at least once.
            log.warning("could not record webhook %s: %s", delivery.id, exc)
