"""The object store for video bytes, against moto's S3 in server mode on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import boto3  # type: ignore[import-untyped]
import pytest
from sqlalchemy import Engine

from processor.blobs import ObjectRef, S3Blobs, SourceChanged, SourceMissing, Unreachable
from processor.config import BlobsConfig, Config
from processor.daemon import load_pipeline
from processor.lifecycle import Lifecycle
from processor.worker import Worker
from storage.db import upgrade
from storage.queue import JobQueue, JobState

# botocore and moto still call deprecated datetime APIs; only those warnings are let through.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PART = 5 * 1024**2


@pytest.fixture
def bucket(aws: str) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=aws).create_bucket(Bucket=name)
    return name


def _store(aws: str, bucket: str, **overrides: object) -> S3Blobs:
    config = BlobsConfig.model_validate(
        {"kind": "s3", "bucket": bucket, "endpoint_url": aws, "part_bytes": PART, **overrides}
    )
    return S3Blobs(config)


def _file(tmp_path: Path, size: int) -> tuple[Path, str]:
    data = (uuid.uuid4().bytes * (size // 16 + 1))[:size]
    path = tmp_path / f"{uuid.uuid4().hex}.mp4"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [1000, PART * 2 + 123], ids=["one-request", "multipart"])
def test_a_file_is_stored_under_its_hash_and_fetched_back(
    aws: str, bucket: str, tmp_path: Path, size: int
) -> None:
    store = _store(aws, bucket)
    path, digest = _file(tmp_path, size)
    url = store.put_file(path, digest, size)
    assert url == f"s3://{bucket}/drishtiksha/videos/{digest}"
    head = boto3.client("s3", endpoint_url=aws).head_object(
        Bucket=bucket, Key=f"drishtiksha/videos/{digest}"
    )
    assert head["Metadata"] == {"sha256": digest}
    dest = tmp_path / "scratch" / "job" / "video"
    store.fetch(url, None, digest, dest)
    assert dest.read_bytes() == path.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["video"]  # no partial file left


def test_bytes_already_stored_are_not_sent_again(aws: str, bucket: str, tmp_path: Path) -> None:
    store = _store(aws, bucket)
    path, digest = _file(tmp_path, 2000)
    store.put_file(path, digest, 2000)
    path.unlink()  # a second put that read the file would fail now
    assert store.put_file(path, digest, 2000).endswith(digest)


def test_a_replaced_object_is_never_judged_under_the_old_hash(
    aws: str, bucket: str, tmp_path: Path
) -> None:
    s3 = boto3.client("s3", endpoint_url=aws)
    s3.put_object(Bucket=bucket, Key="in/clip.mp4", Body=b"first bytes")
    store = _store(aws, bucket)
    ref = ObjectRef(bucket, "in/clip.mp4")
    size, digest, etag = store.hash_object(ref, 1 << 20)
    assert (size, digest) == (11, hashlib.sha256(b"first bytes").hexdigest())
    dest = tmp_path / "video"
    store.fetch(ref.url, etag, digest, dest)
    assert dest.read_bytes() == b"first bytes"

    s3.put_object(Bucket=bucket, Key="in/clip.mp4", Body=b"other bytes")
    with pytest.raises(SourceChanged):
        store.fetch(ref.url, etag, digest, tmp_path / "again")
    # Without an ETag to hold it to, the sha256 check still catches it.
    with pytest.raises(SourceChanged):
        store.fetch(ref.url, None, digest, tmp_path / "again")
    assert not (tmp_path / "again").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video"]


def test_an_object_over_the_limit_is_refused_while_hashing(aws: str, bucket: str) -> None:
    boto3.client("s3", endpoint_url=aws).put_object(Bucket=bucket, Key="big", Body=b"x" * 100)
    with pytest.raises(ValueError, match="limit 99"):
        _store(aws, bucket).hash_object(ObjectRef(bucket, "big"), 99)


def test_missing_objects_and_setup_problems_are_told_apart(
    aws: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(aws, bucket)
    with pytest.raises(SourceMissing):
        store.fetch(f"s3://{bucket}/nothing", None, "0" * 64, tmp_path / "v")
    with pytest.raises(Unreachable, match="NoSuchBucket"):
        store.fetch("s3://no-such-bucket/x", None, "0" * 64, tmp_path / "v")
    closed = _store("http://127.0.0.1:9", bucket)  # nothing listens on the discard port
    with pytest.raises(Unreachable, match="cannot reach"):
        closed.fetch(f"s3://{bucket}/x", None, "0" * 64, tmp_path / "v")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(Unreachable):
        _store(aws, bucket).fetch(f"s3://{bucket}/x", None, "0" * 64, tmp_path / "v")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("beside", [False, True])
def test_verdicts_are_written_back(aws: str, bucket: str, beside: bool) -> None:
    store = _store(aws, bucket)
    original = f"s3://{bucket}/in/clip.mp4" if beside else None
    url = store.put_verdict("ab" * 32, "job1", {"label": "FAKE"}, original)
    key = "in/clip.mp4.verdict.json" if beside else f"drishtiksha/verdicts/{'ab' * 32}/job1.json"
    assert url == f"s3://{bucket}/{key}"
    body = boto3.client("s3", endpoint_url=aws).get_object(Bucket=bucket, Key=key)["Body"]
    assert json.loads(body.read()) == {"label": "FAKE"}


def test_object_urls_round_trip() -> None:
    ref = ObjectRef("b", "a key/with?odd&chars", "v 1")
    assert ObjectRef.parse(ref.url) == ref
    with pytest.raises(ValueError, match="not an s3"):
        ObjectRef.parse("/var/work/x")
    with pytest.raises(ValueError, match="bucket"):
        BlobsConfig.model_validate({"kind": "s3"})


C2PA = "c2pa-provenance"  # a real detector that loads in an instant


@pytest.mark.parametrize("where", ["bucket", "other-host"])
async def test_a_worker_that_cannot_reach_the_bytes_gives_the_job_back_uncharged(
    engine: Engine, tmp_path: Path, where: str
) -> None:
    upgrade(engine)
    queue = JobQueue(engine)
    config = Config.model_validate(
        {
            "database": {"url": engine.url.render_as_string(hide_password=False)},
            "device": "cpu",
            "host_name": "host-b",
            "inboxes": [{"name": "x", "path": str(tmp_path / "inbox")}],
            "detectors": {C2PA: {}},
            "batching": {"max_videos": 2, "max_wait_s": 0.05, "prepare_workers": 1},
            "queue": {"poll_s": 0.1, "heartbeat_s": 0.1, "dead_after_s": 1},
        }
    ).resolved(tmp_path)
    blob = {"blob_url": "s3://bucket/drishtiksha/videos/x"} if where == "bucket" else {}
    queue.enqueue(
        job_id="far",
        sha256="ab" * 32,
        size_bytes=10,
        source_kind="folder",
        source_ref="/elsewhere/inbox/clip.mp4",
        detectors=[C2PA],
        work_path="/elsewhere/work/far/clip.mp4",
        origin="host-a",
        **blob,
    )
    pipeline = await asyncio.to_thread(load_pipeline, config)
    worker = Worker(
        queue,
        pipeline,
        Lifecycle.from_config(config, queue),  # blobs.kind local: no store on this host
        config.batching,
        config.queue,
        "host-b:1:test",
        config.fusion,
        device="cpu",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:

        def published() -> bool:
            me = [w for w in queue.workers(60) if w.id == "host-b:1:test"]
            return bool(me and me[0].capabilities and me[0].capabilities.get("problem"))

        await _apoll(published, 60, "the worker to publish its problem")
        assert worker.problem is not None
        assert ("blobs.kind local" if where == "bucket" else "on host host-a") in worker.problem
        job = queue.get("far")
        assert job is not None
        # Back in the queue for a worker that can read it, with no attempt used up.
        assert (job.state, job.attempts, job.error_code) == (JobState.QUEUED, 0, None)
    finally:
        stop.set()
        await task


async def _apoll(cond: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(cond):
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")
