"""Small synthetic media files for tests, written with PyAV, and where the real clips live."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import av
import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

# Real clips sit beside the repository (../shared/videos), never inside it: their licences vary.
SHARED_VIDEOS = Path(os.environ.get("TEST_VIDEOS_DIR", REPO_ROOT.parent / "shared" / "videos"))

_ENCODERS = {"h264": "libx264", "mpeg4": "mpeg4", "vp9": "libvpx-vp9"}
_STREAM_FORMATS = {".webm": "webm", ".mkv": "matroska", ".ts": "mpegts"}

# The astronaut's head with some shoulders; her face box in this crop is about x 49-136, y 43-130.
_FACE_ROWS, _FACE_COLS = slice(40, 220), slice(130, 320)


class _Unseekable(io.RawIOBase):
    """A sink that cannot seek back, as a live recording or an upload pipe."""

    def __init__(self, target: io.BufferedWriter) -> None:
        self._target = target

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return self._target.write(data)


def make_video(
    path: Path,
    seconds: float = 2.0,
    fps: int = 30,
    size: tuple[int, int] = (320, 240),
    codec: str = "h264",
    face: bool = True,
    faststart: bool = False,
    streamed: bool = False,
    rotation: int = 0,
) -> Path:
    """Write a synthetic video of ``size`` (width, height); returns ``path``.

    ``face`` pastes the real face of ``skimage.data.astronaut()``, drifting a few pixels per
    frame; every frame also carries a bar whose position encodes its index. ``faststart`` puts
    the MP4 index first; ``streamed`` writes without seeking back (WebM/Matroska/TS), so the
    header holds no duration; ``rotation`` sets a display rotation (degrees).
    """
    width, height = size
    n = max(1, round(seconds * fps))
    rng = np.random.default_rng(0)
    background = _background(width, height, rng)
    head = _scaled_head(height) if face else None
    options = {"movflags": "faststart"} if faststart else {}
    with path.open("wb") as f:
        target: io.RawIOBase | str = _Unseekable(f) if streamed else str(path)
        fmt = _STREAM_FORMATS[path.suffix] if streamed else None
        with av.open(target, mode="w", format=fmt, options=options) as out:
            stream = out.add_stream(_ENCODERS[codec], rate=fps)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            if rotation:
                stream.set_display_rotation(rotation)
            for i in range(n):
                image = _frame(background, head, i, n, fps)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    return path


def make_two_people(path: Path, seconds: float = 1.5, fps: int = 10) -> Path:
    """Write a 640x240 video of two people side by side: ``make_video``'s face on the left,
    drifting, and its mirror image on the right, still."""
    n = max(1, round(seconds * fps))
    background = _background(640, 240, np.random.default_rng(1))
    head = _scaled_head(240)
    hh, hw = head.shape[:2]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = 640, 240
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            image = background.copy()
            dx = round(8 * math.sin(2 * math.pi * i / fps))
            image[(240 - hh) // 2 : (240 - hh) // 2 + hh, 40 + dx : 40 + dx + hw] = head
            image[(240 - hh) // 2 : (240 - hh) // 2 + hh, 600 - hw : 600] = head[:, ::-1]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_truncated(src: Path, dst: Path, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst``, as an interrupted upload."""
    payload = src.read_bytes()
    dst.write_bytes(payload[: int(len(payload) * fraction)])
    return dst


def make_text_as_mp4(path: Path) -> Path:
    """A text file given a video's name."""
    path.write_text("This is a shopping list, not a video.\n- milk\n- bread\n" * 20)
    return path


def make_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An AAC track in an MP4/M4A container, with no video stream."""
    rate, chunk = 44100, 1024
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("aac", rate=rate)
        for i in range(math.ceil(seconds * rate / chunk)):
            tone = np.sin(2 * np.pi * 440 * (np.arange(chunk) + i * chunk) / rate)
            frame = av.AudioFrame.from_ndarray(
                (0.1 * tone).astype(np.float32)[None, :], format="fltp", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = i * chunk
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack(
        [60 + 80 * xs / width, 90 + 60 * ys / height, 120 + 0 * xs], axis=-1
    ) + rng.normal(0, 6, (height, width, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def _scaled_head(height: int) -> np.ndarray:
    # Loaded for faces only: the GPU bundle carries the tests that make faceless clips
    # without scikit-image.
    from skimage import data as skdata

    head = skdata.astronaut()[_FACE_ROWS, _FACE_COLS]
    scale = 0.75 * height / head.shape[0]
    new_size = (round(head.shape[1] * scale), round(head.shape[0] * scale))
    return np.asarray(cv2.resize(head, new_size, interpolation=cv2.INTER_AREA))


def _frame(background: np.ndarray, head: np.ndarray | None, i: int, n: int, fps: int) -> np.ndarray:
    image = background.copy()
    height, width = image.shape[:2]
    if head is not None:
        hh, hw = head.shape[:2]
        dx = round(0.03 * width * math.sin(2 * math.pi * i / fps))
        dy = round(0.02 * height * math.cos(2 * math.pi * i / fps))
        top, left = (height - hh) // 2 + dy, (width - hw) // 2 + dx
        image[top : top + hh, left : left + hw] = head
    # A bar at a height that encodes the frame index tells frames apart after compression.
    bar = round((height - 8) * i / max(1, n - 1))
    image[bar : bar + 8, : width // 8] = 255
    return image
