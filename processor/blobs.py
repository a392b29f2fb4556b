"""Video bytes in object storage, so that a worker on any host can judge any job.

With ``blobs.kind: s3`` the host that accepts a video (inbox or upload) puts its bytes under a
content-addressed key, ``<prefix>/videos/<sha256>``, before the job row is committed; a video
already stored is not sent again. An S3-notified object is not copied: its job names the
original object and its ETag. A worker fetches a job's bytes into its scratch folder, reading
an original object with ``If-Match`` so a replaced object is never judged under the old hash,
and checks the sha256 of what it read. Verdicts are written back as JSON beside the video.

The client is botocore's synchronous one: every caller already runs in a worker thread, and
the client is safe to share between threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from detectors.errors import DetectorError, DrishtikshaError
from processor.config import BlobsConfig

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1024 * 1024
# Error codes that say this host cannot use the store at all (its credentials, its bucket name,
# its network), as opposed to something wrong with one job's object.
_SETUP_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidToken",
        "ExpiredToken",
        "403",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404"})
_CHANGED_CODES = frozenset({"PreconditionFailed", "412"})


class Unreachable(DrishtikshaError):
    """This host cannot reach a job's bytes because of its own setup (no credentials, no
    access, no shared folder, no route to the store). Not the video's fault: the job goes back
    to the queue without using up an attempt."""

    code = "unreachable"
    retryable = True


class SourceChanged(DetectorError):
    """The object was replaced after its job was queued; its new bytes get a job of their own."""

    code = "source_changed"


class SourceMissing(DetectorError):
    """The job's bytes are no longer in the object store."""

    code = "source_missing"


class StoreUnavailable(DetectorError):
    """The object store failed while reading the job's bytes; trying again later may help."""

    code = "store_unavailable"
    retryable = True


@dataclass(frozen=True)
class ObjectRef:
    """One object: ``s3://bucket/key`` (key percent-encoded) with an optional ``?versionId=``."""

    bucket: str
    key: str
    version_id: str | None = None

    @classmethod
    def parse(cls, url: str) -> ObjectRef:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or len(parts.path) < 2:
            raise ValueError(f"not an s3://bucket/key URL: {url!r}")
        version = parse_qs(parts.query).get("versionId", [None])[0]
        return cls(parts.netloc, unquote(parts.path[1:]), version)

    @property
    def url(self) -> str:
        # The key is quoted so that one holding "?" or "%" reads back as itself.
        url = f"s3://{self.bucket}/{quote(self.key, safe='/')}"
        return url + f"?versionId={quote(self.version_id, safe='')}" if self.version_id else url


