"""Read a video once, sequentially, and sample frames evenly in time.

Every failure becomes a typed error from ``detectors.errors``: a PyAV/FFmpeg exception never
escapes (``MemoryError`` aside), so the worker can file each one under a stable code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from av.container import InputContainer
from av.stream import Disposition
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from detectors.base import SampledFrames, VideoInfo
from detectors.errors import (
    CorruptVideo,
    DetectorError,
    EmptyFile,
    FileTooLarge,
    NotAVideo,
    NoVideoStream,
    TooLong,
    TooManyFrames,
    TooManyPixels,
    TransientError,
)

# Frame times and targets are compared with this slack so that a frame stamped 1/30 s is not
# passed over for a target computed as 1/30 s with a different rounding.
_TIME_EPS = 1e-6

# (offset, magic bytes, name): headers of media containers, to tell a damaged video (say, an MP4
# whose trailing moov atom was cut off) from a file that never was one.
_CONTAINER_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MP4/QuickTime"),
    (4, b"moov", "MP4/QuickTime"),
    (4, b"mdat", "MP4/QuickTime"),
    (4, b"free", "MP4/QuickTime"),
    (4, b"skip", "MP4/QuickTime"),
    (4, b"wide", "MP4/QuickTime"),
    (4, b"pnot", "MP4/QuickTime"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (0, b"RIFF", "RIFF (AVI/WAV)"),
    (0, b"FLV\x01", "FLV"),
    (0, b"OggS", "Ogg"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "ASF/WMV"),
    (0, b"\x00\x00\x01\xba", "MPEG program stream"),
    (0, b"\x00\x00\x01\xb3", "MPEG video"),
    (0, b"\x00\x00\x00\x01", "H.264/HEVC elementary stream"),
    (0, b"\x06\x0e\x2b\x34", "MXF"),
    (0, b".RMF", "RealMedia"),
    (0, b"DKIF", "IVF"),
    (0, b"YUV4MPEG2", "Y4M"),
    (0, b"GIF8", "GIF"),
)


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what one video may cost to read; exceeding one is a permanent error."""

    max_file_bytes: int
    max_duration_s: float
    max_pixels: int
    max_decoded_frames: int


def probe(path: str | Path, limits: DecodeLimits) -> VideoInfo:
    """Open the file, check it against ``limits`` and describe its video stream."""
    path = Path(path)
    with opened(path, limits) as (_, _, info, _):
        return info


def decode_sampled(
    path: str | Path, num_frames: int, limits: DecodeLimits, max_side: int, run: int = 0
) -> SampledFrames:
    """Decode once, front to back, keeping ``num_frames`` frames evenly spaced in time, and the
    first ``run`` frames as they come (``SampledFrames.run``: consecutive, for motion cues).
    With ``num_frames`` 0 decoding stops once the run is full (after one frame at least: the
    stream must decode).

    Target ``i`` lies at ``(i + 0.5) * duration / num_frames``; it takes the first frame shown
    at or after it. Fewer frames come back when the video holds fewer than ``num_frames``
    (one frame is never repeated). Frames are RGB uint8, display-rotated, downscaled so the
    longest side is at most ``max_side``; timestamps are seconds from the stream's start.
    """
    if num_frames < 0 or run < 0:
        raise ValueError("num_frames and run must not be negative")
    path = Path(path)
    with opened(path, limits) as (container, stream, info, start_s), decode_errors(path):
        sampled = _sample(container, stream, info, start_s, num_frames, limits, max_side, run)
    sampled.path = path
    return sampled


def decode_by_seeking(path: str | Path, num_frames: int) -> SampledFrames:
    """Sample the same frames as ``decode_sampled`` by seeking OpenCV to each one.

    This is the older service's way and exists only as the benchmark's baseline: seeking per
    sample re-decodes from the previous keyframe every time. Full resolution, no limits.
    """
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise NotAVideo(f"OpenCV cannot open {Path(path).name}")
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if fps <= 0 or count <= 0:
            raise CorruptVideo(f"OpenCV reports {count} frames at {fps} fps")
        duration = count / fps
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        info = VideoInfo(
            container=cap.getBackendName(),
            codec=fourcc.to_bytes(4, "little").decode("ascii", "replace").strip("\x00 "),
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=fps,
            duration_s=duration,
        )
        # The first frame at or after each target, as decode_sampled picks it; past the last
        # frame, the last frame (it stays on screen until the end).
        indices = sorted(
            {
                min(count - 1, math.ceil(t * fps - _TIME_EPS * fps))
                for t in _targets(duration, num_frames)
            }
        )
        frames: list[np.ndarray] = []
        timestamps: list[float] = []
        for index in indices:
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, bgr = cap.read()
            if not ok:
                continue
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            timestamps.append(index / fps)
        return SampledFrames(info, frames, timestamps, Path(path))
    finally:
        cap.release()


