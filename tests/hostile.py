"""Hostile media for the robustness tests: files that are empty, lie about what they are, are cut
short, declare absurd sizes, expand enormously when decoded, or use unusual codecs and layouts.

Every maker writes one small file quickly (the slowest, a 4K VP9 key frame, takes a few seconds
on two CPUs) and returns its path.
"""

from __future__ import annotations

import os
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data as skdata

from tests.media import make_video

# Visual sample entry (ISO 14496-12): size, type, 6 reserved bytes, data reference index,
# 16 bytes pre-defined/reserved, then width and height (16 bits each), relative to the type.
_SAMPLE_ENTRY_SIZE_OFFSET = 4 + 6 + 2 + 16
# tkhd (version 0), relative to its type: version/flags, times, track id, reserved, duration,
# reserved, layer, group, volume, reserved, matrix; then width and height (16.16 fixed point).
_TKHD_SIZE_OFFSET = 4 + 4 + 4 + 4 + 4 + 4 + 4 + 8 + 2 + 2 + 2 + 2 + 36

# A VP9 frame header that only says "show the frame in reference slot 0 again": frame marker
# 0b10, profile 0, show_existing_frame 1, slot index 0b000. One byte, one whole decoded frame.
_VP9_SHOW_EXISTING = b"\x88"


def encode(
    path: Path,
    codec: str,
    size: tuple[int, int],
    frames: int,
    fps: int | Fraction,
    *,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    times: list[Fraction] | None = None,
) -> Path:
    """Encode ``frames`` synthetic frames of ``size`` (width, height): a grey picture whose top
    band brightens with the frame index. ``times`` (seconds, one per frame) gives each frame
    its own timestamp instead of the constant rate."""
    width, height = size
    # SVT-AV1 (libsvtav1) switches the calling thread to real-time scheduling when it may (as
    # root): the test process would then starve its own threads. Whatever the encoder does to
    # it, the thread leaves with the policy it came with.
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        return _encode(path, codec, width, height, frames, fps, pix_fmt, options, times)
    finally:
        os.sched_setscheduler(0, policy, param)


def _encode(
    path: Path,
    codec: str,
    width: int,
    height: int,
    frames: int,
    fps: int | Fraction,
    pix_fmt: str,
    options: dict[str, str] | None,
    times: list[Fraction] | None,
) -> Path:
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        image = np.full((height, width, 3), 96, np.uint8)
        for i in range(frames):
            image[: max(1, height // 4)] = (40 + 9 * i) % 256
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = int(times[i] * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_image(path: Path, ext: str) -> Path:
    """A still photo (``.png`` or ``.jpg`` encoding) written under ``path``'s name."""
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(buffer.tobytes())
    return path


def make_random(path: Path, size: int, seed: int, prefix: bytes = b"") -> Path:
    """``prefix`` followed by random bytes, ``size`` bytes in all."""
    rng = np.random.default_rng(seed)
    path.write_bytes(prefix + rng.bytes(size - len(prefix)))
    return path


def make_empty_mp4(path: Path) -> Path:
    """An MP4 that declares a video track but holds no frame at all."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height = 64, 48
        out.start_encoding()
    return path


def make_declared_size(path: Path, width: int, height: int) -> Path:
    """A two-frame 16x16 PNG video in a QuickTime container whose track and every frame
    declare ``width`` x ``height``: under a kilobyte on disk, gigabytes if believed."""
    small = path.with_name(path.name + ".small.mov")
    encode(small, "png", (16, 16), 2, 2, pix_fmt="rgb24")
    data = bytearray(small.read_bytes())
    small.unlink()
    entry = data.index(b"png ")
    struct.pack_into(">HH", data, entry + _SAMPLE_ENTRY_SIZE_OFFSET, width, height)
    tkhd = data.index(b"tkhd")
    struct.pack_into(">II", data, tkhd + _TKHD_SIZE_OFFSET, width << 16, height << 16)
    at = 0
    while (at := data.find(b"IHDR", at)) >= 0:
        struct.pack_into(">II", data, at + 4, width, height)
        struct.pack_into(">I", data, at + 17, zlib.crc32(bytes(data[at : at + 17])))
        at += 4
    path.write_bytes(data)
    return path


def make_vp9_bomb(path: Path, frames: int, size: tuple[int, int] = (3840, 2160)) -> Path:
    """One flat VP9 key frame of ``size`` followed by one-byte frames that show it again: a
    file of kilobytes that decodes to ``frames`` full frames (gigabytes of pixels)."""
    width, height = size
    with av.open(str(path), mode="w", format="webm") as out:
        stream = out.add_stream(
            "libvpx-vp9", rate=30, options={"deadline": "realtime", "cpu-used": "8"}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        image = np.full((height, width, 3), 90, np.uint8)
        first = av.VideoFrame.from_ndarray(image, format="rgb24")
        [key] = [*stream.encode(first), *stream.encode()]
        for i in range(frames):
            packet = av.Packet(bytes(key) if i == 0 else _VP9_SHOW_EXISTING)
            packet.stream, packet.time_base = stream, key.time_base
            packet.pts = packet.dts = i
            packet.duration = 1
            packet.is_keyframe = i == 0
            out.mux(packet)
    return path


def make_two_video_streams(path: Path) -> Path:
    """An MP4 with two video tracks of different sizes (a camera and a screen recording)."""
    with av.open(str(path), mode="w") as out:
        streams = []
        for width, height in ((160, 120), (96, 64)):
            stream = out.add_stream("libx264", rate=15)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            streams.append(stream)
        for i in range(20):
            for stream in streams:
                image = np.full((stream.height, stream.width, 3), 10 * i, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
        for stream in streams:
            for packet in stream.encode():
                out.mux(packet)
    return path


def make_variable_rate(path: Path) -> Path:
    """H.264 whose frames are 10 ms to 400 ms apart, as a phone drops to a low rate in the
    dark."""
    gaps = [Fraction(1, 100), Fraction(1, 30), Fraction(2, 5), Fraction(1, 8)]
    times = [Fraction(0)]
    for i in range(39):
        times.append(times[-1] + gaps[i % len(gaps)])
    return encode(path, "libx264", (160, 120), len(times), 30, times=times)


def make_faststart(path: Path) -> Path:
    """A small face video with its index first, so cutting it short cuts frames, not the
    index."""
    return make_video(path, seconds=1.0, fps=30, size=(160, 120), faststart=True)


def with_trailer(src: Path, dst: Path, payload: bytes) -> Path:
    """``src`` plus a trailing MP4 ``free`` box holding ``payload``: the same video, other
    bytes (so no stored result is reused for it)."""
    box = struct.pack(">I4s", 8 + len(payload), b"free") + payload
    dst.write_bytes(src.read_bytes() + box)
    return dst


def utf8_name(size: int, suffix: str = ".mp4") -> str:
    """A file name of exactly ``size`` bytes in UTF-8, mostly two-byte characters."""
    room = size - len(suffix.encode())
    name = "é" * (room // 2) + "x" * (room % 2) + suffix
    assert len(os.fsencode(name)) == size
    return name
