"""Pictures of a verdict: the video annotated frame by frame, and a timeline of the frame scores.

Pure functions over a video file and a detector's result (no database): the CLI's
``analyze --visualize`` and the API's visualisation endpoints call them after the verdict, off
the inference path.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detectors.base import FrameScore
from detectors.errors import CorruptVideo, TooManyFrames
from detectors.faces import FaceFinder
from detectors.frames import DecodeLimits, decode_errors, frame_time, opened, to_rgb
from detectors.temporal import Segment

# dlib's HOG search costs more than decoding and encoding a frame together; a face moves a few
# pixels in 1/6 s, so a box found every FACE_EVERY-th frame and kept until the next search is
# as good to the eye at a fraction of the cost.
FACE_EVERY = 5
# Used when the container states no frame rate (raw streams).
_FALLBACK_FPS = Fraction(30)
# The timeline PNG: 8 x 3 inches at 100 dpi = 800 x 300 pixels.
TIMELINE_SIZE_IN = (8.0, 3.0)
TIMELINE_DPI = 100

_RED = (220, 40, 40)  # RGB: the frames are RGB until they are encoded
_GREEN = (40, 200, 80)
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_TRACK = (50, 50, 50)

ScoreInput = Sequence[FrameScore] | Sequence[Mapping[str, float]]


def frame_scores(scores: ScoreInput) -> list[FrameScore]:
    """Detector ``FrameScore``s or stored ``{"t", "p"}`` rows, as ``FrameScore``s in time order."""
    out = [
        s if isinstance(s, FrameScore) else FrameScore(float(s["t"]), float(s["p"])) for s in scores
    ]
    return sorted(out, key=lambda s: s.timestamp)


@functools.cache
def shared_face_finder() -> FaceFinder:
    """One finder for the process: its landmark model weighs 100 MB and it is thread-safe."""
    return FaceFinder()


def h264_available() -> bool:
    """Whether PyAV's FFmpeg can encode H.264 (PyAV's wheels bundle libx264)."""
    return "libx264" in av.codecs_available


def render_video(
    src: Path,
    dst: Path,
    scores: ScoreInput,
    *,
    label: str,
    fake_probability: float | None,
    threshold: float,
    detector: str,
    weights_id: str,
    face_finder: FaceFinder | None,
    limits: DecodeLimits,
    max_side: int,
) -> int:
    """Write ``src`` to ``dst`` as an annotated MP4 and return how many frames it holds.

    One sequential decode, each frame downscaled so its longest side is at most ``max_side``
    and marked with the face box (searched every ``FACE_EVERY`` frames, without a finder none),
    a bar showing the frame's fake probability (linearly interpolated between the sampled
    frames around its time, held at the ends) against the threshold, the verdict, the detector
    and its weights. H.264 (``libx264``), or MPEG-4 part 2 where no H.264 encoder is built in.
    Bounded as the detectors' decode is: a video over a limit of ``limits`` (its frame count
    included, ``TooManyFrames``) is refused with the ``detectors.errors`` type the worker
    would file it under. ``dst`` appears whole or not at all.
    """
    ordered = frame_scores(scores)
    times = np.asarray([s.timestamp for s in ordered], dtype=np.float64)
    probs = np.asarray([s.fake_probability for s in ordered], dtype=np.float64)
    verdict = label if fake_probability is None else f"{label}  P(fake) {fake_probability:.2f}"
    caption = f"{detector}  weights {weights_id[:12]}"
    partial = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.part")
    written = 0
    try:
        # The output is opened outside decode_errors: failing to write it is no fault of src.
        with (
            av.open(str(partial), mode="w", format="mp4", options={"movflags": "faststart"}) as out,
            opened(src, limits) as (container, stream, _, start_s),
            decode_errors(src),
        ):
            rate = stream.average_rate or stream.guessed_rate or _FALLBACK_FPS
            encoder = None
            box: tuple[int, int, int, int] | None = None
            for index, frame in enumerate(container.decode(stream)):
                if index >= limits.max_decoded_frames:
                    # The header understated the frame count (checked on opening).
                    raise TooManyFrames(
                        f"more than {limits.max_decoded_frames} frames would have to be decoded"
                    )
                image = _even(to_rgb(frame, max_side))
                if encoder is None:
                    encoder = _add_encoder(out, rate, image.shape[1], image.shape[0])
                if face_finder is not None and index % FACE_EVERY == 0:
                    face = face_finder.find(image)
                    box = face.box if face is not None else None
                t = frame_time(frame, index, start_s, float(rate))
                p = float(np.interp(t, times, probs)) if len(ordered) else None
                _annotate(image, box, p, threshold, verdict, caption)
                video_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                video_frame.pts = index
                video_frame.time_base = encoder.codec_context.time_base
                for packet in encoder.encode(video_frame):
                    out.mux(packet)
                written += 1
            if encoder is None:
                raise CorruptVideo(f"no frame of {src.name} could be decoded")
            for packet in encoder.encode():
                out.mux(packet)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    return written


def render_timeline(
    dst_png: Path, scores: ScoreInput, threshold: float, segments: Sequence[Segment]
) -> None:
    """Write a PNG (``TIMELINE_SIZE_IN`` at ``TIMELINE_DPI``) of the frame scores over time,
    with the threshold as a dashed line and ``segments`` (``detectors.temporal.analyse``)
    shaded."""
    ordered = frame_scores(scores)
    # A Figure with its own canvas, never pyplot: no global state, safe in any thread.
    fig = Figure(figsize=TIMELINE_SIZE_IN, dpi=TIMELINE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for seg in segments:
        ax.axvspan(seg["start"], seg["end"], color="tab:red", alpha=0.2, linewidth=0)
    if ordered:
        ax.plot(
            [s.timestamp for s in ordered],
            [s.fake_probability for s in ordered],
            marker="o",
            markersize=3,
            color="tab:blue",
            label="P(fake)",
        )
    else:
        ax.text(0.5, 0.5, "no frame scores", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label="threshold")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("P(fake)")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(dst_png, format="png")


def _add_encoder(out: Any, rate: Fraction, width: int, height: int) -> Any:
    codec = "libx264" if h264_available() else "mpeg4"
    encoder = out.add_stream(codec, rate=rate)
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p"
    encoder.codec_context.time_base = 1 / rate
    if codec == "libx264":
        encoder.options = {"preset": "veryfast", "crf": "23"}
    return encoder


def _even(image: np.ndarray) -> np.ndarray:
    """Crop an odd last row or column: 4:2:0 chroma needs even sizes."""
    height, width = image.shape[:2]
    return np.ascontiguousarray(image[: height // 2 * 2, : width // 2 * 2])


def _annotate(
    image: np.ndarray,
    box: tuple[int, int, int, int] | None,
    p: float | None,
    threshold: float,
    verdict: str,
    caption: str,
) -> None:
    """Draw in place: face box, score bar along the bottom, verdict and caption at the top."""
    height, width = image.shape[:2]
    colour = _GREEN if p is None or p < threshold else _RED
    thick = max(1, round(width / 320))
    if box is not None:
        left, top, right, bottom = box
        cv2.rectangle(image, (left, top), (right, bottom), colour, thick)
    bar_h = max(6, height // 20)
    bar_top = height - bar_h
    cv2.rectangle(image, (0, bar_top), (width - 1, height - 1), _TRACK, -1)
    if p is not None:
        filled = round(p * (width - 1))
        cv2.rectangle(image, (0, bar_top), (filled, height - 1), colour, -1)
    tick = round(threshold * (width - 1))
    cv2.line(image, (tick, bar_top), (tick, height - 1), _WHITE, thick)
    scale = max(0.35, width / 900)
    for row, text in enumerate((verdict, caption if p is None else f"{caption}  p {p:.2f}")):
        (text_w, text_h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        y = (row + 1) * (text_h + base + 4)
        cv2.rectangle(image, (0, y - text_h - base - 2), (text_w + 6, y + 2), _BLACK, -1)
        cv2.putText(
            image, text, (3, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, _WHITE, thick, cv2.LINE_AA
        )
