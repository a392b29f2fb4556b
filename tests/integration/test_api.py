"""The HTTP API over real HTTP on loopback, with a real database (SQLite and Postgres) and, where
a test needs one, a real in-process worker running the color-cues detector on dummy weights."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import Engine

from processor.api.app import init_app, runner
from processor.api.uploads import sweep
from processor.config import Config, ConfigError
from processor.daemon import load_pipeline
from processor.lifecycle import Lifecycle
from processor.pipeline import Pipeline
from processor.worker import Worker
from storage.db import make_engine, upgrade
from storage.queue import JobQueue, JobState
from tests.media import make_text_as_mp4, make_video

DETECTOR = "color-cues-lstm-v1"
READ_KEY = "reader-key-0123456789"
SUBMIT_KEY = "submit-key-0123456789"
ENV_KEY = "environment-key-0123456789"
FINAL = {"done", "failed", "cancelled"}


def make_config(tmp_path: Path, database_url: str, api: dict[str, Any]) -> Config:
    return Config.model_validate(
        {
            "database": {"url": database_url},
            "device": "cpu",
            "inboxes": [
                {
                    "name": "t",
                    "path": str(tmp_path / "inbox"),
                    "work": str(tmp_path / "work"),
                    "done": str(tmp_path / "done"),
                    "failed": str(tmp_path / "failed"),
                    "detectors": [DETECTOR],
                }
            ],
            "detectors": {DETECTOR: {"weights": "dummy", "num_frames": 8}},
            "batching": {"max_videos": 4, "max_wait_s": 0.05, "prepare_workers": 1},
            "queue": {"lease_s": 30, "poll_s": 0.1, "retry_base_s": 0.5, "shutdown_grace_s": 5},
            "api": {"upload_dir": str(tmp_path / "uploads"), **api},
        }
    ).resolved(tmp_path)


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    """The real detector, loaded once for the module (loading dlib's model takes a while)."""
    config = Config.model_validate(
        {"device": "cpu", "detectors": {DETECTOR: {"weights": "dummy", "num_frames": 8}}}
    )
    return load_pipeline(config)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("media") / "face.mp4", seconds=1.0, fps=15)