def _targets(duration: float, n: int) -> list[float]:
    return [(i + 0.5) * duration / n for i in range(n)]


def _sample(
    container: InputContainer,
    stream: VideoStream,
    info: VideoInfo,
    start_s: float,
    n: int,
    limits: DecodeLimits,
    max_side: int,
    run_length: int,
) -> SampledFrames:
    targets = _targets(info.duration_s, n)
    run: list[np.ndarray] = []
    run_times: list[float] = []
    interval = 1.0 / info.fps if info.fps > 0 else info.duration_s / max(n, 1)
    frames: list[np.ndarray] = []
    timestamps: list[float] = []
    next_target = 0
    decoded = 0
    last: tuple[VideoFrame, float] | None = None
    last_kept = False

    def keep(frame: VideoFrame, t: float) -> None:
        frames.append(to_rgb(frame, max_side))
        timestamps.append(t)

    try:
        for frame in container.decode(stream):
            decoded += 1
            if decoded > limits.max_decoded_frames:
                reached = _time_str(last[1] if last else 0.0)
                raise TooManyFrames(
                    f"more than {limits.max_decoded_frames} frames would have to be decoded "
                    f"(reached {reached} of {_time_str(info.duration_s)})"
                )
            if frame.width * frame.height > limits.max_pixels:
                raise TooManyPixels(_pixels_message(frame.width, frame.height, limits.max_pixels))
            t = frame_time(frame, decoded - 1, start_s, info.fps)
            last, last_kept = (frame, t), False
            if len(run) < run_length:
                run.append(to_rgb(frame, max_side))
                run_times.append(t)
            if next_target == n:
                # Every sample is taken; only the run still wants frames.
                if len(run) >= run_length:
                    break
                continue
            if t + _TIME_EPS < targets[next_target]:
                continue
            keep(frame, t)
            last_kept = True
            # A frame shown at t serves every target up to t; later targets need later frames.
            while next_target < n and targets[next_target] <= t + _TIME_EPS:
                next_target += 1
            if next_target == n and len(run) >= run_length:
                break
    except (av.FFmpegError, ValueError, RuntimeError, EOFError) as exc:
        if isinstance(exc, MemoryError | OSError):
            raise
        reached = _time_str(last[1] if last else 0.0)
        raise CorruptVideo(
            f"decoding failed at {reached} of {_time_str(info.duration_s)} "
            f"({len(frames)} of {n} sampled frames taken): {_reason(exc)}"
        ) from exc

    if last is None:
        raise CorruptVideo(f"no frame of {info.duration_s:.1f} s could be decoded")
    if n == 0:
        _check_rest(container, stream, info, start_s, decoded, last[1], limits)
    if next_target < n:
        # The last frame stays on screen for one frame interval: targets inside it are covered.
        last_frame, last_t = last
        covered = next_target
        while covered < n and targets[covered] <= last_t + interval + _TIME_EPS:
            covered += 1
        if covered > next_target and not last_kept:
            keep(last_frame, last_t)
        missing = n - covered
        if missing * 2 > n:
            raise CorruptVideo(
                f"the video stream ends at {_time_str(last_t)} of {_time_str(info.duration_s)}; "
                f"only {n - missing} of {n} sampled frames could be decoded"
            )
    return SampledFrames(info, frames, timestamps, run=run, run_timestamps=run_times)


def _check_rest(
    container: InputContainer,
    stream: VideoStream,
    info: VideoInfo,
    start_s: float,
    decoded: int,
    reached_s: float,
    limits: DecodeLimits,
) -> None:
    """After a decode that stopped early (only the run was wanted), read the remaining packets
    without decoding them (milliseconds, against seconds of decoding): a stream that ends well
    before its stated duration is a cut-off copy, and an endless one meets the frame limit, as
    when every frame is decoded. The tolerance is the sampled decode's: the stream must reach
    half its duration."""
    end, count = reached_s, decoded
    try:
        for packet in container.demux(stream):
            if not packet.size:
                continue
            count += 1
            if count > limits.max_decoded_frames:
                raise TooManyFrames(
                    f"more than {limits.max_decoded_frames} frames in the stream "
                    f"(reached {_time_str(end)} of {_time_str(info.duration_s)})"
                )
            if packet.pts is not None and packet.time_base is not None:
                end = max(end, float(packet.pts * packet.time_base) - start_s)
    except (av.FFmpegError, ValueError, EOFError) as exc:
        raise CorruptVideo(
            f"reading the stream failed at {_time_str(end)} of {_time_str(info.duration_s)}: "
            f"{_reason(exc)}"
        ) from exc
    if info.duration_s > 0 and end * 2 < info.duration_s:
        raise CorruptVideo(
            f"the video stream ends at {_time_str(end)} of {_time_str(info.duration_s)}"
        )


