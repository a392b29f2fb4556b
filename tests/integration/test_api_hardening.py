"""The API against hostile or careless clients (slow, trickling, oversized forms, bad header
bytes, hang-ups), what it shows to whom, and the ids people copy from logs; over real HTTP on
loopback, served as the daemon serves it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import pytest
import schemathesis
from schemathesis import checks
from schemathesis.generation import GenerationMode

from tests.integration.test_api import (
    DETECTOR,
    READ_KEY,
    SUBMIT_KEY,
    Live,
    Start,
    clip,
    pipeline,
    raw_request,
    start_api,
    until,
)

# test_api's fixtures, imported for pytest to find in this module.
SHARED_FIXTURES = (clip, pipeline, start_api)
ADMIN_KEY = "admin-key-0123456789"
OTHER_SUBMIT_KEY = "other-submit-key-0123456789"
KEYS = [
    {"name": "reader", "key": READ_KEY, "scopes": ["read"]},
    {"name": "submitter", "key": SUBMIT_KEY, "scopes": ["read", "submit"]},
    {"name": "other", "key": OTHER_SUBMIT_KEY, "scopes": ["submit"]},
    {"name": "admin", "key": ADMIN_KEY, "scopes": ["admin"]},
]
RAW_HEAD = (
    "POST /v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
    "Content-Length: 1000000"
)


async def answer(reader: asyncio.StreamReader, within_s: float = 20) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), within_s)


async def trickle(writer: Any, stop: asyncio.Event, every_s: float = 0.2) -> None:
    """One byte every ``every_s`` until ``stop`` or the server hangs up."""
    while not stop.is_set():
        try:
            writer.write(b"\0")
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every_s)


# --- 1: slow uploads cannot hold the slots --------------------------------------------------


async def test_a_trickling_upload_is_dropped_for_its_rate(start_api: Start) -> None:
    live = await start_api(
        worker=False,
        api={"upload_min_bytes_per_s": 1000, "upload_rate_window_s": 1.0},
    )
    reader, writer = await raw_request(live, RAW_HEAD, b"\0")
    stop = asyncio.Event()
    task = asyncio.create_task(trickle(writer, stop))
    try:
        got = await answer(reader)
    finally:
        stop.set()
        await task
    writer.close()
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b"upload_too_slow" in got
    await until(lambda: live.leftovers() == [], "the partial upload to be removed")


async def test_an_upload_past_its_deadline_is_dropped(start_api: Start) -> None:
    live = await start_api(
        worker=False,
        api={"upload_min_bytes_per_s": 10, "upload_rate_window_s": 1.0, "upload_deadline_s": 1.5},
    )
    reader, writer = await raw_request(live, RAW_HEAD, b"\0" * 100)
    stop = asyncio.Event()
    task = asyncio.create_task(trickle(writer, stop, every_s=0.05))  # 20 B/s: fast enough
    try:
        got = await answer(reader)
    finally:
        stop.set()
        await task
    writer.close()
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b"upload_deadline" in got


async def test_one_key_cannot_hold_every_upload_slot(start_api: Start, clip: Path) -> None:
    live = await start_api(
        worker=False, api={"keys": KEYS, "max_concurrent_uploads": 3, "max_uploads_per_client": 2}
    )
    head = RAW_HEAD + f"\r\nX-API-Key: {SUBMIT_KEY}"
    held = [await raw_request(live, head, b"\0" * 1000) for _ in range(2)]
    await until(lambda: len(live.leftovers()) == 2, "both slow uploads to start")
    status, err, _ = await live.upload("/v1/jobs", clip.read_bytes(), key=SUBMIT_KEY)
    assert status == 503, err
    assert err["error"]["code"] == "too_many_uploads"
    status, job, _ = await live.upload("/v1/jobs", clip.read_bytes(), key=OTHER_SUBMIT_KEY)
    assert status == 201, job
    for _, writer in held:
        writer.transport.abort()
    await until(lambda: live.leftovers() == [f"{job['id']}.video"], "the slow uploads to go")


# --- 2: a form of thousands of fields -------------------------------------------------------


async def test_a_form_of_many_fields_is_refused_and_the_loop_stays_free(start_api: Start) -> None:
    live = await start_api(worker=False)
    boundary = "b0undary"
    fields = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n'.encode()
        for i in range(20_000)
    )
    body = fields + f"--{boundary}--\r\n".encode()
    ctype = f"multipart/form-data; boundary={boundary}"
    abusive = asyncio.create_task(
        live.call("POST", "/v1/jobs", data=io.BytesIO(body), headers={"Content-Type": ctype})
    )
    health = asyncio.create_task(live.call("GET", "/health"))
    (status, err, _), (health_status, _, _) = await asyncio.gather(abusive, health)
    assert status == 400, err
    assert err["error"]["code"] == "too_many_parts"
    assert health_status == 200
    form = aiohttp.FormData()
    form.add_field("notes", io.BytesIO(b"x" * 100_000), filename="notes.txt")
    form.add_field("video", io.BytesIO(b"x"), filename="clip.mp4")
    status, err, _ = await live.call("POST", "/v1/jobs", data=form)
    assert status == 413
    assert err["error"]["code"] == "form_field_too_large"
    assert live.leftovers() == []


# --- 3: header bytes that are not UTF-8 -----------------------------------------------------


async def test_a_key_that_is_not_utf8_is_refused_with_401(
    start_api: Start, caplog: pytest.LogCaptureFixture
) -> None:
    live = await start_api(worker=False, api={"keys": KEYS})
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(
        b"GET /v1/jobs HTTP/1.1\r\nHost: t\r\nX-API-Key: \xff\r\nConnection: close\r\n\r\n"
    )
    got = await answer(reader)
    writer.close()
    assert got.startswith(b"HTTP/1.1 401"), got[:300]
    assert b"invalid_api_key" in got
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- 4: a client that hangs up mid-upload ---------------------------------------------------


async def test_a_client_hanging_up_is_counted_as_such(
    start_api: Start, caplog: pytest.LogCaptureFixture
) -> None:
    live = await start_api(worker=False)
    caplog.set_level(logging.INFO, logger="processor.api")
    _, writer = await raw_request(live, RAW_HEAD.replace("1000000", "50000000"), b"\0" * 2_000_000)
    await until(lambda: bool(live.leftovers()), "the upload to start")
    writer.transport.abort()
    await until(lambda: "went away" in caplog.text, "the hang-up to be noticed")
    assert live.leftovers() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    (line,) = [r for r in caplog.records if "went away" in r.getMessage()]
    assert line.levelno == logging.INFO
    assert line.exc_info is None
    _, metrics, _ = await live.call("GET", "/metrics")
    counted = re.findall(r'drishtiksha_http_requests_total\{[^}]*route="/v1/jobs"[^}]*\}', metrics)
    assert counted
    assert all('status="499"' in c for c in counted), counted


# --- 5: connections that never finish their request head ------------------------------------


async def test_idle_and_trickling_connections_are_closed(start_api: Start) -> None:
    live = await start_api(worker=False, api={"header_timeout_s": 1.0})
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", live.port)
    slow_reader, slow = await asyncio.open_connection("127.0.0.1", live.port)

    async def trickle_head() -> None:
        for byte in b"GET /health HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"x" * 1000:
            if slow.is_closing():
                return
            slow.write(bytes([byte]))
            await asyncio.sleep(0.1)

    task = asyncio.create_task(trickle_head())
    # Closed by the server (end of stream) well before either client would have finished.
    assert await answer(silent_reader, 10) == b""
    assert await answer(slow_reader, 10) == b""
    assert not task.done(), "the head was still trickling in when the server hung up"
    task.cancel()
    silent.close()
    slow.close()
    # An ordinary client on a kept-alive connection is unaffected.
    for _ in range(2):
        status, _, _ = await live.call("GET", "/health")
        assert status == 200


# --- 6: what each key sees ------------------------------------------------------------------


async def folder_job(live: Live, clip: Path, name: str = "clip.mp4") -> str:
    """Drop ``clip`` into the inbox as ``name``; the id of its job, once finalized."""
    assert live.worker is not None
    inbox = live.config.inboxes[0]
    live.worker.lifecycle.prepare_folders()
    dropped = inbox.path / name
    shutil.copy(clip, dropped)
    await live.worker.lifecycle.accept(inbox, dropped)
    job = next(j for j in live.queue.list(limit=50) if Path(j.source_ref).name == name)

    def finalized() -> bool:
        view = live.queue.get(job.id)
        return view is not None and view.finalized_at is not None

    await until(finalized, "the folder job to be finalized")
    return job.id


async def test_health_is_minimal_and_status_needs_a_key(start_api: Start) -> None:
    live = await start_api(api={"keys": KEYS})
    await until(lambda: live.worker is not None and live.worker.alive(), "the worker")
    status, health, _ = await live.call("GET", "/health")
    assert status == 200
    assert set(health) == {
        "service",
        "status",
        "ready",
        "version",
        "timestamp",
        "available_models",
        "default_model",
    }
    assert (health["status"], health["ready"]) == ("healthy", True)
    assert health["available_models"] == [DETECTOR]
    status, _, _ = await live.call("GET", "/v1/status")
    assert status == 401
    status, detail, _ = await live.call("GET", "/v1/status", key=READ_KEY)
    assert status == 200
    assert detail["ready"] is True
    assert detail["worker"]["id"] == "test-worker"
    assert [w["id"] for w in detail["workers"]] == ["test-worker"]
    assert detail["workers"][0]["detectors"] == [DETECTOR]  # what it has loaded
    assert detail["stranded"] == []
    assert detail["detectors"][DETECTOR]["loaded"] is True


async def test_server_paths_only_for_admin_keys(start_api: Start, clip: Path) -> None:
    live = await start_api(api={"keys": KEYS})
    job_id = await folder_job(live, clip)
    _, job, _ = await live.call("GET", f"/v1/jobs/{job_id}", key=READ_KEY)
    assert (job["source"]["ref"], job["output_path"]) == ("clip.mp4", "clip.mp4")
    _, page, _ = await live.call("GET", "/v1/jobs", key=READ_KEY)
    assert "/" not in json.dumps([j["source"]["ref"] for j in page["jobs"]])
    _, job, _ = await live.call("GET", f"/v1/jobs/{job_id}", key=ADMIN_KEY)
    assert job["output_path"] == str(live.config.inboxes[0].done / "clip.mp4")
    assert Path(job["source"]["ref"]).is_absolute()


async def test_paths_stay_visible_without_keys(start_api: Start, clip: Path) -> None:
    live = await start_api()
    job_id = await folder_job(live, clip)
    _, job, _ = await live.call("GET", f"/v1/jobs/{job_id}")
    assert job["output_path"] == str(live.config.inboxes[0].done / "clip.mp4")


async def test_rendering_needs_submit_and_kept_renderings_are_bounded(
    start_api: Start, clip: Path, tmp_path: Path
) -> None:
    live = await start_api(api={"keys": KEYS, "artefacts_max_files": 1})
    first = await folder_job(live, clip, "first.mp4")
    second_clip = tmp_path / "second.mp4"
    second_clip.write_bytes(clip.read_bytes() + b"\0")  # other bytes: judged anew
    second = await folder_job(live, second_clip, "second.mp4")
    artefacts = live.upload_dir.parent / "artefacts"

    async def fetch(job_id: str, key: str) -> int:
        url = live.url(f"/v1/jobs/{job_id}/visualization")
        async with live.session.get(url, headers={"X-API-Key": key}) as r:
            await r.read()
            return r.status

    assert await fetch(first, READ_KEY) == 403
    assert not artefacts.exists()
    assert await fetch(first, SUBMIT_KEY) == 200
    assert await fetch(first, READ_KEY) == 200, "a kept rendering is read with read scope"
    assert await fetch(second, SUBMIT_KEY) == 200
    kept = sorted(p.relative_to(artefacts).parts[0] for p in artefacts.rglob("*.mp4"))
    assert kept == [second], "past artefacts_max_files the oldest rendering went"


# --- 12: the ids people copy ----------------------------------------------------------------


def enqueue(live: Live, job_id: str, sha256: str) -> None:
    assert live.queue.enqueue(
        job_id=job_id,
        sha256=sha256,
        size_bytes=1,
        source_kind="upload",
        source_ref="x.mp4",
        detectors=[DETECTOR],
    )


async def test_unique_prefixes_resolve(start_api: Start) -> None:
    live = await start_api(worker=False)
    enqueue(live, "abcdef01" + "1" * 24, "e" * 64)
    enqueue(live, "abcdef01" + "2" * 24, "e" * 12 + "0" * 52)
    enqueue(live, "12345678" + "0" * 24, "f" * 64)
    status, job, _ = await live.call("GET", "/v1/jobs/12345678")
    assert (status, job["id"]) == (200, "12345678" + "0" * 24)
    status, _, _ = await live.call("GET", "/v1/jobs/ABCDEF011")
    assert status == 200
    status, frames, _ = await live.call("GET", "/v1/jobs/abcdef012/frames")
    assert (status, frames["job_id"]) == (200, "abcdef01" + "2" * 24)
    status, err, _ = await live.call("GET", "/v1/jobs/abcdef01")
    assert status == 409
    assert err["error"]["code"] == "ambiguous_job_id"
    assert "1111" not in err["error"]["message"]
    status, err, _ = await live.call("DELETE", "/v1/jobs/abcdef01")
    assert status == 409
    status, err, _ = await live.call("GET", "/v1/jobs/99999999")
    assert (status, err["error"]["code"]) == (404, "job_not_found")
    status, err, _ = await live.call("GET", "/v1/jobs/1234567")
    assert (status, err["error"]["code"]) == (400, "bad_job_id")
    status, video, _ = await live.call("GET", "/v1/videos/ffffffffffff")
    assert (status, video["sha256"]) == (200, "f" * 64)
    status, err, _ = await live.call("GET", "/v1/videos/eeeeeeeeeeee")
    assert (status, err["error"]["code"]) == (409, "ambiguous_sha256")
    status, err, _ = await live.call("GET", "/v1/videos/fffffffffff")
    assert status == 400


async def test_query_parameters_are_checked(start_api: Start) -> None:
    live = await start_api(worker=False)
    for label in ("fake", "Real", "UNCERTAIN"):
        status, page, _ = await live.call("GET", f"/v1/jobs?label={label}")
        assert status == 200, (label, page)
    status, err, _ = await live.call("GET", "/v1/jobs?q=cat")
    assert status == 400
    assert (err["error"]["code"], "'q'" in err["error"]["message"]) == ("unknown_parameter", True)
    status, _, _ = await live.call("GET", "/v1/detectors?verbose=1")
    assert status == 400
    status, _, _ = await live.call("GET", "/health?probe=1")
    assert status == 200, "health checkers may add their own parameters"


# --- 21: bytes judged from the inbox --------------------------------------------------------


async def test_bytes_judged_from_the_inbox_are_answered_from_stored_results(
    start_api: Start, clip: Path
) -> None:
    live = await start_api()
    folder_job_id = await folder_job(live, clip)
    status, body, _ = await live.upload("/v1/jobs", clip.read_bytes())
    assert status == 200, body
    assert body["cached"] is True
    assert {r["cached_from_job"] for r in body["results"]} == {folder_job_id}
    _, page, _ = await live.call("GET", "/v1/jobs")
    assert [j["id"] for j in page["jobs"]] == [folder_job_id], "no new job"


# --- the OpenAPI document says what the server accepts --------------------------------------


def accepted_unless_no_video(ctx: Any, response: Any, case: Any) -> bool | None:
    """Valid requests are accepted; the one thing no schema can say is that a generated
    body is no video, which the upload operations refuse with 415 (or 400 when empty)."""
    if case.operation.body and response.status_code in (400, 415):
        body = response.json()
        code = body.get("code") or body["error"]["code"]
        if code in ("not_a_video", "empty_video", "empty_file"):
            return None
    return checks.positive_data_acceptance(ctx, response, case)


async def test_schemathesis_valid_requests_are_accepted(start_api: Start) -> None:
    live = await start_api(worker=False, api={"keys": KEYS, "request_timeout_s": 1.0})
    # Schemathesis calls the server synchronously: from a thread, so the loop serves it.
    schema = await asyncio.to_thread(schemathesis.openapi.from_url, live.url("/openapi.json"))
    validators = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
        accepted_unless_no_video,
    ]

    def run(operation: Any, mode: GenerationMode) -> None:
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(
            max_examples=6,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(headers={"X-API-Key": ADMIN_KEY}, checks=validators)

        check()

    def run_all() -> int:
        count = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            run(operation, GenerationMode.POSITIVE)
            count += 1
        return count

    documented = [m for path, item in schema.raw_schema["paths"].items() for m in item]
    # Schemathesis leaves out the operation that serves the document it was loaded from.
    assert await asyncio.to_thread(run_all) == len(documented) - documented.count("parameters") - 1
