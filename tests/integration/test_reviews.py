"""Reviews: stored as an audit trail on SQLite and Postgres, read and written over real HTTP,
announced to webhook receivers, exported as CSV for retraining."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import Engine

from processor.api.app import init_app, runner
from processor.config import Config
from processor.verdict import overall_verdict
from storage.db import downgrade, upgrade
from storage.deliveries import Deliveries
from storage.queue import JobQueue, NewResult
from storage.reviews import JobFilter, Reviews

REVIEWER = "desk-anna-0123456789"
READER = "reader-key-0123456789"
HOOK = "http://127.0.0.1:9/hook"
DETECTOR = "color-cues-lstm-v1"  # configured only: these tests run no worker


def finish(queue: JobQueue, job_id: str, name: str, probability: float) -> None:
    """A done job for ``name`` judged ``probability`` fake by one detector."""
    queue.enqueue(
        job_id=job_id,
        sha256=job_id[0] * 64,
        size_bytes=10,
        source_kind="upload",
        source_ref=name,
        detectors=["d1"],
    )
    result = NewResult(
        detector="d1",
        version="1",
        weights_id="w",
        label="FAKE" if probability >= 0.5 else "REAL",
        fake_probability=probability,
        threshold=0.5,
        frame_scores=[],
        details={},
        elapsed_s=0.1,
    )
    [claimed] = queue.claim("w", 1, 30)
    assert claimed.id == job_id
    assert queue.complete(job_id, "w", [result], overall_verdict([result]))


@pytest.fixture
def queue(engine: Engine) -> JobQueue:
    upgrade(engine)
    return JobQueue(engine)


def at(minute: int) -> dt.datetime:
    return dt.datetime(2026, 12, 1, 9, minute, tzinfo=dt.UTC)


def test_every_review_is_kept_and_the_newest_is_current(queue: JobQueue) -> None:
    finish(queue, "a" * 32, "fake.mp4", 0.9)
    finish(queue, "b" * 32, "real.mp4", 0.1)
    finish(queue, "c" * 32, "other.mp4", 0.8)
    reviews = Reviews(queue)
    reviews.add("a" * 32, "second_look", "ask the source", "anna", at=at(1))
    reviews.add("a" * 32, "confirmed_fake", "mouth is off", "ben", at=at(2))
    reviews.add("b" * 32, "confirmed_real", "", "anna", at=at(3))

    history = reviews.history("a" * 32)
    assert [(r.decision, r.reviewer) for r in history] == [
        ("confirmed_fake", "ben"),
        ("second_look", "anna"),
    ]
    current = reviews.current(["a" * 32, "b" * 32, "c" * 32])
    assert {k: v.decision for k, v in current.items()} == {
        "a" * 32: "confirmed_fake",
        "b" * 32: "confirmed_real",
    }

    def names(where: JobFilter) -> list[str]:
        return [j.source_ref for j in reviews.jobs(where, limit=10)]

    # The decision filter follows the current review only: "a" is no longer a second look.
    assert names(JobFilter(review="second_look")) == []
    assert names(JobFilter(review="confirmed_fake")) == ["fake.mp4"]
    assert names(JobFilter(review="unreviewed")) == ["other.mp4"]
    assert names(JobFilter(search="REAL")) == ["real.mp4"]
    assert names(JobFilter(search="aaaaaaaa", sha256_prefix="aaaaaaaa")) == ["fake.mp4"]
    assert names(JobFilter(label="FAKE", review="unreviewed")) == ["other.mp4"]
    # Unreviewed FAKE first; "a" and "b" are settled.
    assert [j.source_ref for j in reviews.review_queue(10)] == ["other.mp4"]
    # Keyset pages: newest first, each page continuing after the last id of the one before.
    first = reviews.jobs(JobFilter(), limit=2)
    rest = reviews.jobs(JobFilter(), limit=2, before=first[-1].id)
    assert [j.id for j in first + rest] == ["c" * 32, "b" * 32, "a" * 32]

    exported = {(r.job_id, r.review.decision) for r in reviews.export()}
    assert exported == {("a" * 32, "confirmed_fake"), ("b" * 32, "confirmed_real")}


def test_downgrade_below_0006_drops_the_reviews(queue: JobQueue, engine: Engine) -> None:
    finish(queue, "a" * 32, "fake.mp4", 0.9)
    Reviews(queue).add("a" * 32, "confirmed_fake", "", "anna", at=at(1))
    downgrade(engine, "0005")
    upgrade(engine)
    assert Reviews(queue).history("a" * 32) == []


@pytest.fixture
async def api(tmp_path: Path, engine: Engine) -> AsyncIterator[tuple[str, JobQueue]]:
    """The API (no worker) over a migrated database, served on a free port."""
    upgrade(engine)
    config = Config.model_validate(
        {
            "database": {"url": engine.url.render_as_string(hide_password=False)},
            "device": "cpu",
            "inboxes": [{"name": "t", "path": str(tmp_path / "inbox"), "detectors": [DETECTOR]}],
            "detectors": {DETECTOR: {"weights": "dummy"}},
            "api": {
                "upload_dir": str(tmp_path / "uploads"),
                "keys": [
                    {"name": "desk-anna", "key": REVIEWER, "scopes": ["read", "submit"]},
                    {"name": "reader", "key": READER, "scopes": ["read"]},
                ],
            },
            "webhooks": {"targets": [{"url": HOOK, "events": ["done", "reviewed"]}]},
        }
    ).resolved(tmp_path)
    queue = JobQueue(engine)
    served = runner(init_app(config, queue, engine, None, environ={}), config.api)
    await served.setup()
    await web.TCPSite(served, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{served.addresses[0][1]}", queue
    finally:
        await served.cleanup()


async def call(method: str, url: str, key: str, **kwargs: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers={"X-API-Key": key}, **kwargs) as r,
    ):
        body = await (r.json() if r.content_type == "application/json" else r.text())
        return r.status, body


async def test_reviews_over_http_with_webhook_and_csv(api: tuple[str, JobQueue]) -> None:
    base, queue = api
    job = "d" * 32
    finish(queue, job, "/srv/inbox/=cmd|calc!A0.mp4", 0.9)
    status, body = await call("GET", f"{base}/v1/jobs/{job}/review", READER)
    assert (status, body) == (200, {"job_id": job, "review": None, "history": []})

    review = {"decision": "confirmed_fake", "note": "=HYPERLINK(1) <b>lips</b>"}
    status, body = await call("PUT", f"{base}/v1/jobs/{job}/review", READER, json=review)
    assert status == 403
    status, body = await call("PUT", f"{base}/v1/jobs/{job}/review", REVIEWER, json=review)
    assert status == 200, body
    assert body["review"]["decision"] == "confirmed_fake"
    assert body["review"]["by"] == "desk-anna"
    assert body["review"]["note"] == review["note"]
    bad = {"decision": "maybe"}
    status, body = await call("PUT", f"{base}/v1/jobs/{job}/review", REVIEWER, json=bad)
    assert (status, body["error"]["code"]) == (400, "bad_review")
    status, body = await call("PUT", f"{base}/v1/jobs/{'e' * 32}/review", REVIEWER, json=review)
    assert status == 404

    [delivery] = Deliveries(queue).for_job(job)
    assert delivery.event == "job.reviewed"
    [sent] = Deliveries(queue).take(1, 30)
    assert sent.payload["review"]["decision"] == "confirmed_fake"
    assert sent.payload["verdict"]["label"] == "FAKE"

    status, text = await call("GET", f"{base}/v1/reviews.csv", READER)
    assert status == 200
    [row] = list(csv.DictReader(io.StringIO(text)))
    assert row["label"] == "FAKE"
    assert row["machine_label"] == "FAKE"
    assert row["machine_fake_probability"] == "0.9000"
    # Cells a spreadsheet would run as formulas are kept as text.
    assert row["file"].startswith("'=")
    assert row["note"] == "'" + review["note"]


async def test_a_forged_desk_cookie_is_refused_not_a_server_error(
    api: tuple[str, JobQueue],
) -> None:
    base, _ = api
    body = base64.urlsafe_b64encode(b'{"k": "desk-anna", "x": 9e18, "n": "n"}').decode()
    for mac in ("\u00e9", "\udcff", "0" * 64):
        # Cookie bytes as a client may send them, whatever their encoding.
        raw = f"drishtiksha_desk={body}.{mac}".encode("utf-8", "surrogateescape")
        headers = {"Cookie": raw.decode("latin-1")}
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base}/desk/", headers=headers, allow_redirects=False) as r,
        ):
            assert r.status in (302, 303, 401), await r.text()


async def test_the_desk_serves_a_dropped_file_only_as_a_video(
    api: tuple[str, JobQueue], tmp_path: Path
) -> None:
    base, queue = api
    page = tmp_path / "page.html"
    page.write_text("<script>alert(1)</script>")
    finish(queue, "f" * 32, "page.html", 0.9)
    queue.set_output_path("f" * 32, str(page))
    # unsafe: keep cookies from an IP address host (127.0.0.1)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        form = {"key": READER}
        async with session.post(f"{base}/desk/signin", data=form, allow_redirects=False) as r:
            assert r.status == 303
        async with session.get(f"{base}/desk/jobs/{'f' * 32}/video") as r:
            assert r.status == 200
            assert r.content_type.startswith("video/")
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert "sandbox" in r.headers["Content-Security-Policy"]
        # A symlink in its place is never followed.
        page.unlink()
        page.symlink_to("/etc/hostname")
        async with session.get(f"{base}/desk/jobs/{'f' * 32}/video") as r:
            assert r.status == 404
