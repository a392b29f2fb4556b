"""Webhooks: a real receiver on loopback, a real database outbox (SQLite and Postgres),
signatures, retries past the old give-up point, parked deliveries listed and sent again through
the command line and the API, and a cancel under ``--role api`` that is announced."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from typer.testing import CliRunner

from processor.api.app import init_app, runner
from processor.cli import app as cli
from processor.cli.webhooks import DeliveryStateChoice
from processor.config import Config, WebhooksConfig, WebhookTarget
from processor.daemon import Daemon
from processor.verdict import overall_verdict
from processor.webhooks import Dispatcher, enqueue_for, retry_delay
from storage.db import make_engine
from storage.deliveries import Deliveries, DeliveryState, DeliveryView
from storage.queue import JobQueue, JobView, NewResult
from tests.net import free_port

SECRET = "s3cret-s3cret-s3cret"
DETECTOR = "color-cues-lstm-v1"  # configured only: these tests run no worker
ADMIN = "admin-key-0123456789"
READER = "reader-key-0123456789"
# Retries fast enough for a test: waits of 0.01 s, then 0.02 s each.
FAST = {"retry_base_s": 0.01, "retry_max_s": 0.02, "poll_s": 0.01}


@pytest.fixture
def queue(database_url: str) -> Iterator[JobQueue]:
    engine = make_engine(database_url)
    yield JobQueue(engine)
    engine.dispose()


class Receiver:
    """An HTTP endpoint that answers 503 while ``down`` and to its first ``failures``
    requests, 204 otherwise."""

    def __init__(self) -> None:
        self.failures = 0
        self.down = False
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.accepted: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        received = (dict(request.headers), await request.read())
        self.requests.append(received)
        if self.down:
            return web.Response(status=503)
        if len(self.requests) <= self.failures:
            return web.Response(status=500)
        self.accepted.append(received)
        return web.Response(status=204)

    def accepted_events(self) -> list[tuple[str, str]]:
        """(event, job id) of each request answered 2xx."""
        return [(h["X-Drishtiksha-Event"], json.loads(b)["job_id"]) for h, b in self.accepted]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    served = web.AppRunner(app)
    await served.setup()
    await web.TCPSite(served, "127.0.0.1", 0).start()
    rec.url = f"http://127.0.0.1:{served.addresses[0][1]}/hook"
    yield rec
    await served.cleanup()


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


async def eventually(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Poll ``check`` (run off the event loop) until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def dispatching(queue: JobQueue, config: WebhooksConfig) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(Dispatcher(queue, config).run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


def _all_in(queue: JobQueue, ids: list[int], state: DeliveryState) -> Callable[[], bool]:
    def check() -> bool:
        return all(_get(queue, i).state is state for i in ids)

    return check


def _get(queue: JobQueue, delivery_id: int) -> DeliveryView:
    found = Deliveries(queue).get(delivery_id)
    assert found is not None
    return found


def _deliveries_of(queue: JobQueue, config: WebhooksConfig, jobs: int) -> list[int]:
    """Finish ``jobs`` jobs and queue their webhooks; the delivery ids."""
    ids = []
    for _ in range(jobs):
        job = _done_job(queue)
        enqueue_for(queue, config, job)
        ids += [d.id for d in Deliveries(queue).for_job(job.id)]
    return ids


def test_the_command_line_knows_every_delivery_state() -> None:
    assert [c.value for c in DeliveryStateChoice] == [s.value for s in DeliveryState]


def test_the_back_off_doubles_up_to_its_cap_and_ends_with_the_period() -> None:
    config = WebhooksConfig(retry_base_s=2, retry_max_s=900, retry_for_s=86400)
    assert [retry_delay(config, n) for n in (1, 2, 3, 9, 10, 11, 200)] == [
        2,
        4,
        8,
        512,
        900,
        900,
        None,
    ]
    # The last retry comes at most retry_for_s after the first try.
    waits = []
    n = 1
    while (delay := retry_delay(config, n)) is not None:
        waits.append(delay)
        n += 1
    assert sum(waits) <= 86400 < sum(waits) + 900
    assert retry_delay(config.model_copy(update={"max_attempts": 3}), 3) is None


async def test_signed_delivery_retried_until_accepted(queue: JobQueue, receiver: Receiver) -> None:
    receiver.failures = 2
    config = WebhooksConfig(targets=[WebhookTarget(url=receiver.url, secret=SECRET)], **FAST)
    [delivery_id] = _deliveries_of(queue, config, 1)
    async with dispatching(queue, config):
        await eventually(
            _all_in(queue, [delivery_id], DeliveryState.DELIVERED), "the delivery went through"
        )
    delivery = _get(queue, delivery_id)
    assert (delivery.attempts, delivery.last_status) == (3, 204)
    assert [(a.status, a.error) for a in delivery.history] == [
        (500, "HTTP 500"),
        (500, "HTTP 500"),
        (204, None),
    ]
    assert len(receiver.requests) == 3
    headers, body = receiver.requests[-1]
    payload: dict[str, Any] = json.loads(body)
    assert payload["job_id"] == delivery.job_id
    assert payload["verdict"]["label"] == "FAKE"
    assert headers["X-Drishtiksha-Event"] == "job.done"
    assert headers["X-Drishtiksha-Delivery"] == str(delivery_id)
    stamp = headers["X-Drishtiksha-Timestamp"]
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    assert headers["X-Drishtiksha-Signature"] == "sha256=" + expected.hexdigest()


async def test_a_receiver_down_past_the_old_give_up_gets_every_event_once_back(
    queue: JobQueue, receiver: Receiver
) -> None:
    """Deliveries used to be dropped after 8 attempts (about 4 minutes): now a receiver that
    is down for longer still gets every event, once, when it comes back."""
    config = WebhooksConfig(targets=[WebhookTarget(url=receiver.url)], **FAST)
    ids = _deliveries_of(queue, config, 3)
    receiver.down = True
    async with dispatching(queue, config):
        await eventually(
            lambda: all(_get(queue, i).attempts >= 10 for i in ids),
            "every delivery failed more than 8 times",
        )
        assert all(_get(queue, i).state is DeliveryState.PENDING for i in ids)
        receiver.down = False
        await eventually(_all_in(queue, ids, DeliveryState.DELIVERED), "all were delivered")
    jobs = {_get(queue, i).job_id for i in ids}
    assert sorted(receiver.accepted_events()) == sorted(("job.done", j) for j in jobs)
    for i in ids:
        history = _get(queue, i).history
        assert len(history) > 8
        assert [a.status for a in history] == [503] * (len(history) - 1) + [204]
        assert all(a.attempted_at is not None and a.elapsed_s >= 0 for a in history)


async def test_max_attempts_still_parks_a_delivery_when_set(queue: JobQueue) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    config = WebhooksConfig(targets=[WebhookTarget(url=dead)], max_attempts=2, **FAST)
    [delivery_id] = _deliveries_of(queue, config, 1)
    async with dispatching(queue, config):
        await eventually(_all_in(queue, [delivery_id], DeliveryState.DEAD), "it was parked")
    delivery = _get(queue, delivery_id)
    assert delivery.dead_at is not None
    assert delivery.next_attempt_at is None
    assert delivery.last_error
    assert [a.status for a in delivery.history] == [None, None]
    assert all(a.error for a in delivery.history)


def test_only_subscribed_events_are_queued(queue: JobQueue) -> None:
    config = WebhooksConfig(
        targets=[
            WebhookTarget(url="http://127.0.0.1:9/a", events=["failed"]),
            WebhookTarget(url="http://127.0.0.1:9/b"),
        ]
    )
    job = _done_job(queue)
    enqueue_for(queue, config, job)
    assert [d.url for d in Deliveries(queue).for_job(job.id)] == ["http://127.0.0.1:9/b"]


def _config(tmp_path: Path, database_url: str, webhooks: dict[str, Any]) -> Config:
    raw = {
        "database": {"url": database_url},
        "device": "cpu",
        "inboxes": [{"name": "t", "path": str(tmp_path / "inbox"), "detectors": [DETECTOR]}],
        "detectors": {DETECTOR: {"weights": "dummy"}},
        "api": {
            "upload_dir": str(tmp_path / "uploads"),
            "keys": [
                {"name": "ops", "key": ADMIN, "scopes": ["admin"]},
                {"name": "reader", "key": READER, "scopes": ["read"]},
            ],
        },
        "webhooks": webhooks,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    return Config.model_validate(raw).resolved(tmp_path)


async def call(method: str, url: str, key: str | None = None) -> tuple[int, Any]:
    headers = {"X-API-Key": key} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers) as r,
    ):
        body = await (r.json() if r.content_type == "application/json" else r.text())
        return r.status, body


def run_cli(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "-c", str(tmp_path / "config.yaml")])


async def test_a_dead_delivery_is_listed_counted_and_sent_again(
    queue: JobQueue, receiver: Receiver, database_url: str, tmp_path: Path
) -> None:
    # Waits of 0.01, 0.02, 0.02 s fit in 0.06 s, a fourth 0.02 would not: four attempts.
    hooks = {"targets": [{"url": receiver.url}], "retry_for_s": 0.06, **FAST}
    config = _config(tmp_path, database_url, hooks)
    first, second = _deliveries_of(queue, config.webhooks, 2)
    receiver.down = True
    served = runner(init_app(config, queue, queue.engine, None, environ={}), config.api)
    await served.setup()
    await web.TCPSite(served, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{served.addresses[0][1]}"
    try:
        async with dispatching(queue, config.webhooks):
            await eventually(_all_in(queue, [first, second], DeliveryState.DEAD), "both died")
            for parked in (_get(queue, first), _get(queue, second)):
                assert parked.dead_at is not None
                assert [(a.status, a.error) for a in parked.history] == [(503, "HTTP 503")] * 4

            listed = run_cli(tmp_path, "webhooks", "list", "--state", "dead", "--json")
            assert listed.exit_code == 0, listed.output
            docs = [json.loads(line) for line in listed.stdout.splitlines()]
            assert [(d["id"], d["state"], d["attempts"]) for d in docs] == [
                (second, "dead", 4),
                (first, "dead", 4),
            ]
            assert docs[0]["url"] == receiver.url
            assert docs[0]["dead_at"] is not None
            job_of_first = _get(queue, first).job_id
            one_job = run_cli(tmp_path, "webhooks", "list", "--job", job_of_first[:10], "--json")
            assert [json.loads(line)["id"] for line in one_job.stdout.splitlines()] == [first]
            table = run_cli(tmp_path, "webhooks", "list")
            assert table.exit_code == 0, table.output
            assert table.stdout.count("HTTP 503") == 2

            status, page = await call("GET", f"{base}/v1/webhooks/deliveries?state=dead", READER)
            assert status == 200, page
            assert [d["id"] for d in page["deliveries"]] == [second, first]
            # A reader sees where deliveries go, not the hook URL's path (often a token).
            assert page["deliveries"][0]["url"] == receiver.url.removesuffix("/hook")
            status, page = await call("GET", f"{base}/v1/webhooks/deliveries?limit=1", ADMIN)
            assert status == 200, page
            assert page["deliveries"][0]["url"] == receiver.url
            assert page["next"] == second
            status, one = await call("GET", f"{base}/v1/webhooks/deliveries/{first}", READER)
            assert status == 200, one
            assert [a["status"] for a in one["history"]] == [503] * 4
            status, metrics = await call("GET", f"{base}/metrics")
            assert status == 200
            assert 'drishtiksha_webhook_deliveries{state="dead"} 2.0' in metrics
            assert 'drishtiksha_webhook_deliveries{state="pending"} 0.0' in metrics

            receiver.down = False
            retry = f"{base}/v1/webhooks/deliveries/{first}/retry"
            status, refused = await call("POST", retry, READER)
            assert (status, refused["error"]["code"]) == (403, "insufficient_scope")
            status, again = await call("POST", retry, ADMIN)
            assert status == 200, again
            assert (again["state"], again["dead_at"]) == ("pending", None)
            await eventually(
                _all_in(queue, [first], DeliveryState.DELIVERED), "the API's re-send went"
            )
            status, body = await call("POST", retry, ADMIN)
            assert (status, body["error"]["code"]) == (409, "not_dead")
            status, body = await call("POST", f"{base}/v1/webhooks/deliveries/999999/retry", ADMIN)
            assert (status, body["error"]["code"]) == (404, "delivery_not_found")

            resent = run_cli(tmp_path, "webhooks", "retry", "--all-dead")
            assert resent.exit_code == 0, resent.output
            assert f"delivery {second} queued again" in resent.stdout
            await eventually(
                _all_in(queue, [second], DeliveryState.DELIVERED), "the command's re-send went"
            )
            _, metrics = await call("GET", f"{base}/metrics")
            assert 'drishtiksha_webhook_deliveries{state="dead"} 0.0' in metrics
    finally:
        await served.cleanup()

    for delivery_id in (first, second):
        history = _get(queue, delivery_id).history
        assert [a.status for a in history] == [503] * 4 + [204]
    assert sorted(receiver.accepted_events()) == sorted(
        ("job.done", _get(queue, i).job_id) for i in (first, second)
    )
    none_left = run_cli(tmp_path, "webhooks", "retry", "--all-dead")
    assert none_left.exit_code == 1
    assert none_left.output.strip() == "error: no dead delivery"
    delivered = run_cli(tmp_path, "webhooks", "retry", str(first), "424242")
    assert delivered.exit_code == 1
    assert f"delivery {first} is delivered" in delivered.output
    assert "no webhook delivery 424242" in delivered.output
    misuse = run_cli(tmp_path, "webhooks", "retry")
    assert misuse.exit_code == 2
    assert misuse.output.strip() == "error: give delivery ids or --all-dead"


async def test_a_cancel_under_role_api_sends_job_cancelled(
    receiver: Receiver, database_url: str, tmp_path: Path
) -> None:
    """A process that only serves the API both queues the cancel's webhook and sends it."""
    hooks = {"targets": [{"url": receiver.url, "events": ["cancelled"]}], **FAST}
    config = _config(tmp_path, database_url, hooks)
    port = free_port()
    config = config.model_copy(
        update={"api": config.api.model_copy(update={"host": "127.0.0.1", "port": port})}
    )
    engine = make_engine(database_url)
    queue = JobQueue(engine)
    job_id = uuid.uuid4().hex
    assert queue.enqueue(
        job_id=job_id,
        sha256=hashlib.sha256(job_id.encode()).hexdigest(),
        size_bytes=1,
        source_kind="upload",
        source_ref="clip.mp4",
        detectors=[DETECTOR],
    )
    stop = asyncio.Event()
    daemon = asyncio.create_task(Daemon(config, role="api").run(stop))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                await call("GET", f"{base}/health")
                break
            except aiohttp.ClientConnectionError:
                assert not daemon.done(), "the daemon stopped"
                assert time.monotonic() < deadline, "the API did not start"
                await asyncio.sleep(0.05)
        status, body = await call("DELETE", f"{base}/v1/jobs/{job_id}", ADMIN)
        assert (status, body["state"]) == (200, "cancelled")
        await eventually(
            lambda: (
                [d.state for d in Deliveries(queue).for_job(job_id)] == [DeliveryState.DELIVERED]
            ),
            "the cancel was announced",
        )
    finally:
        stop.set()
        await daemon
        engine.dispose()
    assert receiver.accepted_events() == [("job.cancelled", job_id)]
