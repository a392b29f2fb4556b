"""``drishtiksha bench faces``: how often each face finder finds the face in labelled clips, and
what it costs per clip, on the frames ``face-cues-v1`` measures.

Each clip is decoded once as the daemon decodes it (the first ``run_frames`` frames, downscaled
to ``decode.max_side``, then to the detector's ``analysis_max_side``) and every finder runs on
the same frames, one clip at a time on one thread, so the times compare. ``pad_to`` places each
clip, at its own size, in the middle of a larger black frame before that downscale: a 1080p or
4K video whose face is as many pixels as the clip's, the small faces the shared clips lack.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from detectors.errors import DetectorError
from detectors.face_cues import FaceCuesConfig
from detectors.faces import FACE_FINDERS, FaceFinder, FaceFinderName
from detectors.frames import DecodeLimits, decode_sampled
from detectors.training import Clip

SCHEMA = "drishtiksha.bench-faces/1"


def parse_size(text: str) -> tuple[int, int]:
    """``"1920x1080"`` as (width, height); ValueError otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected WIDTHxHEIGHT such as 1920x1080, not {text!r}")
    width, height = (int(p) for p in parts)
    if width < 16 or height < 16:
        raise ValueError(f"{text}: too small a frame")
    return width, height


def parse_finders(text: str) -> list[FaceFinderName]:
    """Comma-separated finder names, checked."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FACE_FINDERS]
    if unknown or not names:
        raise ValueError(
            f"unknown face finder {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(FACE_FINDERS)}"
        )
    return [n for f in FACE_FINDERS for n in names if n == f]


def _fit(rgb: np.ndarray, max_side: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def pad(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` in the middle of a black frame of ``size`` (width, height); a larger frame is
    first scaled down to fit."""
    width, height = size
    rows, cols = rgb.shape[:2]
    scale = min(1.0, width / cols, height / rows)
    if scale < 1.0:
        cols, rows = max(1, int(cols * scale)), max(1, int(rows * scale))
        rgb = cv2.resize(rgb, (cols, rows), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = (height - rows) // 2, (width - cols) // 2
    canvas[top : top + rows, left : left + cols] = rgb
    return canvas


def clip_frames(
    clip: Clip,
    limits: DecodeLimits,
    decode_max_side: int,
    settings: FaceCuesConfig,
    pad_to: tuple[int, int] | None,
) -> list[np.ndarray]:
    """The frames ``face-cues-v1`` looks for faces in: the run, as the daemon decodes it (with
    ``pad_to``: each frame padded first, at its own size)."""
    # Padded frames are made at the clip's own size; the daemon's downscale comes after.
    decode_side = max(pad_to) if pad_to is not None else decode_max_side
    frames = decode_sampled(clip.path, 0, limits, decode_side, settings.run_frames)
    run = frames.run
    if pad_to is not None:
        run = [_fit(pad(rgb, pad_to), decode_max_side) for rgb in run]
    return [_fit(rgb, settings.analysis_max_side) for rgb in run]


@dataclass
class FinderTally:
    """One finder's counts over the clips."""

    clips: int = 0
    clips_with_face: int = 0
    clips_judged: int = 0  # at least min_faces frames with a face: face-cues-v1 does not abstain
    frames: int = 0
    frames_with_face: int = 0
    frames_by_blazeface: int = 0
    fractions: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The figures the report and the table show."""
        seconds = sorted(self.seconds)
        return {
            "clips": self.clips,
            "clips_with_face": self.clips_with_face,
            "clips_with_face_share": _share(self.clips_with_face, self.clips),
            "clips_judged": self.clips_judged,
            "mean_face_fraction": round(statistics.fmean(self.fractions), 4)
            if self.fractions
            else None,
            "frames": self.frames,
            "frames_with_face": self.frames_with_face,
            "frames_by_blazeface": self.frames_by_blazeface,
            "seconds_per_clip_mean": round(statistics.fmean(seconds), 4) if seconds else None,
            "seconds_per_clip_median": round(statistics.median(seconds), 4) if seconds else None,
            "seconds_per_clip_p95": round(seconds[int(0.95 * (len(seconds) - 1))], 4)
            if seconds
            else None,
            "clips_without_face": self.missed,
        }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def bench_faces(
    clips: Sequence[Clip],
    limits: DecodeLimits,
    decode_max_side: int,
    settings: FaceCuesConfig,
    finders: Sequence[FaceFinderName],
    pad_to: tuple[int, int] | None = None,
    advance: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Each finder over each clip's frames: clips and frames with a face, and seconds per clip
    spent finding faces and their landmarks (decoding excluded; it is the same for all)."""
    load_before = os.getloadavg()
    built = {
        name: FaceFinder(settings.face_detect_max_side, settings.face_upsample, method=name)
        for name in finders
    }
    for finder in built.values():
        finder.load()
    tallies = {name: FinderTally() for name in finders}
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for clip in clips:
        try:
            frames = clip_frames(clip, limits, decode_max_side, settings, pad_to)
        except DetectorError as exc:
            failed.append({"file": clip.file, "error": exc.code, "message": exc.message})
            if advance is not None:
                advance()
            continue
        row: dict[str, Any] = {
            "file": clip.file,
            "dataset": clip.dataset,
            "frames": len(frames),
            "size": list(frames[0].shape[1::-1]) if frames else None,
            "finders": {},
        }
        for name, finder in built.items():
            track = finder.track()
            start = time.perf_counter()
            faces = [track.find(rgb) for rgb in frames]
            elapsed = time.perf_counter() - start
            found = [f for f in faces if f is not None]
            by_blazeface = sum(f.found_by == "blazeface" for f in found)
            tally = tallies[name]
            tally.clips += 1
            tally.frames += len(frames)
            tally.frames_with_face += len(found)
            tally.frames_by_blazeface += by_blazeface
            tally.fractions.append(len(found) / len(frames) if frames else 0.0)
            tally.seconds.append(elapsed)
            tally.clips_with_face += bool(found)
            tally.clips_judged += len(found) >= settings.min_faces
            if not found:
                tally.missed.append(clip.file)
            row["finders"][name] = {
                "frames_with_face": len(found),
                "by_blazeface": by_blazeface,
                "seconds": round(elapsed, 4),
            }
        rows.append(row)
        if advance is not None:
            advance()
    return {
        "schema": SCHEMA,
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "pad_to": None if pad_to is None else f"{pad_to[0]}x{pad_to[1]}",
        "settings": {
            "decode_max_side": decode_max_side,
            "run_frames": settings.run_frames,
            "min_faces": settings.min_faces,
            "analysis_max_side": settings.analysis_max_side,
            "face_detect_max_side": settings.face_detect_max_side,
            "face_upsample": settings.face_upsample,
        },
        "finders": {name: tallies[name].summary() for name in finders},
        "failed": failed,
        "clips": rows,
    }
