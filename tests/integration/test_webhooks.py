"""Webhooks: a real receiver on loopback, a real database outbox, signatures and retries."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from processor.config import WebhooksConfig, WebhookTarget
from processor.verdict import overall_verdict
from processor.webhooks import Dispatcher, enqueue_for
from storage.db import make_engine
from storage.queue import JobQueue, JobView, NewResult
from tests.net import free_port

SECRET = "s3cret-s3cret-s3cret"


@pytest.fixture
def queue(database_url: str) -> Iterator[JobQueue]:
    engine = make_engine(database_url)
    yield JobQueue(engine)
    engine.dispose()


class Receiver:
    """An HTTP endpoint that fails its first ``failures`` requests."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        if len(self.requests) <= self.failures:
            return web.Response(status=500)
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(failures=2)
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}/hook"
    yield rec
    await runner.cleanup()


def _done_job(queue: JobQueue) -> JobView:
    job_id = uuid.uuid4().hex
    queue.enqueue(
        job_id=job_id,
        sha256=hashlib.sha256(job_id.encode()).hexdigest(),
        size_bytes=1,
        source_kind="cli",
        source_ref="clip.mp4",
        detectors=["d"],
    )
    [claimed] = queue.claim("w", 1, 30)
    result = NewResult("d", "1", "dummy", "FAKE", 0.9, 0.5, [], {}, 0.1)
    assert queue.complete(claimed.id, "w", [result], overall_verdict([result]))
    view = queue.get(job_id)
    assert view is not None
    return view


async def _dispatch_until(queue: JobQueue, config: WebhooksConfig, job_id: str, n: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(Dispatcher(queue, config).run(stop))

    def settled() -> bool:
        return all(d.next_attempt_at is None for d in queue.deliveries(job_id)) and (
            len(queue.deliveries(job_id)) == n
        )

    try:
        for _ in range(300):
            if await asyncio.to_thread(settled):
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"deliveries did not settle: {queue.deliveries(job_id)}")
    finally:
        stop.set()
        await task


async def test_signed_delivery_retried_until_accepted(queue: JobQueue, receiver: Receiver) -> None:
    config = WebhooksConfig(
        targets=[WebhookTarget(url=receiver.url, secret=SECRET)], retry_base_s=0.05, poll_s=0.05
    )
    job = _done_job(queue)
    enqueue_for(queue, config, job)
    await _dispatch_until(queue, config, job.id, 1)
    [delivery] = queue.deliveries(job.id)
    assert delivery.delivered_at is not None
    assert delivery.attempts == 3
    assert delivery.last_status == 204
    assert len(receiver.requests) == 3
    headers, body = receiver.requests[-1]
    payload: dict[str, Any] = json.loads(body)
    assert payload["job_id"] == job.id
    assert payload["verdict"]["label"] == "FAKE"
    assert headers["X-Drishtiksha-Event"] == "job.done"
    stamp = headers["X-Drishtiksha-Timestamp"]
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    assert headers["X-Drishtiksha-Signature"] == "sha256=" + expected.hexdigest()


async def test_dead_receiver_is_given_up_with_the_error_recorded(queue: JobQueue) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    config = WebhooksConfig(
        targets=[WebhookTarget(url=dead)], max_attempts=2, retry_base_s=0.05, poll_s=0.05
    )
    job = _done_job(queue)
    enqueue_for(queue, config, job)
    await _dispatch_until(queue, config, job.id, 1)
    [delivery] = queue.deliveries(job.id)
    assert delivery.delivered_at is None
    assert delivery.attempts == 2
    assert delivery.last_error


def test_only_subscribed_events_are_queued(queue: JobQueue) -> None:
    config = WebhooksConfig(
        targets=[
            WebhookTarget(url="http://127.0.0.1:9/a", events=["failed"]),
            WebhookTarget(url="http://127.0.0.1:9/b"),
        ]
    )
    job = _done_job(queue)
    enqueue_for(queue, config, job)
    assert [d.url for d in queue.deliveries(job.id)] == ["http://127.0.0.1:9/b"]
