"""Benchmarks run from the CLI (``drishtiksha bench ...``); results go to docs/benchmarks.md."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from detectors.errors import DetectorError
from detectors.frames import DecodeLimits, decode_by_seeking, decode_sampled

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}


def video_files(folder: Path) -> list[Path]:
    """Every video file under ``folder``, sorted for repeatable runs."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)


@dataclass
class DecodeRow:
    video: Path
    sequential_s: float
    seeking_s: float
    frames: int


def machine() -> str:
    """A one-line description of the machine a benchmark ran on."""
    import os

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_decode(
    videos: list[Path], num_frames: int, limits: DecodeLimits, max_side: int
) -> Iterator[DecodeRow | tuple[Path, DetectorError]]:
    """Per video: our one sequential decode against the older service's seek per sample, run
    back to back on the same file so the page cache treats both alike."""
    for video in videos:
        try:
            decode_sampled(video, num_frames, limits, max_side)  # warm the page cache
            seq = _timed(partial(decode_sampled, video, num_frames, limits, max_side))
            seek = _timed(partial(decode_by_seeking, video, num_frames))
        except DetectorError as exc:
            yield video, exc
            continue
        yield DecodeRow(video, seq, seek, num_frames)


def summarise(rows: list[DecodeRow]) -> dict[str, float]:
    """Totals and the per-video median ratio (seeking time / sequential time)."""
    seq = sum(r.sequential_s for r in rows)
    seek = sum(r.seeking_s for r in rows)
    return {
        "videos": len(rows),
        "sequential_total_s": seq,
        "seeking_total_s": seek,
        "ratio_total": seek / seq if seq else float("nan"),
        "ratio_median": statistics.median(r.seeking_s / r.sequential_s for r in rows)
        if rows
        else float("nan"),
    }