@dataclass
class Live:
    """A running API: its port, a client session, and what it was built from."""

    port: int
    session: aiohttp.ClientSession
    config: Config
    queue: JobQueue
    worker: Worker | None
    stop_worker: Callable[[], Awaitable[None]]

    @property
    def upload_dir(self) -> Path:
        return self.config.api.upload_dir

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def call(
        self, method: str, path: str, *, key: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["X-API-Key"] = key
        async with self.session.request(method, self.url(path), headers=headers, **kwargs) as r:
            text = await r.text()
            body = json.loads(text) if r.content_type == "application/json" else text
            return r.status, body, r.headers

    async def upload(
        self, path: str, video: bytes, *, filename: str = "clip.mp4", key: str | None = None
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        form = aiohttp.FormData(quote_fields=False)  # send the name as a browser would
        # A stream, not bytes: aiohttp warns about large bytes bodies blocking the loop.
        form.add_field("video", io.BytesIO(video), filename=filename, content_type="video/mp4")
        return await self.call("POST", path, data=form, key=key)

    async def wait_final(self, job_id: str) -> dict[str, Any]:
        for _ in range(600):
            status, job, _ = await self.call("GET", f"/v1/jobs/{job_id}", key=READ_KEY)
            assert status == 200, job
            if job["state"] in FINAL and job["output_path"] is None:
                return dict(job)
            await asyncio.sleep(0.1)
        pytest.fail(f"job {job_id} did not finish")

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.upload_dir.iterdir()) if self.upload_dir.exists() else []


Start = Callable[..., Awaitable[Live]]


@pytest.fixture
async def start_api(tmp_path: Path, database_url: str, pipeline: Pipeline) -> AsyncIterator[Start]:
    """Start an API (with a worker unless ``worker=False``); stopped after the test."""
    async with AsyncExitStack() as stack:

        async def start(
            *, worker: bool = True, api: dict[str, Any] | None = None, environ: Any = None
        ) -> Live:
            config = make_config(tmp_path, database_url, api or {})
            engine = make_engine(config.database.url)
            stack.callback(engine.dispose)
            queue = JobQueue(engine)
            lifecycle = Lifecycle(queue, config.inboxes, config.queue)
            w = (
                Worker(
                    queue,
                    pipeline,
                    lifecycle,
                    config.batching,
                    config.queue,
                    "test-worker",
                    config.fusion,
                )
                if worker
                else None
            )
            app = init_app(config, queue, engine, w, environ=environ or {})
            # Served as the daemon serves it (same runner and settings), on a free port.
            served = runner(app, config.api)
            await served.setup()
            stack.push_async_callback(served.cleanup)
            await web.TCPSite(served, "127.0.0.1", 0).start()
            port = served.addresses[0][1]
            stop = asyncio.Event()
            task = asyncio.create_task(w.run(stop)) if w is not None else None

            async def stop_worker() -> None:
                stop.set()
                if task is not None:
                    await task

            stack.push_async_callback(stop_worker)
            session = aiohttp.ClientSession()
            stack.push_async_callback(session.close)
            return Live(port, session, config, queue, w, stop_worker)

        yield start


async def raw_request(live: Live, head: str, body: bytes) -> tuple[asyncio.StreamReader, Any]:
    """Open a connection and send ``head`` and the start of a body, as a slow client would."""
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(head.encode() + b"\r\n\r\n" + body)
    await writer.drain()
    return reader, writer


async def until(cond: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


# --- submit, process, read back -------------------------------------------------------------


async def test_upload_is_processed_by_the_worker(start_api: Start, clip: Path) -> None:
    live = await start_api(api={"keys": KEYS})
    status, job, headers = await live.upload(
        "/v1/jobs", clip.read_bytes(), filename="a/b.mp4", key=SUBMIT_KEY
    )
    assert status == 201, job
    assert headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["source"] == {"kind": "upload", "ref": "a/b.mp4", "inbox": None}
    assert job["detectors"] == [DETECTOR]
    assert job["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()

    done = await live.wait_final(job["id"])
    assert done["state"] == "done", done
    [result] = done["results"]
    assert result["detector"] == DETECTOR
    assert result["weights"] == "dummy"
    assert result["label"] in ("REAL", "FAKE")
    assert done["verdict"]["label"] == result["label"]
    # The server's copy of the upload goes once the job is over; the client's name never
    # became a path.
    await until(lambda: live.leftovers() == [], "the upload's copy to go")
    assert not (live.upload_dir / "a").exists()

    status, frames, _ = await live.call("GET", f"/v1/jobs/{job['id']}/frames", key=READ_KEY)
    assert status == 200
    [scores] = frames["detectors"]
    assert scores["detector"] == DETECTOR
    assert len(scores["frames"]) == len(result["frame_scores"]) > 0
    assert all(0.0 <= f["p"] <= 1.0 for f in scores["frames"])

    status, video, _ = await live.call("GET", f"/v1/videos/{job['sha256']}", key=READ_KEY)
    assert status == 200
    assert video["size_bytes"] == clip.stat().st_size
    assert (video["width"], video["height"]) == (320, 240)
    assert [j["id"] for j in video["jobs"]] == [job["id"]]
    status, _, _ = await live.call("GET", f"/v1/videos/{job['sha256'].upper()}", key=READ_KEY)
    assert status == 200

    status, text, headers = await live.call("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert 'drishtiksha_jobs{state="done"} 1.0' in text
    assert f'drishtiksha_verdicts_total{{label="{result["label"]}"}} 1.0' in text
    assert f'drishtiksha_detector_seconds_count{{detector="{DETECTOR}"}} 1.0' in text
    assert "drishtiksha_batch_videos_count 1.0" in text
    assert "drishtiksha_queue_depth 0.0" in text
    # A second scrape counts nothing twice.
    _, again, _ = await live.call("GET", "/metrics")
    assert f'drishtiksha_verdicts_total{{label="{result["label"]}"}} 1.0' in again


async def test_wait_answers_when_the_job_is_done(start_api: Start, clip: Path) -> None:
    live = await start_api()
    status, job, _ = await live.upload("/v1/jobs?wait=60&priority=5", clip.read_bytes())
    assert status == 201
    assert job["state"] == "done"
    assert job["verdict"] is not None
    assert job["priority"] == 5


async def test_wait_answers_at_the_deadline(start_api: Start, clip: Path) -> None:
    live = await start_api(worker=False)
    status, job, _ = await live.upload("/v1/jobs?wait=0.3", clip.read_bytes())
    assert status == 201
    assert job["state"] == "queued"
    assert live.leftovers() == [f"{job['id']}.video"]


async def test_raw_body_upload(start_api: Start, clip: Path) -> None:
    live = await start_api(worker=False)
    status, job, _ = await live.call(
        "POST",
        "/v1/jobs?filename=raw%20clip.mp4",
        data=clip.read_bytes(),
        headers={"Content-Type": "video/mp4"},
    )
    assert status == 201, job
    assert job["source"]["ref"] == "raw clip.mp4"
    status, job, _ = await live.call(
        "POST",
        "/v1/jobs",
        data=clip.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert status == 201
    assert job["source"]["ref"] == "upload"


async def test_same_bytes_are_answered_from_stored_results(start_api: Start, clip: Path) -> None:
    live = await start_api()
    status, first, _ = await live.upload("/v1/jobs?wait=60", clip.read_bytes())
    assert status == 201
    assert first["state"] == "done"
    await live.wait_final(first["id"])

    status, cached, _ = await live.upload("/v1/jobs", clip.read_bytes(), filename="again.mp4")
    assert status == 200, cached
    assert cached["cached"] is True
    assert cached["sha256"] == first["sha256"]
    assert cached["verdict"] == first["verdict"]
    [r] = cached["results"]
    assert r["cached_from_job"] == first["id"]
    assert r["fake_probability"] == first["results"][0]["fake_probability"]
    _, page, _ = await live.call("GET", "/v1/jobs")
    assert [j["id"] for j in page["jobs"]] == [first["id"]], "no second job"
    await until(lambda: live.leftovers() == [], "the upload's copy to go")

    # A process without a worker (role api) answers alike: what the live workers have loaded
    # is in the database, not in the process.
    api_only = await start_api(worker=False)
    status, again, _ = await api_only.upload("/v1/jobs", clip.read_bytes(), filename="3.mp4")
    assert status == 200, again
    assert again["results"][0]["cached_from_job"] == first["id"]
    _, detectors, _ = await api_only.call("GET", "/v1/detectors")
    [row] = [d for d in detectors["detectors"] if d["key"] == DETECTOR]
    assert (row["loaded"], row["weights"], row["num_frames"]) == (True, "dummy", 8)

    # Other bytes are a new job.
    other = make_video(live.upload_dir.parent / "other.mp4", seconds=1.0, fps=12)
    status, job, _ = await live.upload("/v1/jobs?wait=60", other.read_bytes())
    assert status == 201
    assert job["cached"] is False


async def test_cancel(start_api: Start, clip: Path) -> None:
    live = await start_api(worker=False)
    _, job, _ = await live.upload("/v1/jobs", clip.read_bytes())
    assert live.leftovers() == [f"{job['id']}.video"]
    status, cancelled, _ = await live.call("DELETE", f"/v1/jobs/{job['id']}")
    assert status == 200
    assert cancelled["state"] == "cancelled"
    # The copy moves to the kept uploads, where a retry takes it back from.
    assert live.leftovers() == ["kept"]
    assert (live.upload_dir / "kept" / f"{job['id']}.video").is_file()
    status, body, _ = await live.call("DELETE", f"/v1/jobs/{job['id']}")
    assert status == 409
    assert body["error"]["code"] == "not_queued"
    status, body, _ = await live.call("DELETE", f"/v1/jobs/{'0' * 32}")
    assert status == 404
    assert body["error"]["code"] == "job_not_found"
    status, body, _ = await live.call("DELETE", "/v1/jobs/..%2F..")
    assert status in (400, 404)
    status, body, _ = await live.call("DELETE", "/v1/jobs/ABC")
    assert status == 400
    assert body["error"]["code"] == "bad_job_id"


async def test_list_filters_and_stable_pages(start_api: Start, clip: Path) -> None:
    live = await start_api(worker=False)
    ids = []
    for n in range(5):
        assert live.queue.enqueue(
            job_id=f"{n:032x}",
            sha256=f"{n:064x}",
            size_bytes=1,
            source_kind="folder",
            source_ref=f"/in/{n}.mp4",
            detectors=[DETECTOR],
        )
        ids.append(f"{n:032x}")
    status, page1, _ = await live.call("GET", "/v1/jobs?limit=2")
    assert status == 200
    _, upload, _ = await live.upload("/v1/jobs", clip.read_bytes())  # newer than the pages
    pages = [page1]
    while pages[-1]["next"]:
        _, page, _ = await live.call("GET", f"/v1/jobs?limit=2&before={pages[-1]['next']}")
        pages.append(page)
    assert [j["id"] for p in pages for j in p["jobs"]] == ids[::-1]

    _, uploads, _ = await live.call("GET", "/v1/jobs?source_kind=upload")
    assert [j["id"] for j in uploads["jobs"]] == [upload["id"]]
    _, by_detector, _ = await live.call("GET", f"/v1/jobs?detector={DETECTOR}&limit=500")
    assert len(by_detector["jobs"]) == 6
    _, none, _ = await live.call("GET", "/v1/jobs?detector=other")
    assert none["jobs"] == []
    _, queued, _ = await live.call("GET", "/v1/jobs?state=queued&label=FAKE")
    assert queued["jobs"] == []
    created = upload["created_at"]
    _, since, _ = await live.call("GET", "/v1/jobs", params={"since": created})
    assert [j["id"] for j in since["jobs"]] == [upload["id"]]
    _, until, _ = await live.call("GET", "/v1/jobs", params={"until": created, "limit": "500"})
    assert len(until["jobs"]) == 5
    for query in (
        "state=nope",
        "label=maybe",
        "limit=0",
        "limit=x",
        "before=zz",
        "since=yesterday",
    ):
        status, body, _ = await live.call("GET", f"/v1/jobs?{query}")
        assert status == 400, query
        assert body["error"]["code"] == "bad_query"


# --- limits and bad input -------------------------------------------------------------------


async def test_upload_over_the_cap_is_refused_and_removed(start_api: Start) -> None:
    cap = 3 * 1024 * 1024
    live = await start_api(worker=False, api={"max_upload_bytes": cap})
    seen_partial = []

    async def body() -> AsyncIterator[bytes]:
        chunk = b"\0" * (256 * 1024)
        for i in range(2 * cap // len(chunk)):
            if i == 10:  # 2.5 MiB sent: the server has written part of it to disk
                await until(lambda: bool(live.leftovers()), "a partial file")
                seen_partial.extend(live.leftovers())
            yield chunk

    # Streamed (chunked, no length declared): refused when the count passes the cap.
    status, err, _ = await live.call(
        "POST", "/v1/jobs", data=body(), headers={"Content-Type": "application/octet-stream"}
    )
    assert status == 413
    assert err["error"]["code"] == "upload_too_large"
    assert seen_partial
    assert seen_partial[0].endswith(".part")
    await until(lambda: live.leftovers() == [], "the upload's copy to go")
    # Declared too long: refused before reading.
    status, err, _ = await live.upload("/v1/jobs", b"\0" * (cap + 100_000))
    assert status == 413
    status, err, _ = await live.upload("/analyze", b"\0" * (cap + 100_000))
    assert status == 413
    assert err["error"] == "Request Entity Too Large"
    await until(lambda: live.leftovers() == [], "the upload's copy to go")


async def test_bad_uploads(start_api: Start, tmp_path: Path) -> None:
    live = await start_api(worker=False)
    form = aiohttp.FormData()
    form.add_field("clip", b"abc", filename="x.mp4")
    status, err, _ = await live.call("POST", "/v1/jobs", data=form)
    assert status == 400
    assert err["error"]["code"] == "missing_video"
    status, err, _ = await live.call("POST", "/v1/jobs")
    assert status == 400
    assert err["error"]["code"] == "missing_video"
    status, err, _ = await live.call("POST", "/v1/jobs", json={"video": "x"})
    assert status == 415
    assert err["error"]["code"] == "unsupported_media_type"
    notes = make_text_as_mp4(tmp_path / "notes.mp4")
    status, err, _ = await live.upload("/v1/jobs", notes.read_bytes())
    assert status == 415
    assert err["error"]["code"] == "not_a_video"
    assert "the upload" in err["error"]["message"]
    status, err, _ = await live.upload("/v1/jobs", b"")
    assert status == 400
    assert err["error"]["code"] == "empty_video"
    video = make_video(tmp_path / "v.mp4", seconds=0.5)
    status, err, _ = await live.upload("/v1/jobs", video.read_bytes()[:3000])
    assert status in (415, 422), err
    for query in ("detectors=nope", "detectors=", "priority=high", "priority=10000000", "wait=-1"):
        status, err, _ = await live.upload(f"/v1/jobs?{query}", video.read_bytes())
        assert status == 400, (query, err)
    await until(lambda: live.leftovers() == [], "the upload's copy to go")
    status, err, _ = await live.call("GET", "/v1/videos/xyz")
    assert status == 400
    assert err["error"]["code"] == "bad_sha256"
    status, err, _ = await live.call("GET", f"/v1/videos/{'a' * 64}")
    assert status == 404
    assert err["error"]["code"] == "video_not_found"
    status, err, _ = await live.call("GET", f"/v1/jobs/{'a' * 32}")
    assert status == 404
    status, err, _ = await live.call("GET", f"/v1/jobs/{'a' * 32}/frames")
    assert status == 404


async def test_disconnect_mid_upload_leaves_nothing(start_api: Start) -> None:
    live = await start_api(worker=False)
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
        "Content-Length: 50000000"
    )
    _, writer = await raw_request(live, head, b"\0" * 2_000_000)
    await until(lambda: bool(live.leftovers()), "the upload to start")
    writer.transport.abort()
    await until(lambda: not live.leftovers(), "the partial upload to be removed")
    _, page, _ = await live.call("GET", "/v1/jobs")
    assert page["jobs"] == []


async def test_concurrent_upload_limit_and_idle_timeout(start_api: Start, clip: Path) -> None:
    live = await start_api(
        worker=False, api={"max_concurrent_uploads": 1, "upload_idle_timeout_s": 1.0}
    )
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
        "Content-Length: 1000000"
    )
    reader, writer = await raw_request(live, head, b"\0" * 1000)
    await until(lambda: bool(live.leftovers()), "the slow upload to start")
    status, err, headers = await live.upload("/v1/jobs", clip.read_bytes())
    assert status == 503
    assert err["error"]["code"] == "too_many_uploads"
    assert headers["Retry-After"]
    # The slow client sends nothing more: dropped with 408, its partial file removed.
    answer = await asyncio.wait_for(reader.read(), 30)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"upload_timeout" in answer
    writer.close()
    await until(lambda: live.leftovers() == [], "the upload's copy to go")
    status, _, _ = await live.upload("/v1/jobs", clip.read_bytes())
    assert status == 201, "the slot is free again"


# --- auth and errors ------------------------------------------------------------------------

PROTECTED = [
    ("POST", "/v1/jobs", "submit"),
    ("GET", "/v1/jobs", "read"),
    ("GET", f"/v1/jobs/{'a' * 32}", "read"),
    ("DELETE", f"/v1/jobs/{'a' * 32}", "submit"),
    ("GET", f"/v1/jobs/{'a' * 32}/frames", "read"),
    ("GET", f"/v1/jobs/{'a' * 32}/visualization", "read"),
    ("GET", f"/v1/videos/{'a' * 64}", "read"),
    ("GET", "/v1/detectors", "read"),
    ("GET", "/v1/status", "read"),
    ("POST", "/analyze", "submit"),
    ("POST", "/analyze/detailed", "submit"),
    ("POST", "/analyze/frames", "submit"),
    ("POST", "/analyze/visualize", "submit"),
]
KEYS = [
    {"name": "reader", "key": READ_KEY, "scopes": ["read"]},
    {"name": "submitter", "key": SUBMIT_KEY, "scopes": ["submit"]},
]


async def test_every_protected_route_checks_key_and_scope(start_api: Start) -> None:
    live = await start_api(worker=False, api={"keys": KEYS}, environ={"API_KEY": ENV_KEY})
    for method, path, scope in PROTECTED:
        seed = path.startswith("/analyze")
        status, err, headers = await live.call(method, path)
        assert status == 401, (method, path)
        assert "X-API-Key" in headers["WWW-Authenticate"]
        code = err["code"] if seed else err["error"]["code"]
        assert code == "missing_api_key"
        status, err, _ = await live.call(method, path, key="wrong-key-0123456789")
        assert status == 401, (method, path)
        wrong_scope = READ_KEY if scope == "submit" else SUBMIT_KEY
        status, err, _ = await live.call(method, path, key=wrong_scope)
        assert status == 403, (method, path)
        code = err["code"] if seed else err["error"]["code"]
        assert code == "insufficient_scope"
        right = READ_KEY if scope == "read" else SUBMIT_KEY
        for key in (right, ENV_KEY):
            status, _, _ = await live.call(method, path, key=key)
            assert status not in (401, 403), (method, path, key)
    for path in ("/", "/health", "/metrics", "/openapi.json", "/docs", "/redoc"):
        status, _, _ = await live.call("GET", path)
        assert status == 200, path


async def test_health_and_metrics_can_require_a_key(start_api: Start) -> None:
    live = await start_api(
        worker=False,
        api={"keys": KEYS, "health_requires_key": True, "metrics_requires_key": True},
    )
    for path in ("/", "/health", "/metrics"):
        status, _, _ = await live.call("GET", path)
        assert status == 401, path
        status, _, _ = await live.call("GET", path, key=READ_KEY)
        assert status == 200, path


def test_no_key_on_a_reachable_host_refuses_to_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine: Engine = make_engine(url)
    try:
        upgrade(engine)
        queue = JobQueue(engine)
        reachable = make_config(tmp_path, url, {"host": "0.0.0.0"})
        with pytest.raises(ConfigError, match=r"no API key is configured.*api\.keys"):
            init_app(reachable, queue, engine, None, environ={})
        init_app(reachable, queue, engine, None, environ={"API_KEY": ENV_KEY})
        keyed = make_config(tmp_path, url, {"host": "0.0.0.0", "keys": KEYS})
        init_app(keyed, queue, engine, None, environ={})
        trusting = make_config(tmp_path, url, {"host": "0.0.0.0", "allow_unauthenticated": True})
        init_app(trusting, queue, engine, None, environ={})
        init_app(make_config(tmp_path, url, {"host": "::1"}), queue, engine, None, environ={})
        wrong_model = make_config(tmp_path, url, {"default_model": "siglip-lstm-v3"})
        with pytest.raises(ConfigError, match=r"api\.default_model"):
            init_app(wrong_model, queue, engine, None, environ={})
    finally:
        engine.dispose()


async def test_one_error_shape_with_a_request_id(start_api: Start) -> None:
    live = await start_api(worker=False)
    for method, path, status in [
        ("GET", "/nowhere", 404),
        ("PUT", "/v1/jobs", 405),
        ("GET", f"/v1/jobs/{'b' * 32}", 404),
    ]:
        got, err, headers = await live.call(method, path)
        assert got == status
        assert set(err) == {"error"}
        assert set(err["error"]) == {"code", "message", "request_id"}
        assert err["error"]["request_id"] == headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])
    _, err, headers = await live.call("GET", "/nowhere", headers={"X-Request-ID": "trace-42"})
    assert headers["X-Request-ID"] == "trace-42" == err["error"]["request_id"]
    _, _, headers = await live.call("GET", "/nowhere", headers={"X-Request-ID": "<script>"})
    assert headers["X-Request-ID"] != "<script>"
    _, _, headers = await live.call("PUT", "/v1/jobs")
    assert "POST" in headers["Allow"]


# --- the older service's endpoints ----------------------------------------------------------

QUICK = {"prediction", "confidence", "processing_time", "model", "timestamp"}
# Ours on top of the older service's fields: dummy weights are never silent.
OURS = {"weights", "warning"}


async def test_seed_endpoints(start_api: Start, clip: Path) -> None:
    live = await start_api()
    status, info, _ = await live.call("GET", "/")
    assert status == 200
    assert info["available_models"] == [DETECTOR]

    status, quick, _ = await live.upload("/analyze", clip.read_bytes())
    assert status == 200, quick
    assert set(quick) == QUICK | OURS
    assert quick["weights"] == "dummy"
    assert "dummy" in quick["warning"]
    assert quick["prediction"] in ("REAL", "FAKE")
    assert quick["model"] == DETECTOR
    assert 0.5 <= quick["confidence"] <= 1.0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", quick["timestamp"])

    status, detailed, _ = await live.upload(
        f"/analyze/detailed?model={DETECTOR}", clip.read_bytes()
    )
    assert status == 200, detailed
    assert set(detailed) == QUICK | OURS | {"analysis_details", "model_info", "system_info"}
    assert set(detailed["analysis_details"]) == {
        "frame_count",
        "avg_confidence",
        "confidence_std",
        "temporal_consistency",
        "rolling_average",
    }
    assert detailed["analysis_details"]["frame_count"] > 0
    assert detailed["model_info"] == {
        "version": "1.0.0",
        "architecture": "ColorCues-LSTM",
        "device": "cpu",
    }
    assert detailed["system_info"] == {"gpu_memory_used": "0.0GB", "processing_device": "CPU"}
    assert (detailed["prediction"], detailed["confidence"]) == (
        quick["prediction"],
        quick["confidence"],
    )

    status, frames, _ = await live.upload("/analyze/frames", clip.read_bytes())
    assert status == 200, frames
    assert set(frames) == QUICK | OURS | {"frame_predictions", "temporal_analysis", "summary"}
    first = frames["frame_predictions"][0]
    assert set(first) == {"frame", "confidence", "prediction"}
    numbers = [f["frame"] for f in frames["frame_predictions"]]
    assert numbers == sorted(numbers)
    assert numbers[0] >= 1
    assert numbers[-1] <= 15
    assert set(frames["temporal_analysis"]) == {
        "consistency_score",
        "pattern_detection",
        "anomaly_frames",
        "confidence_trend",
    }
    summary = frames["summary"]
    assert summary["total_frames"] == len(frames["frame_predictions"])
    assert summary["fake_frames"] + summary["real_frames"] == summary["total_frames"]
    # The jobs went through the queue at the older service's priority.
    _, page, _ = await live.call("GET", "/v1/jobs")
    assert {j["priority"] for j in page["jobs"]} == {100}

    status, err, _ = await live.upload("/analyze?model=invalid-model", clip.read_bytes())
    assert status == 422
    assert err["error"] == "Model not found"
    assert err["message"] == "Requested model 'invalid-model' is not available"
    assert err["available_models"] == [DETECTOR]
    assert "See /health endpoint for model status" in err["suggestions"]
    assert {"error", "message", "available_models", "suggestions", "timestamp"} <= set(err)


async def test_seed_analysis_times_out_with_504(start_api: Start, clip: Path) -> None:
    live = await start_api(worker=False, api={"request_timeout_s": 0.5})
    status, err, _ = await live.upload("/analyze", clip.read_bytes())
    assert status == 504
    assert err["code"] == "analysis_timeout"
    assert err["job_id"] in err["message"]
    status, job, _ = await live.call("GET", f"/v1/jobs/{err['job_id']}")
    assert status == 200
    assert job["state"] == "queued"
    assert job["priority"] == 100


# --- health, detectors, docs ----------------------------------------------------------------


async def test_health_follows_the_worker(start_api: Start) -> None:
    live = await start_api()
    # Not ready until the worker's loops run (they start once it has recorded a heartbeat).
    for _ in range(100):
        status, health, _ = await live.call("GET", "/health")
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200, health
    assert (health["status"], health["ready"]) == ("healthy", True)
    assert health["available_models"] == [DETECTOR]
    _, detail, _ = await live.call("GET", "/v1/status")
    assert (detail["ready"], detail["database"]) == (True, "ok")
    assert detail["worker"]["alive"] is True
    assert detail["detectors"][DETECTOR]["loaded"] is True
    await live.stop_worker()
    status, health, _ = await live.call("GET", "/health")
    assert status == 503
    assert health["status"] == "unhealthy"
    _, detail, _ = await live.call("GET", "/v1/status")
    assert detail["worker"]["alive"] is False


async def test_detectors(start_api: Start) -> None:
    live = await start_api()
    # What is loaded comes from the workers' heartbeats in the database: the first one is
    # recorded as the worker starts.
    for _ in range(100):
        status, body, _ = await live.call("GET", "/v1/detectors")
        rows = {d["key"]: d for d in body["detectors"]}
        if rows[DETECTOR]["loaded"]:
            break
        assert rows[DETECTOR]["reason"].startswith("no live worker")
        await asyncio.sleep(0.05)
    assert status == 200
    assert body["device"] == "cpu"
    assert body["default"] == [DETECTOR]
    assert rows[DETECTOR]["loaded"] is True
    assert rows[DETECTOR]["workers"] == 1
    assert rows[DETECTOR]["weights"] == "dummy"
    assert rows[DETECTOR]["num_frames"] == 8
    assert rows[DETECTOR]["reason"] is None
    for key, row in rows.items():
        if key != DETECTOR:
            assert row["loaded"] is False, key
            assert row["reason"], key


async def test_openapi_and_docs(start_api: Start) -> None:
    live = await start_api(worker=False)
    status, doc, _ = await live.call("GET", "/openapi.json")
    assert status == 200
    assert doc["openapi"] == "3.1.0"
    documented = {
        (m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"
    }
    from processor.api.app import ROUTES

    assert documented == {(m, p) for m, p, _, _ in ROUTES if p != "/docs/init.js"}
    for path, script in (
        ("/docs", "/docs/static/swagger-ui-bundle.js"),
        ("/redoc", "/redoc/static/redoc.standalone.js"),
    ):
        status, page, headers = await live.call("GET", path)
        assert status == 200, path
        assert headers["Content-Type"].startswith("text/html"), path
        assert f'src="{script}"' in page, path
        assert "'self'" in headers["Content-Security-Policy"], path
        assert "unsafe-eval" not in headers["Content-Security-Policy"], path
        assert "http" not in page.replace("http-equiv", ""), "no asset from elsewhere"
    script = {"text/javascript", "application/javascript"}
    for asset, kinds in (
        ("/docs/static/swagger-ui-bundle.js", script),
        ("/docs/static/swagger-ui-standalone-preset.js", script),
        ("/docs/static/swagger-ui.css", {"text/css"}),
        ("/docs/static/index.css", {"text/css"}),
        ("/docs/static/favicon-32x32.png", {"image/png"}),
        ("/docs/init.js", script),
        ("/redoc/static/redoc.standalone.js", script),
    ):
        async with live.session.get(live.url(asset)) as r:
            assert r.status == 200, asset
            assert r.content_type in kinds, asset
    for escape in ("/docs/static/../../api.py", "/redoc/static/../../api.py"):
        status, _, _ = await live.call("GET", escape)
        assert status in (403, 404), escape


def test_vendored_docs_assets_match_their_provenance_note() -> None:
    """Every file served under /docs/static and /redoc/static is listed, with its sha256, in the
    note that says where it came from."""
    from processor.api.docs import ASSETS

    note = (ASSETS / "README.md").read_text()
    listed = dict(re.findall(r"^\| `([^`]+)`[^|]*\| `([0-9a-f]{64})` \|$", note, re.MULTILINE))
    served = sorted(p for p in ASSETS.glob("*/*") if p.is_file())
    assert served
    for path in served:
        name = path.relative_to(ASSETS).as_posix()
        assert listed.get(name) == hashlib.sha256(path.read_bytes()).hexdigest(), name


CHROMIUM = Path("/usr/bin/chromium")
# ReDoc's Redocly logo, which the page's policy keeps from being fetched (see api_docs).
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
async def test_docs_pages_render_in_chromium(start_api: Start, database_url: str) -> None:
    """Swagger UI and ReDoc draw the document in a real browser under their pages' policies,
    fetching nothing from anywhere but the daemon."""
    if not database_url.startswith("sqlite"):
        pytest.skip("the pages never touch the database; once is enough")
    playwright_api = pytest.importorskip("playwright.async_api")
    live = await start_api(worker=False)
    # A name that is not loopback, as a newsroom's host would be: Swagger UI only calls its
    # online validator for documents served from elsewhere than localhost.
    origin = f"http://docs.test:{live.port}"
    problems: list[str] = []

    async def only_the_daemon(route: Any) -> None:
        if route.request.url.startswith(origin + "/"):
            await route.continue_()
        else:
            problems.append(f"fetched {route.request.url}")
            await route.abort()

    def console(message: Any) -> None:
        if message.type == "error" and REDOCLY_LOGO not in message.text:
            problems.append(message.text)

    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--host-resolver-rules=MAP docs.test 127.0.0.1",
            ],
        )
        try:
            page = await browser.new_page()
            page.set_default_timeout(30_000)
            await page.route("**/*", only_the_daemon)
            page.on("console", console)
            page.on("pageerror", lambda e: problems.append(str(e)))
            for path, title in (("/docs", ".info .title"), ("/redoc", ".api-info h1")):
                await page.goto(origin + path)
                await playwright_api.expect(page.locator(title)).to_contain_text("Drishtiksha")
            # ReDoc searches in a worker; the page's policy must let it start.
            await page.fill(".search-input", "review")
            found = page.get_by_role("search").get_by_role("menuitem")
            await playwright_api.expect(found.first).to_be_visible()
        finally:
            await browser.close()
    assert problems == []


async def test_worker_state_stays_in_the_database(start_api: Start, clip: Path) -> None:
    """A job submitted through the API is an ordinary job row, visible to every process."""
    live = await start_api(worker=False)
    _, job, _ = await live.upload("/v1/jobs?priority=7", clip.read_bytes())
    view = live.queue.get(job["id"])
    assert view is not None
    assert (view.state, view.priority, view.source_kind, view.inbox) == (
        JobState.QUEUED,
        7,
        "upload",
        None,
    )
    assert view.work_path == str(live.upload_dir / f"{job['id']}.video")


async def test_start_up_sweeps_what_crashes_left(start_api: Start, tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    old = 1_000_000_000.0  # 2001: long before any live request

    def leave(name: str, *, stale: bool = True) -> Path:
        path = uploads / name
        path.write_bytes(b"x")
        if stale:
            os.utime(path, (old, old))
        return path

    leave("1" * 32 + ".part")
    live = await start_api(worker=False)
    assert live.leftovers() == [], "start-up removed the crashed upload"

    kept_job = "2" * 32
    queued = leave(kept_job + ".video")
    assert live.queue.enqueue(
        job_id=kept_job,
        sha256="9" * 64,
        size_bytes=1,
        source_kind="upload",
        source_ref="x.mp4",
        detectors=[DETECTOR],
        work_path=str(queued),
    )
    leave("3" * 32 + ".part")
    leave("4" * 32 + ".video")  # received, but its job was never committed
    fresh = leave("5" * 32 + ".part", stale=False)  # may belong to a request still running
    other = leave("notes.txt")  # not a name the server makes: not its to remove
    assert await asyncio.to_thread(sweep, uploads, live.queue.known_job_ids) == 2
    assert live.leftovers() == sorted(p.name for p in (queued, fresh, other))
