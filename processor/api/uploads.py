"""Receiving a video over HTTP: streamed to a server-named file in the upload area, hashed on the
way, capped in bytes, then probed to prove it is a video.

The client's file name is kept as data (the job's ``source_ref``) and never used in a path. A
request that fails in any way, the client's disconnect included, removes what it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from detectors.errors import (
    EmptyFile,
    FileTooLarge,
    MediaError,
    NotAVideo,
    NoVideoStream,
    TransientError,
)
from detectors.frames import DecodeLimits, probe
from processor.api.common import JOB_ID, PRINCIPAL, ApiError, ApiState, cpu, io
from processor.blobs import StoreUnavailable, Unreachable
from processor.config import ApiConfig
from processor.files import fsync_dir

log = logging.getLogger(__name__)
T = TypeVar("T")

FIELD = "video"
PART_SUFFIX = ".part"
VIDEO_SUFFIX = ".video"
_RAW_TYPES = ("application/octet-stream",)
_CHUNK = 256 * 1024
_WRITE_EVERY = 1 << 20  # bytes gathered before one write (each write is a thread hop)
# A multipart body carries boundaries and part headers around the video; this much of them is
# allowed on top of the byte cap before the declared length alone is refused.
_MULTIPART_SLACK = 64 * 1024
_MAX_NAME = 255
# Files the server left in the upload area this long ago belong to no live request.
_STALE_S = 24 * 3600.0


@dataclass(frozen=True)
class Upload:
    """A received video in the upload area."""

    job_id: str  # the file is named after the job it is for
    path: Path
    sha256: str
    size: int
    filename: str  # the client's name for it: data, never a path


def client_of(request: web.Request) -> str:
    """Who an upload counts against: the API key's name, or with no key the client address."""
    principal = request.get(PRINCIPAL)
    if principal is not None:
        return f"key {principal.name}"
    return f"address {request.remote}"


@contextmanager
def upload_slot(state: ApiState, client: str) -> Iterator[None]:
    """Hold one of the ``max_concurrent_uploads`` slots, at most ``max_uploads_per_client``
    of them for one client, or refuse with 503."""
    api = state.config.api
    if state.uploads_active >= api.max_concurrent_uploads:
        raise _busy(f"{state.uploads_active} uploads are already being received")
    if state.uploads_by_client[client] >= api.max_uploads_per_client:
        raise _busy(f"this client already sends {api.max_uploads_per_client} uploads")
    state.uploads_active += 1
    state.uploads_by_client[client] += 1
    state.metrics.uploads_in_progress.set(state.uploads_active)
    try:
        yield
    finally:
        state.uploads_active -= 1
        state.uploads_by_client[client] -= 1
        if not state.uploads_by_client[client]:
            del state.uploads_by_client[client]
        state.metrics.uploads_in_progress.set(state.uploads_active)


def _busy(why: str) -> ApiError:
    return ApiError(
        503, "too_many_uploads", f"{why}; try again shortly", headers={"Retry-After": "2"}
    )


class _Pace:
    """How long an upload may take: nothing at all for ``upload_idle_timeout_s``, on average
    less than ``upload_min_bytes_per_s`` over a window of ``upload_rate_window_s``, or longer
    than ``upload_deadline_s`` in all is refused with 408. Without the rate and the deadline a
    client trickling a byte now and then would hold an upload slot for ever."""

    def __init__(self, api: ApiConfig) -> None:
        self._api = api
        now = time.monotonic()
        self._deadline = now + api.upload_deadline_s
        self._window_start = now
        self._window_bytes = 0

    async def read(self, read: Callable[[], Awaitable[T]]) -> T:
        """The next chunk of the body (or the next part's head), within the limits."""
        api = self._api
        window_end = self._window_start + api.upload_rate_window_s
        owed = api.upload_min_bytes_per_s * api.upload_rate_window_s > self._window_bytes
        now = time.monotonic()
        # Waiting past the window's end only matters when the window is short of bytes: only
        # then is the read cut there (a cut read is never resumed: the upload is refused).
        wait = min(api.upload_idle_timeout_s, self._deadline - now)
        if owed:
            wait = min(wait, window_end - now)
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                chunk = await read()
        except TimeoutError:
            now = time.monotonic()
            if now >= self._deadline:
                raise self._deadline_passed() from None
            if owed and now >= window_end:
                raise self._too_slow() from None
            raise ApiError(
                408,
                "upload_timeout",
                f"the upload sent nothing for {api.upload_idle_timeout_s:g} s",
            ) from None
        now = time.monotonic()
        if now >= self._deadline:
            raise self._deadline_passed()
        if now >= window_end:
            if owed:
                raise self._too_slow()
            self._window_start, self._window_bytes = now, 0
        if isinstance(chunk, bytes | bytearray):
            self._window_bytes += len(chunk)
        return chunk

    def _too_slow(self) -> ApiError:
        api = self._api
        return ApiError(
            408,
            "upload_too_slow",
            f"the upload sent less than {api.upload_min_bytes_per_s:g} bytes/s over "
            f"{api.upload_rate_window_s:g} s",
        )

    def _deadline_passed(self) -> ApiError:
        return ApiError(
            408,
            "upload_deadline",
            f"the upload took longer than {self._api.upload_deadline_s:g} s",
        )