def frame_time(frame: VideoFrame, index: int, start_s: float, fps: float) -> float:
    """Seconds from the stream's start of the ``index``-th decoded frame."""
    # Raw elementary streams carry no timestamps; the frame rate is then all there is.
    if frame.pts is None or frame.time_base is None:
        return index / fps if fps > 0 else 0.0
    return max(0.0, float(frame.time) - start_s)


def to_rgb(frame: VideoFrame, max_side: int) -> np.ndarray:
    """The frame as RGB uint8, downscaled so its longest side fits ``max_side``."""
    width, height = _scaled_size(frame.width, frame.height, max_side)
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
    array: np.ndarray = rgb.to_ndarray()
    # Phone videos are stored sideways with a display rotation; faces must stand upright.
    turns = round(frame.rotation / 90) % 4
    if turns:
        array = np.ascontiguousarray(np.rot90(array, turns))
    return array


def _scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    # Even sizes: chroma-subsampled scalers and most consumers prefer them.
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


@contextmanager
def opened(
    path: Path, limits: DecodeLimits
) -> Iterator[tuple[InputContainer, VideoStream, VideoInfo, float]]:
    """Open and vet a video; yields (container, video stream, info, stream start in s)."""
    _check_size(path, limits)
    container = _open_container(path)
    try:
        with decode_errors(path):
            stream = _video_stream(container, path)
            duration, start_s = _header_duration(container, stream)
            if duration is None:
                duration, start_s = _demuxed_duration(container, stream, limits)
                # The demux pass consumed the file; reopening is cheaper and more portable
                # than seeking back (raw streams cannot seek).
                container.close()
                container = _open_container(path)
                stream = _video_stream(container, path)
            info = _check_limits(container, stream, duration, limits)
            stream.thread_type = "AUTO"
        yield container, stream, info, start_s
    finally:
        container.close()


def _check_size(path: Path, limits: DecodeLimits) -> None:
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise TransientError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    if size == 0:
        raise EmptyFile()
    if size > limits.max_file_bytes:
        raise FileTooLarge(
            f"file is {_bytes_str(size)}; the limit is {_bytes_str(limits.max_file_bytes)}"
        )


def _open_container(path: Path) -> InputContainer:
    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        if isinstance(exc, OSError):
            raise TransientError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
        reason = _reason(exc)
        kind = _sniff_container(path)
        if kind is None:
            raise NotAVideo(
                f"{path.name} is not a media container that can be opened ({reason})"
            ) from exc
        raise CorruptVideo(
            f"{path.name} has a {kind} header but cannot be opened ({reason}); "
            "it is probably truncated or damaged"
        ) from exc
    except OSError as exc:
        raise TransientError(f"cannot read {path.name}: {exc.strerror or exc}") from exc


