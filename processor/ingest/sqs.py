"""SQS ingest: S3 event notifications (direct or wrapped in SNS) become jobs.

Delivery is at-least-once, so a job's id is derived from the object (bucket, key, version or
ETag): a duplicate notification maps to the same id and ``JobQueue.enqueue`` refuses it. A
message is deleted only after its job row has committed; until then a crash or an error leaves
it on the queue to come back after its visibility timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from detectors.errors import DrishtikshaError
from processor.blobs import ObjectRef, S3Blobs, SourceMissing
from processor.config import SqsSourceConfig
from processor.files import VERDICT_SUFFIX, fsync_dir
from storage.queue import JobQueue

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1024 * 1024
_MAX_NAME_BYTES = 200  # under the usual 255-byte file name limit, with room for free_name
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "NoSuchBucket", "404"})


class Poison(DrishtikshaError):
    """A message that can never become a job; ``str(exc)`` is the reason."""

    code = "poison_message"


@dataclass(frozen=True)
class S3Object:
    """One created object named by a notification (key already URL-decoded)."""

    bucket: str
    key: str
    version_id: str | None
    etag: str | None

    @property
    def job_id(self) -> str:
        """Deterministic, so that duplicate deliveries of one object give one job."""
        identity = "\0".join((self.bucket, self.key, self.version_id or "", self.etag or ""))
        return uuid.uuid5(uuid.NAMESPACE_URL, "s3:" + identity).hex

    @property
    def ref(self) -> str:
        ref = f"s3://{self.bucket}/{self.key}"
        return ref + f"?versionId={self.version_id}" if self.version_id else ref


def parse_message(body: str) -> list[S3Object]:
    """The objects an SQS message body announces as created: [] for S3's test event and for
    other event types. Raises Poison for a body that is not an S3 notification."""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and doc.get("Type") == "Notification":
            doc = json.loads(doc["Message"])  # SNS wraps the S3 event as a JSON string
    except (ValueError, KeyError, TypeError) as exc:
        raise Poison(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise Poison("not an S3 event: not a JSON object")
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list):
        raise Poison("not an S3 event: no Records")
    objects = []
    for record in records:
        try:
            if not str(record["eventName"]).startswith("ObjectCreated:"):
                continue
            s3 = record["s3"]
            obj = s3["object"]
            objects.append(
                S3Object(
                    bucket=s3["bucket"]["name"],
                    key=unquote_plus(obj["key"]),
                    version_id=obj.get("versionId") or None,
                    etag=obj.get("eTag") or None,
                )
            )
        except (KeyError, TypeError) as exc:
            raise Poison(f"not an S3 event: malformed record ({exc!r})") from exc
    return objects


def safe_name(key: str) -> str:
    """A file name for an object key that cannot leave the job folder: the last path segment,
    without separators, NULs or leading dots, shortened (keeping the suffix) if too long."""
    name = key.replace("\\", "/").rsplit("/", 1)[-1].replace("\0", "_").lstrip(".")
    name = name or "object"
    encoded = name.encode()
    if len(encoded) > _MAX_NAME_BYTES:
        _, dot, suffix = name.rpartition(".")
        suffix = dot + suffix if dot and len(suffix.encode()) < 16 else ""
        keep = _MAX_NAME_BYTES - len(suffix.encode())
        name = encoded[:keep].decode(errors="ignore") + suffix
    return name


class SqsSource:
    """Long-polls one SQS queue and turns created S3 objects into jobs."""

    def __init__(
        self,
        config: SqsSourceConfig,
        queue: JobQueue,
        *,
        max_file_bytes: int,
        max_attempts: int,
        on_enqueued: Callable[[], None] = lambda: None,
        blobs: S3Blobs | None = None,
        host_name: str | None = None,
    ) -> None:
        self.config = config
        # Downloads lie on this host: only it may place (delete) them.
        self.host_name = host_name
        # With an object store, objects are referenced where they are, not downloaded here.
        self.blobs = blobs
        self.queue = queue
        self.max_file_bytes = max_file_bytes
        self.max_attempts = max_attempts
        self.on_enqueued = on_enqueued
        self._stack = contextlib.AsyncExitStack()
        self._sqs: Any = None
        self._s3: Any = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Create the SQS and S3 clients (credentials from the usual AWS chain)."""
        # Imported by the hosts that poll a queue, not by every start-up.
        from aiobotocore.session import AioSession  # type: ignore[import-untyped]

        session = AioSession(profile=self.config.profile)
        kwargs = {"region_name": self.config.region, "endpoint_url": self.config.endpoint_url}
        self._sqs = await self._stack.enter_async_context(session.create_client("sqs", **kwargs))
        self._s3 = await self._stack.enter_async_context(session.create_client("s3", **kwargs))
        self.config.work.mkdir(parents=True, exist_ok=True)

    async def start(self) -> None:
        """Open the clients and poll in the background until ``stop``."""
        await self.open()
        self._task = asyncio.create_task(self._run(), name=f"sqs:{self.config.name}")
        log.info("sqs source %s polling %s", self.config.name, self.config.queue_url)

    async def stop(self) -> None:
        """Stop polling (a message being handled is left to come back) and close the clients."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._stack.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Network or credential trouble: keep the daemon up and try again shortly.
                log.exception("sqs source %s: receive failed; retrying", self.config.name)
                await asyncio.sleep(5)

    async def poll_once(self) -> int:
        """One long poll; handles every message received. Returns how many were received."""
        reply = await self._sqs.receive_message(
            QueueUrl=self.config.queue_url,
            MaxNumberOfMessages=self.config.max_messages,
            WaitTimeSeconds=self.config.wait_time_s,
            VisibilityTimeout=self.config.visibility_timeout_s,
        )
        messages = reply.get("Messages", [])
        # Every message of the batch stays invisible until handled, not only the current one.
        extenders = [
            asyncio.create_task(self._keep_invisible(m["ReceiptHandle"])) for m in messages
        ]
        try:
            # One at a time: concurrent duplicates of one object would download into the same
            # job folder.
            for message, extender in zip(messages, extenders, strict=True):
                try:
                    await self._handle(message)
                finally:
                    extender.cancel()
        finally:
            for extender in extenders:
                extender.cancel()
            await asyncio.gather(*extenders, return_exceptions=True)
        return len(messages)

    async def _handle(self, message: dict[str, Any]) -> None:
        receipt = message["ReceiptHandle"]
        try:
            for obj in parse_message(message.get("Body", "")):
                if self._wanted(obj.key):
                    await self._ingest(obj)
        except Poison as exc:
            log.warning(
                "sqs source %s: poison message %s (%s): %s",
                self.config.name,
                message.get("MessageId"),
                "deleted" if self.config.on_poison == "delete" else "left for redrive",
                exc,
            )
            if self.config.on_poison == "delete":
                await self._delete(receipt)
            return
        except Exception:
            # Database busy, network error...: the message comes back after its timeout.
            log.exception(
                "sqs source %s: message %s failed; left on the queue",
                self.config.name,
                message.get("MessageId"),
            )
            return
        await self._delete(receipt)

    async def _keep_invisible(self, receipt: str) -> None:
        # A large object can take longer to download than the visibility timeout; without this
        # another consumer would receive the message and download it a second time.
        period = self.config.visibility_timeout_s / 3
        while True:
            await asyncio.sleep(period)
            try:
                await self._sqs.change_message_visibility(
                    QueueUrl=self.config.queue_url,
                    ReceiptHandle=receipt,
                    VisibilityTimeout=self.config.visibility_timeout_s,
                )
            except ClientError as exc:
                log.warning("sqs source %s: cannot extend visibility: %s", self.config.name, exc)

    async def _delete(self, receipt: str) -> None:
        await self._sqs.delete_message(QueueUrl=self.config.queue_url, ReceiptHandle=receipt)

    def _wanted(self, key: str) -> bool:
        if key.endswith(VERDICT_SUFFIX):
            return False  # a verdict written back beside its video (blobs.verdicts: beside)
        prefixes, suffixes = self.config.prefixes, self.config.suffixes
        return (not prefixes or key.startswith(tuple(prefixes))) and (
            not suffixes or key.lower().endswith(tuple(s.lower() for s in suffixes))
        )

    async def _ingest(self, obj: S3Object) -> None:
        job_id = obj.job_id
        if await asyncio.to_thread(self.queue.known_job_ids, [job_id]):
            log.info(
                "sqs source %s: %s already queued as job %s", self.config.name, obj.ref, job_id
            )
            return
        if self.blobs is not None:
            await self._reference(obj)
            return
        job_dir = self.config.work / job_id
        work_file = job_dir / safe_name(obj.key)
        size, digest = await self._download(obj, work_file)
        created = await asyncio.to_thread(
            self.queue.enqueue,
            job_id=job_id,
            sha256=digest,
            size_bytes=size,
            source_kind="s3",
            source_ref=obj.ref,
            detectors=list(self.config.detectors),
            work_path=str(work_file),
            priority=self.config.priority,
            max_attempts=self.max_attempts,
            origin=self.host_name,
        )
        if created:
            log.info("job %s queued: %s (%d bytes, sha256 %s)", job_id, obj.ref, size, digest[:12])
            self.on_enqueued()
            return
        # Another consumer queued the same object meanwhile; its job uses this very path (same
        # bytes), so the copy goes only once that job no longer needs it.
        job = await asyncio.to_thread(self.queue.get, job_id)
        if job is None or job.finalized_at is not None:
            await asyncio.to_thread(_remove, work_file)

    async def _reference(self, obj: S3Object) -> None:
        """Queue a job that names the object itself: its bytes are read once here for their
        sha256 (nothing is kept), and the worker reads them again with ``If-Match`` on the
        ETag hashed here, so bytes replaced in between are never judged under this hash."""
        assert self.blobs is not None
        ref = ObjectRef(obj.bucket, obj.key, obj.version_id)
        try:
            size, digest, etag = await asyncio.to_thread(
                self.blobs.hash_object, ref, self.max_file_bytes
            )
        except SourceMissing as exc:
            raise Poison(f"object gone: {obj.ref}") from exc
        except ValueError as exc:
            raise Poison(f"object too large: {obj.ref}: {exc}") from exc
        if obj.etag and obj.etag.strip('"') != etag.strip('"'):
            # Replaced since this notification was sent: the replacement's own notification
            # makes its job, and these bytes are not the ones this one announced.
            log.info("sqs source %s: %s was replaced since; skipped", self.config.name, obj.ref)
            return
        created = await asyncio.to_thread(
            self.queue.enqueue,
            job_id=obj.job_id,
            sha256=digest,
            size_bytes=size,
            source_kind="s3",
            source_ref=obj.ref,
            detectors=list(self.config.detectors),
            priority=self.config.priority,
            max_attempts=self.max_attempts,
            blob_url=ref.url,
            blob_etag=etag,
        )
        if created:
            log.info(
                "job %s queued: %s (%d bytes, sha256 %s)", obj.job_id, obj.ref, size, digest[:12]
            )
            self.on_enqueued()

    async def _download(self, obj: S3Object, dest: Path) -> tuple[int, str]:
        """Stream the object to ``dest`` under the byte cap; returns (size, sha256)."""
        args = {"Bucket": obj.bucket, "Key": obj.key}
        if obj.version_id:
            args["VersionId"] = obj.version_id
        try:
            reply = await self._s3.get_object(**args)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in _MISSING_CODES:
                raise Poison(f"object gone: {obj.ref} ({code})") from exc
            raise
        body = reply["Body"]
        async with body:
            if reply.get("ContentLength", 0) > self.max_file_bytes:
                raise Poison(
                    f"object too large: {obj.ref} is {reply['ContentLength']} bytes, "
                    f"limit {self.max_file_bytes}"
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            # A unique partial name: a crash mid-download never leaves a file at ``dest``.
            part = dest.with_name(f".{uuid.uuid4().hex}.part")
            digest = hashlib.sha256()
            size = 0
            try:
                with part.open("wb") as out:
                    async for chunk in body.iter_chunks(_CHUNK_BYTES):
                        size += len(chunk)
                        if size > self.max_file_bytes:
                            raise Poison(
                                f"object too large: {obj.ref} exceeds {self.max_file_bytes} bytes"
                            )
                        digest.update(chunk)
                        await asyncio.to_thread(_write, out, chunk)
                    await asyncio.to_thread(os.fsync, out.fileno())
                os.replace(part, dest)
            except BaseException:
                await asyncio.to_thread(_remove, part)
                raise
        await asyncio.to_thread(fsync_dir, dest.parent)
        return size, digest.hexdigest()


def _write(out: Any, chunk: bytes) -> None:
    out.write(chunk)


def _remove(path: Path) -> None:
    """Delete a downloaded file and its job folder once empty."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()
