"""SQS ingest against moto in server mode: a real bucket -> queue notification, a real JobQueue."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from pydantic import ValidationError

from processor.blobs import S3Blobs, SourceChanged
from processor.config import BlobsConfig, Config, QueueConfig, SqsSourceConfig
from processor.daemon import Daemon
from processor.ingest import sqs as sqs_module
from processor.ingest.sqs import Poison, SqsSource, parse_message, safe_name
from processor.lifecycle import Lifecycle
from storage.db import make_engine
from storage.queue import JobQueue, JobView
from tests.net import AWS_REGION as REGION

# botocore and moto still call datetime.utcnow() and similar deprecated APIs; the suite turns
# every warning into an error, so only DeprecationWarnings are let through here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class World:
    """A bucket whose ObjectCreated events go to a queue (optionally with a dead-letter queue)."""

    def __init__(self, url: str, *, dlq: bool = False) -> None:
        self.s3 = boto3.client("s3", endpoint_url=url, region_name=REGION)
        self.sqs = boto3.client("sqs", endpoint_url=url, region_name=REGION)
        tag = uuid.uuid4().hex[:12]
        self.bucket = f"bucket-{tag}"
        self.s3.create_bucket(Bucket=self.bucket)
        attributes: dict[str, str] = {}
        self.dlq_url: str | None = None
        if dlq:
            self.dlq_url = self.sqs.create_queue(QueueName=f"dlq-{tag}")["QueueUrl"]
            policy = {"deadLetterTargetArn": self.arn(self.dlq_url), "maxReceiveCount": "1"}
            attributes["RedrivePolicy"] = json.dumps(policy)
        self.queue_url = self.sqs.create_queue(QueueName=f"q-{tag}", Attributes=attributes)[
            "QueueUrl"
        ]
        self.s3.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {"QueueArn": self.arn(self.queue_url), "Events": ["s3:ObjectCreated:*"]}
                ]
            },
        )

    def arn(self, queue_url: str) -> str:
        attrs = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        return str(attrs["Attributes"]["QueueArn"])

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def messages_left(self, queue_url: str | None = None) -> int:
        """Visible plus in-flight messages."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=queue_url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )

    def take_bodies(self) -> list[str]:
        """Receive and delete every message now on the queue; their bodies."""
        bodies: list[str] = []
        while True:
            reply = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
            messages = reply.get("Messages", [])
            if not messages:
                return bodies
            for m in messages:
                bodies.append(m["Body"])
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])


@pytest.fixture
def queue(database_url: str) -> Iterator[JobQueue]:
    engine = make_engine(database_url)
    try:
        yield JobQueue(engine)
    finally:
        engine.dispose()


def _config(world: World, url: str, tmp_path: Path, **overrides: Any) -> SqsSourceConfig:
    fields: dict[str, Any] = {
        "name": "test",
        "queue_url": world.queue_url,
        "endpoint_url": url,
        "region": REGION,
        "work": tmp_path / "work-s3",
        "wait_time_s": 0,
        "suffixes": [".mp4"],
        # Given here: a whole Config fills an empty list with every configured detector.
        "detectors": ["color-cues-lstm-v1"],
    }
    return SqsSourceConfig.model_validate({**fields, **overrides})


@pytest.fixture
async def make_source(aws: str, queue: JobQueue, tmp_path: Path) -> AsyncIterator[Any]:
    opened: list[SqsSource] = []

    async def make(
        world: World, max_file_bytes: int = 1 << 20, blobs: S3Blobs | None = None, **overrides: Any
    ) -> SqsSource:
        source = SqsSource(
            _config(world, aws, tmp_path, **overrides),
            queue,
            max_file_bytes=max_file_bytes,
            max_attempts=3,
            blobs=blobs,
        )
        await source.open()
        opened.append(source)
        return source

    yield make
    for source in opened:
        await source.stop()


async def _drain(source: SqsSource) -> None:
    while await source.poll_once():
        pass


