"""Receiving a video over HTTP: streamed to a server-named file in the upload area, hashed on the
way, capped in bytes, then probed to prove it is a video.

The client's file name is kept as data (the job's ``source_ref``) and never used in a path. A
request that fails in any way, the client's disconnect included, removes what it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from typing import BinaryIO

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
from processor.api_common import JOB_ID, ApiError, ApiState, io
from processor.files import fsync_dir

log = logging.getLogger(__name__)

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


@contextmanager
def upload_slot(state: ApiState) -> Iterator[None]:
    """Hold one of the ``max_concurrent_uploads`` slots, or refuse with 503."""
    if state.uploads_active >= state.config.api.max_concurrent_uploads:
        raise ApiError(
            503,
            "too_many_uploads",
            f"{state.uploads_active} uploads are already being received; try again shortly",
            headers={"Retry-After": "2"},
        )
    state.uploads_active += 1
    state.metrics.uploads_in_progress.set(state.uploads_active)
    try:
        yield
    finally:
        state.uploads_active -= 1
        state.metrics.uploads_in_progress.set(state.uploads_active)


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
    if multipart:
        with _malformed_is_bad_request():
            reader = await request.multipart()
            part = await _video_part(reader, cap, api.upload_idle_timeout_s)
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
            digest, size = await _copy(read, f, cap, api.upload_idle_timeout_s)
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
        await io(probe, upload.path, limits)
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
    """Commit the upload's job (the file is removed if that fails) and wake the worker."""
    try:
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


async def _video_part(reader: MultipartReader, cap: int, idle_s: float) -> BodyPartReader:
    """The ``video`` part; other parts (form fields) are read past, within the byte cap."""
    seen = 0
    while True:
        async with asyncio.timeout(idle_s):
            part = await reader.next()
        if part is None:
            raise ApiError(400, "missing_video", _missing_message())
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "bad_multipart", "nested multipart bodies are not accepted")
        if part.name == FIELD:
            return part
        while chunk := await part.read_chunk(_CHUNK):
            seen += len(chunk)
            if seen > cap:
                raise _too_large(cap)


async def _copy(
    read: Callable[[], Awaitable[bytes]], f: BinaryIO, cap: int, idle_s: float
) -> tuple[str, int]:
    """Copy the body into ``f``, hashing it; (sha256, bytes)."""
    digest = hashlib.sha256()
    size = 0
    pending = bytearray()
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await read()
        except TimeoutError:
            raise ApiError(
                408, "upload_timeout", f"the upload sent nothing for {idle_s:g} s"
            ) from None
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