class S3Blobs:
    """Video bytes and verdict documents in an S3-compatible bucket."""

    def __init__(self, config: BlobsConfig) -> None:
        if config.bucket is None:
            raise ValueError("blobs.kind s3 needs blobs.bucket")
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix.strip("/")
        # The client's half a second of imports is paid by hosts that use a store, not by
        # every start-up.
        import botocore.session  # type: ignore[import-untyped]
        from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]

        session = botocore.session.Session(profile=config.profile)
        self._s3 = session.create_client(
            "s3",
            region_name=config.region,
            endpoint_url=config.endpoint_url,
            config=BotoConfig(
                retries={"mode": "standard", "max_attempts": 4},
                connect_timeout=10,
                read_timeout=60,
            ),
        )

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def video_ref(self, sha256: str) -> ObjectRef:
        """Where the bytes with this sha256 are kept."""
        return ObjectRef(self.bucket, self._key("videos", sha256))

    def put_file(self, path: Path, sha256: str, size: int) -> str:
        """Store the file under its content address, unless those bytes are there already;
        returns the object's URL. The store checks each request's SHA-256 checksum, and the
        object carries the whole file's sha256 for whoever reads it."""
        ref = self.video_ref(sha256)
        with _errors(ref):
            try:
                head = self._s3.head_object(Bucket=ref.bucket, Key=ref.key)
            except ClientError as exc:
                # Without s3:ListBucket a missing key answers 403, not 404: then upload, and
                # let the upload itself say whether this host may write.
                if _code(exc) not in _MISSING_CODES | {"403", "AccessDenied"}:
                    raise
            else:
                if head.get("ContentLength") == size:
                    return ref.url
            if size <= self.config.part_bytes:
                with path.open("rb") as body:
                    self._s3.put_object(
                        Bucket=ref.bucket,
                        Key=ref.key,
                        Body=body,
                        Metadata={"sha256": sha256},
                        ChecksumAlgorithm="SHA256",
                    )
            else:
                self._put_parts(ref, path, sha256)
        return ref.url

    def _put_parts(self, ref: ObjectRef, path: Path, sha256: str) -> None:
        upload = self._s3.create_multipart_upload(
            Bucket=ref.bucket, Key=ref.key, Metadata={"sha256": sha256}, ChecksumAlgorithm="SHA256"
        )["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            with path.open("rb") as src:
                for number, chunk in enumerate(iter(lambda: src.read(self.config.part_bytes), b"")):
                    reply = self._s3.upload_part(
                        Bucket=ref.bucket,
                        Key=ref.key,
                        UploadId=upload,
                        PartNumber=number + 1,
                        Body=chunk,
                        ChecksumAlgorithm="SHA256",
                    )
                    parts.append(
                        {
                            "PartNumber": number + 1,
                            "ETag": reply["ETag"],
                            "ChecksumSHA256": reply["ChecksumSHA256"],
                        }
                    )
            self._s3.complete_multipart_upload(
                Bucket=ref.bucket,
                Key=ref.key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # A stopped upload would otherwise keep its parts (and their cost) in the bucket.
            with contextlib.suppress(BotoCoreError, ClientError):
                self._s3.abort_multipart_upload(Bucket=ref.bucket, Key=ref.key, UploadId=upload)
            raise

    def hash_object(self, ref: ObjectRef, max_bytes: int) -> tuple[int, str, str]:
        """Read an object once without keeping it: (size, sha256, ETag). Raises ``ValueError``
        when it is larger than ``max_bytes``."""
        with _errors(ref):
            reply = self._s3.get_object(**_get_args(ref))
            body = reply["Body"]
            with contextlib.closing(body):
                if reply.get("ContentLength", 0) > max_bytes:
                    raise ValueError(f"{reply['ContentLength']} bytes, limit {max_bytes}")
                digest = hashlib.sha256()
                size = 0
                for chunk in body.iter_chunks(_CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ValueError(f"more than {max_bytes} bytes")
                    digest.update(chunk)
        return size, digest.hexdigest(), str(reply["ETag"])

    def fetch(self, url: str, etag: str | None, sha256: str, dest: Path) -> None:
        """Download the object at ``url`` to ``dest`` and check it holds ``sha256``; with
        ``etag``, only if the object is still the one that was hashed."""
        ref = ObjectRef.parse(url)
        args = _get_args(ref)
        if etag:
            args["IfMatch"] = etag
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{uuid.uuid4().hex}.part")
        try:
            with _errors(ref):
                reply = self._s3.get_object(**args)
                digest = hashlib.sha256()
                with contextlib.closing(reply["Body"]) as body, part.open("wb") as out:
                    for chunk in body.iter_chunks(_CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
            if digest.hexdigest() != sha256:
                raise SourceChanged(
                    f"{ref.url} now holds sha256 {digest.hexdigest()[:12]}, not the "
                    f"{sha256[:12]} that was queued"
                )
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)

    def put_verdict(self, sha256: str, job_id: str, doc: dict[str, Any], beside: str | None) -> str:
        """Store a finished job's document: at ``<beside>.verdict.json`` when ``beside`` (the
        URL of the original object) is given, else under the prefix; returns its URL."""
        if beside is not None:
            original = ObjectRef.parse(beside)
            ref = ObjectRef(original.bucket, original.key + ".verdict.json")
        else:
            ref = ObjectRef(self.bucket, self._key("verdicts", sha256, f"{job_id}.json"))
        # As the sidecar is written (processor.files.write_json_atomic): times as text.
        body = (json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n").encode()
        with _errors(ref):
            self._s3.put_object(
                Bucket=ref.bucket,
                Key=ref.key,
                Body=body,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
            )
        return ref.url

    def close(self) -> None:
        self._s3.close()


def open_blobs(config: BlobsConfig) -> S3Blobs | None:
    """The configured store, or None for ``kind: local``."""
    return S3Blobs(config) if config.kind == "s3" else None


def scratch_dir(config: BlobsConfig, job_id: str) -> Path:
    """The folder this process fetches one job's bytes into: ``<job id>-<pid>``, so that two
    workers of one host never share one (a job lost by one and taken over by the other)."""
    return config.scratch / f"{job_id}-{os.getpid()}"


def drop_scratch(config: BlobsConfig, job_id: str) -> None:
    """Remove a job's fetched bytes once the job no longer needs them."""
    shutil.rmtree(scratch_dir(config, job_id), ignore_errors=True)


def _get_args(ref: ObjectRef) -> dict[str, Any]:
    args: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
    if ref.version_id:
        args["VersionId"] = ref.version_id
    return args


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _errors(ref: ObjectRef) -> Iterator[None]:
    """Turn botocore's errors into ours: setup problems, a replaced or missing object, or a
    failure that may pass."""
    try:
        yield
    except ClientError as exc:
        code = _code(exc)
        if code in _CHANGED_CODES:
            raise SourceChanged(f"{ref.url} was replaced after its job was queued") from exc
        if code in _MISSING_CODES:
            raise SourceMissing(f"{ref.url} is not in the store ({code})") from exc
        if code in _SETUP_CODES:
            raise Unreachable(f"the object store refused {ref.url}: {code}") from exc
        raise StoreUnavailable(f"{ref.url}: {code or exc}") from exc
    except (NoCredentialsError, EndpointConnectionError) as exc:
        raise Unreachable(f"cannot reach the object store for {ref.url}: {exc}") from exc
    except BotoCoreError as exc:
        raise StoreUnavailable(f"{ref.url}: {type(exc).__name__}: {exc}") from exc