def _s3_jobs(queue: JobQueue) -> list[JobView]:
    return queue.list(source_kind="s3", limit=1000)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_parse_sns_wrapped_and_other_events() -> None:
    record = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "b"}, "object": {"key": "a%2Fb+c.mp4", "eTag": "e"}},
    }
    inner = json.dumps({"Records": [record, {**record, "eventName": "ObjectRemoved:Delete"}]})
    wrapped = json.dumps({"Type": "Notification", "Message": inner})
    (obj,) = parse_message(wrapped)
    assert (obj.bucket, obj.key, obj.etag, obj.ref) == ("b", "a/b c.mp4", "e", "s3://b/a/b c.mp4")
    assert parse_message(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == []
    for bad in ("not json", "[1]", json.dumps({"hello": 1}), json.dumps({"Records": [{}]})):
        with pytest.raises(Poison):
            parse_message(bad)


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("../../etc/passwd", "passwd"),
        ("a/..", "object"),
        ("..", "object"),
        ("x/.hidden.mp4", "hidden.mp4"),
        ("dir\\..\\evil.mp4", "evil.mp4"),
        ("a" * 300 + ".mp4", "a" * 196 + ".mp4"),
    ],
)
def test_safe_name_stays_in_the_job_folder(key: str, name: str) -> None:
    assert safe_name(key) == name


async def test_created_objects_become_one_job_each(
    aws: str, queue: JobQueue, make_source: Any, tmp_path: Path
) -> None:
    world = World(aws)  # its s3:TestEvent is the first message on the queue
    data = {
        "clips/with space.mp4": b"space" * 1000,
        "a+b.mp4": b"plus",
        "वीडियो/क्लिप é.mp4": b"unicode" * 10,
        "deep/nested/dir/x.MP4": b"nested",
        "notes.txt": b"filtered out by suffix",
    }
    for key, content in data.items():
        world.put(key, content)
    source = await make_source(world)
    await _drain(source)

    jobs = {j.source_ref: j for j in _s3_jobs(queue)}
    expected = {k: v for k, v in data.items() if k != "notes.txt"}
    assert set(jobs) == {f"s3://{world.bucket}/{k}" for k in expected}
    for key, content in expected.items():
        job = jobs[f"s3://{world.bucket}/{key}"]
        assert job.video_sha256 == hashlib.sha256(content).hexdigest()
        assert job.detectors == ["color-cues-lstm-v1"]
        assert job.work_path is not None
        work_file = Path(job.work_path)
        assert work_file == tmp_path / "work-s3" / job.id / key.rsplit("/", 1)[-1]
        assert work_file.read_bytes() == content
    assert world.messages_left() == 0  # test event and notifications all deleted


async def test_duplicate_delivery_gives_one_job(
    aws: str, queue: JobQueue, make_source: Any, tmp_path: Path
) -> None:
    world = World(aws)
    world.put("dup.mp4", b"same object")
    bodies = [b for b in world.take_bodies() if "TestEvent" not in b]
    assert len(bodies) == 1
    for _ in range(2):
        world.sqs.send_message(QueueUrl=world.queue_url, MessageBody=bodies[0])
    source = await make_source(world)
    await _drain(source)
    world.sqs.send_message(QueueUrl=world.queue_url, MessageBody=bodies[0])  # after the job
    await _drain(source)

    (job,) = _s3_jobs(queue)
    assert _files(tmp_path / "work-s3") == [Path(str(job.work_path))]
    assert world.messages_left() == 0


async def test_sns_wrapped_notification(aws: str, queue: JobQueue, make_source: Any) -> None:
    world = World(aws)
    world.put("sns/clip.mp4", b"via sns")
    (body,) = [b for b in world.take_bodies() if "TestEvent" not in b]
    wrapped = {"Type": "Notification", "TopicArn": "arn:aws:sns:x", "Message": body}
    world.sqs.send_message(QueueUrl=world.queue_url, MessageBody=json.dumps(wrapped))
    await _drain(await make_source(world))
    (job,) = _s3_jobs(queue)
    assert job.source_ref == f"s3://{world.bucket}/sns/clip.mp4"