def _sniff_container(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return None
    for offset, magic, name in _CONTAINER_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    # A lone 0x47 byte is too weak a sign: MPEG-TS repeats it every 188 (M2TS: 192) bytes.
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "MPEG-TS"
    if len(head) > 196 and head[4] == 0x47 and head[196] == 0x47:
        return "MPEG-TS (M2TS)"
    return None


def _video_stream(container: InputContainer, path: Path) -> VideoStream:
    name = container.format.name
    # FFmpeg opens still pictures too (image2, png_pipe, ...); a photo is not a video to judge.
    if name == "image2" or name.endswith("_pipe"):
        raise NotAVideo(f"{path.name} is a still image ({name}), not a video")
    for stream in container.streams.video:
        # Cover art in audio files is a one-picture "video" stream.
        if not stream.disposition & Disposition.attached_pic:
            return stream
    kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
    # An MP4 whose index (moov) sits at the end and was cut off shows FFmpeg a half-read
    # track with no type: that is a truncated video, not a file without one.
    if name.startswith("mov,") and _boxes_run_past_end(path):
        raise CorruptVideo(
            f"{path.name} is cut short: its MP4 boxes run past the end of the file "
            f"(streams read: {kinds})"
        )
    raise NoVideoStream(f"{path.name} holds no video stream (streams: {kinds})")


def _boxes_run_past_end(path: Path) -> bool:
    """Whether the top-level boxes of an MP4/QuickTime file declare more bytes than it has."""
    size = path.stat().st_size
    at = 0
    with path.open("rb") as f:
        while at + 8 <= size:
            f.seek(at)
            head = f.read(16)
            box = int.from_bytes(head[:4], "big")
            if box == 1 and len(head) == 16:
                box = int.from_bytes(head[8:], "big")  # 64-bit size
            if box < 8:
                return False  # 0: "to the end of the file"; smaller: not box-structured
            at += box
    return at > size


def _header_duration(container: InputContainer, stream: VideoStream) -> tuple[float | None, float]:
    """Duration and start of the video stream as the header states them (None: unknown)."""
    start_s = 0.0
    if stream.start_time is not None and stream.time_base is not None:
        start_s = float(stream.start_time * stream.time_base)
    elif container.start_time is not None:
        start_s = container.start_time / av.time_base
    # The stream's own duration first: the container's may include a longer audio track.
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base), start_s
    if container.duration is not None and container.duration > 0:
        container_start = (container.start_time or 0) / av.time_base
        return container.duration / av.time_base - (start_s - container_start), start_s
    return None, start_s


def _demuxed_duration(
    container: InputContainer, stream: VideoStream, limits: DecodeLimits
) -> tuple[float, float]:
    """Duration from the packets' timestamps, reading without decoding (streamed files)."""
    first: float | None = None
    end = 0.0
    count = 0
    tb = stream.time_base
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        count += 1
        if count > limits.max_decoded_frames:
            raise TooManyFrames(f"the video holds more than {limits.max_decoded_frames} frames")
        if packet.pts is None or tb is None:
            continue
        t = float(packet.pts * tb)
        first = t if first is None else min(first, t)
        end = max(end, float((packet.pts + (packet.duration or 0)) * tb))
        if end - first > limits.max_duration_s:
            raise TooLong(_duration_message(end - first, limits))
    if count == 0:
        raise CorruptVideo("the video stream holds no packets")
    if first is None:
        fps = _fps(stream)
        if fps <= 0:
            raise CorruptVideo("the video stream has neither timestamps nor a frame rate")
        return count / fps, 0.0
    return end - first, first


def _check_limits(
    container: InputContainer, stream: VideoStream, duration: float, limits: DecodeLimits
) -> VideoInfo:
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise CorruptVideo(f"the video stream declares no frame size ({width}x{height})")
    if width * height > limits.max_pixels:
        raise TooManyPixels(_pixels_message(width, height, limits.max_pixels))
    if duration > limits.max_duration_s:
        raise TooLong(_duration_message(duration, limits))
    if stream.frames > limits.max_decoded_frames:
        raise TooManyFrames(
            f"the video holds {stream.frames} frames; the limit is {limits.max_decoded_frames}"
        )
    return VideoInfo(
        container=container.format.name,
        codec=stream.codec_context.name,
        width=width,
        height=height,
        fps=_fps(stream),
        duration_s=duration,
    )


def _fps(stream: VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


@contextmanager
def decode_errors(path: Path) -> Iterator[None]:
    """Map what PyAV/FFmpeg raise while reading to typed errors."""
    try:
        yield
    except DetectorError:
        raise
    except av.FFmpegError as exc:
        if isinstance(exc, MemoryError):
            raise
        if isinstance(exc, OSError):
            raise TransientError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
        raise CorruptVideo(f"{path.name} could not be read: {_reason(exc)}") from exc
    except OSError as exc:
        raise TransientError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    # PyAV reports some malformed input as plain ValueError/RuntimeError (e.g. odd pixel data).
    except (ValueError, RuntimeError, EOFError) as exc:
        raise CorruptVideo(f"{path.name} could not be read: {_reason(exc)}") from exc


def _duration_message(duration: float, limits: DecodeLimits) -> str:
    return f"video is {duration:.0f} s long; the limit is {limits.max_duration_s:g} s"


def _pixels_message(width: int, height: int, max_pixels: int) -> str:
    return f"frames are {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}"


def _reason(exc: Exception) -> str:
    if isinstance(exc, av.FFmpegError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def _time_str(seconds: float) -> str:
    return f"{seconds:.1f} s"


def _bytes_str(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