async def receive(request: web.Request, state: ApiState) -> Upload:
    """Stream the request's video (multipart field ``video``, or a raw video/* or
    application/octet-stream body) into the upload area."""
    api = state.config.api
    cap = state.max_upload_bytes
    declared = request.content_length
    ctype = request.content_type
    multipart = ctype == "multipart/form-data"
    raw = ctype.startswith("video/") or ctype in _RAW_TYPES
    if not multipart and not raw:
        if not request.body_exists:
            raise ApiError(400, "missing_video", _missing_message())
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send multipart/form-data with a '{FIELD}' field, or the video itself as video/* "
            f"or application/octet-stream, not {ctype}",
        )
    if declared is not None and declared > cap + (_MULTIPART_SLACK if multipart else 0):
        raise _too_large(cap)
    filename: str
    read: Callable[[], Awaitable[bytes]]
    pace = _Pace(api)
    if multipart:
        with _malformed_is_bad_request():
            reader = await request.multipart()
            part = await _video_part(reader, api, pace)
        filename = _clean_name(part.filename)

        async def read() -> bytes:
            return await part.read_chunk(_CHUNK)
    else:
        if not request.body_exists:
            raise ApiError(400, "missing_video", _missing_message())
        filename = _clean_name(request.query.get("filename"))
        read = request.content.readany

    job_id = uuid.uuid4().hex
    folder = api.upload_dir
    partial = folder / (job_id + PART_SUFFIX)
    await io(lambda: folder.mkdir(parents=True, exist_ok=True))
    f = await io(_create, partial)
    try:
        with _malformed_is_bad_request():
            digest, size = await _copy(read, f, cap, pace)
        await io(_close_durably, f)
        if size == 0:
            raise ApiError(400, "empty_video", "the uploaded video is empty (0 bytes)")
        final = folder / (job_id + VIDEO_SUFFIX)
        await io(partial.rename, final)
    except BaseException:
        # Client gone, over the cap, timed out, cancelled: nothing may stay behind.
        f.close()
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise
    await io(fsync_dir, folder)
    return Upload(job_id, final, digest, size, filename)


async def check_video(upload: Upload, limits: DecodeLimits) -> None:
    """Probe the stored file; a file that is no video (or breaks a limit) is removed and the
    request refused."""
    try:
        await cpu(probe, upload.path, limits)
    except MediaError as exc:
        await discard(upload)
        # The decoder names the file, whose name here is the server's: say "the upload".
        exc.message = exc.message.replace(upload.path.name, "the upload")
        raise _media_error(exc) from exc
    except TransientError as exc:
        await discard(upload)
        raise ApiError(503, exc.code, exc.message, headers={"Retry-After": "5"}) from exc


async def discard(upload: Upload) -> None:
    """Remove a received file that no job will use."""
    await io(lambda: upload.path.unlink(missing_ok=True))


async def enqueue(state: ApiState, upload: Upload, detectors: list[str], priority: int) -> None:
    """Put the upload in the object store (when one is configured), commit its job (the file
    is removed if either fails) and wake the worker."""
    try:
        try:
            blob_url = await io(state.lifecycle.store, upload.path, upload.sha256, upload.size)
        except (Unreachable, StoreUnavailable) as exc:
            raise ApiError(
                503,
                "store_unavailable",
                f"the object store did not take the video ({exc}); try again shortly",
                headers={"Retry-After": "10"},
            ) from exc
        await io(
            lambda: state.queue.enqueue(
                job_id=upload.job_id,
                sha256=upload.sha256,
                size_bytes=upload.size,
                source_kind="upload",
                source_ref=upload.filename,
                detectors=detectors,
                inbox=None,
                work_path=str(upload.path),
                priority=priority,
                max_attempts=state.config.queue.max_attempts,
                blob_url=blob_url,
                origin=state.config.host_name,
            )
        )
    except BaseException:
        await discard(upload)
        raise
    if state.worker is not None:
        state.worker.wake.set()


def sweep(folder: Path, known_job_ids: Callable[[list[str]], set[str]]) -> int:
    """Remove what crashes left in the upload area long ago: partial uploads, and received
    files whose job was never committed. Returns how many files went."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - _STALE_S
    stale = [
        p
        for p in folder.iterdir()
        if p.suffix in (PART_SUFFIX, VIDEO_SUFFIX)
        and JOB_ID.match(p.stem)
        and p.is_file()
        and p.stat().st_mtime < cutoff
    ]
    partials = [p for p in stale if p.suffix == PART_SUFFIX]
    received = [p for p in stale if p.suffix == VIDEO_SUFFIX]
    known = known_job_ids([p.stem for p in received]) if received else set()
    removed = 0
    for path in [*partials, *(p for p in received if p.stem not in known)]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    if removed:
        log.info("removed %d stale files from the upload area %s", removed, folder)
    return removed


async def _video_part(reader: MultipartReader, api: ApiConfig, pace: _Pace) -> BodyPartReader:
    """The ``video`` part; other parts (form fields) are read past, each within
    ``max_form_field_bytes`` and at most ``max_form_parts`` of them. Parts already received
    are parsed without the loop ever waiting, so only these caps keep a body of thousands of
    tiny parts from holding the event loop (and every other request) while it is parsed."""
    for _ in range(api.max_form_parts):
        part = await pace.read(reader.next)
        if part is None:
            raise ApiError(400, "missing_video", _missing_message())
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "bad_multipart", "nested multipart bodies are not accepted")
        if part.name == FIELD:
            return part
        seen = 0
        while chunk := await pace.read(functools.partial(part.read_chunk, _CHUNK)):
            seen += len(chunk)
            if seen > api.max_form_field_bytes:
                raise ApiError(
                    413,
                    "form_field_too_large",
                    f"the form field {part.name!r} is larger than the limit of "
                    f"{api.max_form_field_bytes} bytes",
                )
    raise ApiError(
        400,
        "too_many_parts",
        f"the form has more than {api.max_form_parts} parts before the '{FIELD}' field",
    )


async def _copy(
    read: Callable[[], Awaitable[bytes]], f: BinaryIO, cap: int, pace: _Pace
) -> tuple[str, int]:
    """Copy the body into ``f``, hashing it; (sha256, bytes)."""
    digest = hashlib.sha256()
    size = 0
    pending = bytearray()
    while True:
        chunk = await pace.read(read)
        if not chunk:
            break
        size += len(chunk)
        if size > cap:
            raise _too_large(cap)
        pending += chunk
        if len(pending) >= _WRITE_EVERY:
            await io(_write, f, digest, bytes(pending))
            pending.clear()
    if pending:
        await io(_write, f, digest, bytes(pending))
    return digest.hexdigest(), size


def _create(path: Path) -> BinaryIO:
    return path.open("xb")  # x: never reuse a name, even one this server chose


def _write(f: BinaryIO, digest: hashlib._Hash, data: bytes) -> None:
    f.write(data)
    digest.update(data)


def _close_durably(f: BinaryIO) -> None:
    # The job row will point at this file; it must be on disk before the row is committed.
    f.flush()
    os.fsync(f.fileno())
    f.close()


@contextmanager
def _malformed_is_bad_request() -> Iterator[None]:
    """A body aiohttp cannot parse (bad multipart headers or boundary, bad chunking) is the
    client's error."""
    try:
        yield
    except (HttpProcessingError, ValueError) as exc:
        raise ApiError(400, "bad_body", f"the request body cannot be read: {exc}") from exc


def _clean_name(name: str | None) -> str:
    """The client's file name as stored data: printable, bounded, never empty."""
    if not name:
        return "upload"
    printable = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    return printable.strip()[:_MAX_NAME] or "upload"


def _missing_message() -> str:
    return f"no video: send a multipart/form-data body with a '{FIELD}' file field"


def _too_large(cap: int) -> ApiError:
    return ApiError(413, "upload_too_large", f"the upload is larger than the limit of {cap} bytes")


def _media_error(exc: MediaError) -> ApiError:
    """The HTTP answer for a file that probing refused."""
    if isinstance(exc, EmptyFile):
        return ApiError(400, exc.code, exc.message)
    if isinstance(exc, NotAVideo | NoVideoStream):
        return ApiError(415, exc.code, exc.message)
    if isinstance(exc, FileTooLarge):
        return ApiError(413, exc.code, exc.message)
    # Corrupt, too long, too many pixels or frames: a video, but not one that can be judged.
    return ApiError(422, exc.code, exc.message)