@pytest.mark.parametrize("on_poison", ["leave", "delete"])
async def test_object_gone_is_poison(
    aws: str, queue: JobQueue, make_source: Any, tmp_path: Path, on_poison: str
) -> None:
    world = World(aws)
    world.put("gone.mp4", b"soon deleted")
    world.s3.delete_object(Bucket=world.bucket, Key="gone.mp4")
    await _drain(await make_source(world, on_poison=on_poison))
    assert _s3_jobs(queue) == []
    assert _files(tmp_path / "work-s3") == []
    # "leave": still on the queue, in flight until its visibility timeout.
    assert world.messages_left() == (1 if on_poison == "leave" else 0)


async def test_oversized_object_is_poison_and_leaves_no_file(
    aws: str, queue: JobQueue, make_source: Any, tmp_path: Path
) -> None:
    world = World(aws)
    world.put("big.mp4", b"x" * 5000)
    await _drain(await make_source(world, max_file_bytes=4096, on_poison="delete"))
    assert _s3_jobs(queue) == []
    assert _files(tmp_path / "work-s3") == []
    assert list((tmp_path / "work-s3").iterdir()) == []
    assert world.messages_left() == 0


async def test_not_json_is_poison(aws: str, queue: JobQueue, make_source: Any) -> None:
    world = World(aws)
    world.sqs.send_message(QueueUrl=world.queue_url, MessageBody="this is not json")
    await _drain(await make_source(world, on_poison="delete"))
    assert _s3_jobs(queue) == []
    assert world.messages_left() == 0


async def test_poison_left_is_redriven_to_the_dead_letter_queue(
    aws: str, queue: JobQueue, make_source: Any
) -> None:
    world = World(aws, dlq=True)
    world.take_bodies()  # the test event; receiving it once would already send it to the DLQ
    world.sqs.send_message(QueueUrl=world.queue_url, MessageBody="this is not json")
    source = await make_source(world, visibility_timeout_s=1)
    assert await source.poll_once() == 1  # received once and left: maxReceiveCount reached
    assert world.dlq_url is not None
    for _ in range(50):  # becomes visible again after 1 s; the next receive redrives it
        if world.messages_left(world.dlq_url):
            break
        await source.poll_once()
        await asyncio.sleep(0.1)
    dead = world.sqs.receive_message(QueueUrl=world.dlq_url).get("Messages", [])
    assert [m["Body"] for m in dead] == ["this is not json"]
    assert world.messages_left() == 0
    assert _s3_jobs(queue) == []


async def test_visibility_is_extended_during_a_slow_download(
    aws: str, queue: JobQueue, make_source: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(aws)
    world.take_bodies()
    world.put("slow.mp4", b"slow" * 1000)
    writing, release = threading.Event(), threading.Event()
    real_write = sqs_module._write

    def stalled_write(out: Any, chunk: bytes) -> None:
        # Holds the download (in its worker thread) until the test has looked at the queue.
        writing.set()
        release.wait(30)
        real_write(out, chunk)

    monkeypatch.setattr(sqs_module, "_write", stalled_write)
    source = await make_source(world, visibility_timeout_s=1)
    task = asyncio.create_task(source.poll_once())
    try:
        assert await asyncio.to_thread(writing.wait, 30)
        await asyncio.sleep(2.5)  # over twice the 1 s visibility timeout
        # Without the extension the message would be visible again by now.
        peek = await asyncio.to_thread(
            world.sqs.receive_message, QueueUrl=world.queue_url, VisibilityTimeout=0
        )
        assert peek.get("Messages", []) == []
    finally:
        release.set()
    assert await task == 1
    (job,) = _s3_jobs(queue)
    assert job.video_sha256 == hashlib.sha256(b"slow" * 1000).hexdigest()
    assert world.messages_left() == 0


async def test_finalize_removes_the_download(
    aws: str, queue: JobQueue, make_source: Any, tmp_path: Path
) -> None:
    world = World(aws)
    world.put("done.mp4", b"finished")
    await _drain(await make_source(world))
    (job,) = _s3_jobs(queue)
    assert queue.cancel(job.id)
    cancelled = queue.get(job.id)
    assert cancelled is not None
    Lifecycle(queue, [], QueueConfig()).finalize(cancelled)
    assert list((tmp_path / "work-s3").iterdir()) == []  # the original stays in the bucket
    finalized = queue.get(job.id)
    assert finalized is not None
    assert finalized.finalized_at is not None


async def test_daemon_ingests_from_sqs(aws: str, database_url: str, tmp_path: Path) -> None:
    world = World(aws)
    world.put("daemon/clip.mp4", b"through the daemon")
    raw = {
        "database": {"url": database_url},
        "inboxes": [{"path": str(tmp_path / "inbox"), "work": str(tmp_path / "work")}],
        "api": {"enabled": False},
        "detectors": {"color-cues-lstm-v1": {"weights": "dummy"}},
        "sqs": [_config(world, aws, tmp_path, wait_time_s=1).model_dump(mode="json")],
    }
    config = Config.model_validate(raw).resolved(tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(Daemon(config, role="ingest").run(stop))
    engine = make_engine(database_url)
    try:
        for _ in range(100):
            if JobQueue(engine).list(source_kind="s3"):
                break
            await asyncio.sleep(0.1)
        (job,) = JobQueue(engine).list(source_kind="s3")
        assert job.source_ref == f"s3://{world.bucket}/daemon/clip.mp4"
    finally:
        stop.set()
        await task
        engine.dispose()


def test_sqs_detectors_need_a_section() -> None:
    source = {"name": "s", "queue_url": "https://sqs.example/q", "detectors": ["nope"]}
    with pytest.raises(ValidationError, match="sqs source 's' uses detectors"):
        Config.model_validate({"sqs": [source]})
    ok = Config.model_validate({"sqs": [{**source, "detectors": ["c2pa-provenance"]}]})
    assert ok.resolved(Path("/srv")).sqs[0].work == Path("/srv/var/work-s3")


async def test_with_an_object_store_objects_are_referenced_not_copied(
    aws: str, queue: JobQueue, make_source: Any, tmp_path: Path
) -> None:
    world = World(aws)
    blobs = S3Blobs(BlobsConfig(kind="s3", bucket=world.bucket, endpoint_url=aws))
    world.put("in/kept.mp4", b"first version")
    world.put("in/replaced.mp4", b"announced bytes")
    world.put("in/replaced.mp4", b"bytes put after")  # before the first notification is read
    world.put("in/big.mp4", b"x" * 200)
    world.put("in/kept.mp4.verdict.json", b"{}")  # written back beside a video: not a video
    source = await make_source(
        world, max_file_bytes=100, blobs=blobs, on_poison="delete", suffixes=[]
    )
    await _drain(source)

    jobs = {j.source_ref: j for j in _s3_jobs(queue)}
    # The replaced object has one job, for the bytes it holds now (its second notification).
    assert sorted(jobs) == [
        f"s3://{world.bucket}/in/kept.mp4",
        f"s3://{world.bucket}/in/replaced.mp4",
    ]
    replaced = jobs[f"s3://{world.bucket}/in/replaced.mp4"]
    assert replaced.video_sha256 == hashlib.sha256(b"bytes put after").hexdigest()
    kept = jobs[f"s3://{world.bucket}/in/kept.mp4"]
    assert kept.work_path is None
    assert kept.blob_url == f"s3://{world.bucket}/in/kept.mp4"
    assert kept.blob_etag
    assert not _files(tmp_path / "work-s3")  # nothing was downloaded to keep
    assert world.messages_left() == 0

    # Replaced between the job and its worker: the worker's read is refused, never judged
    # under the old hash; the new bytes come with a notification (and a job) of their own.
    world.put("in/kept.mp4", b"second version")
    with pytest.raises(SourceChanged):
        blobs.fetch(kept.blob_url, kept.blob_etag, kept.video_sha256, tmp_path / "v")
    await _drain(source)
    shas = sorted(j.video_sha256 for j in _s3_jobs(queue) if j.source_ref.endswith("kept.mp4"))
    assert shas == sorted(
        hashlib.sha256(b).hexdigest() for b in (b"first version", b"second version")
    )
