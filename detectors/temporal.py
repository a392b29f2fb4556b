"""What a detector's per-frame scores say over time: smoothing, consistency, a pattern, outliers,
a trend and the time ranges that look fake, plus those ranges as WebVTT cues for a player.

Pure functions over ``FrameScore`` lists; any detector that scores frames can use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypedDict

import numpy as np

from detectors.base import FrameScore

# Fewer frames than this say nothing about a pattern over time.
MIN_FRAMES = 3
# Share of frames at or above the threshold from which a pattern counts as sustained fake, and
# at or below which it counts as sustained real.
SUSTAINED_SHARE = 0.8
# A score that moves by more than this between the fitted first and last frame is a trend.
TREND_CHANGE = 0.1
# Scores lie in [0, 1], so their standard deviation is at most 0.5.
_MAX_STD = 0.5

Pattern = Literal[
    "insufficient_data",
    "sustained_fake_pattern",
    "sustained_real_pattern",
    "intermittent",
    "mixed",
]
Trend = Literal["increasing", "decreasing", "stable"]


class Anomaly(TypedDict):
    """A frame whose score stands out from the rolling mean at that frame."""

    index: int
    timestamp: float
    score: float
    rolling_mean: float


class Segment(TypedDict):
    """A time range (seconds) where the smoothed score stays at or above the threshold."""

    start: float
    end: float
    peak: float
    frames: int


class TemporalAnalysis(TypedDict):
    """The result of ``analyse``; JSON-serialisable as is."""

    frames: int
    window: int
    threshold: float
    rolling_mean: list[float]
    mean: float | None
    std: float | None
    consistency: float | None
    fake_fraction: float | None
    pattern: Pattern
    trend: Trend
    slope_per_s: float
    anomalies: list[Anomaly]
    segments: list[Segment]


def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean: entry ``i`` is the mean of ``values[i - window + 1 : i + 1]``, over fewer
    values at the start (so the output is as long as the input)."""
    if window < 1:
        raise ValueError("window must be at least 1")
    # Summed per window rather than from a running total, so that a window of one returns
    # the values exactly (no cancellation error at a threshold).
    return [float(np.mean(values[max(0, i - window + 1) : i + 1])) for i in range(len(values))]


def analyse(frame_scores: list[FrameScore], threshold: float, window: int = 10) -> TemporalAnalysis:
    """Describe frame scores (in time order) against ``threshold``.

    - ``rolling_mean``: ``rolling_mean(scores, window)``.
    - ``consistency``: ``1 - std / 0.5`` (population std of the scores; 1 = flat, 0 = scores
      split evenly between 0 and 1).
    - ``fake_fraction``: share of frames whose score is at or above ``threshold``.
    - ``pattern``: ``insufficient_data`` below ``MIN_FRAMES`` frames; else
      ``sustained_fake_pattern`` when ``fake_fraction >= 0.8``; ``sustained_real_pattern`` when
      at least 80 % of the frames score below ``threshold``; ``intermittent`` when the frames at
      or above it form two or more separate runs (the verdict flips on and off); otherwise
      ``mixed`` (one run covering 20-80 % of the frames: the video changes once, as a partial
      manipulation or a cut does).
    - ``anomalies``: frames whose score differs from the rolling mean at that frame by more than
      two standard deviations of all scores (none when the scores are constant).
    - ``trend``: least-squares slope of score against time; ``increasing``/``decreasing`` when
      the fitted line moves by more than 0.1 from the first to the last frame, else ``stable``.
    - ``segments``: maximal runs of consecutive frames whose *smoothed* score is at or above
      ``threshold``. Frame ``i`` covers ``[t_i, t_(i+1))``, the last frame one median frame step;
      so a run's covered intervals merge into one segment from its first frame's time to the
      end of its last frame's interval, with the run's highest smoothed score as ``peak``.
    """
    scores = np.asarray([s.fake_probability for s in frame_scores], dtype=np.float64)
    times = np.asarray([s.timestamp for s in frame_scores], dtype=np.float64)
    smoothed = rolling_mean(scores.tolist(), window)
    n = len(scores)
    if n == 0:
        return TemporalAnalysis(
            frames=0,
            window=window,
            threshold=threshold,
            rolling_mean=[],
            mean=None,
            std=None,
            consistency=None,
            fake_fraction=None,
            pattern="insufficient_data",
            trend="stable",
            slope_per_s=0.0,
            anomalies=[],
            segments=[],
        )
    std = float(scores.std())
    flagged = scores >= threshold
    trend, slope = _trend(times, scores)
    return TemporalAnalysis(
        frames=n,
        window=window,
        threshold=threshold,
        rolling_mean=smoothed,
        mean=float(scores.mean()),
        std=std,
        consistency=max(0.0, 1.0 - std / _MAX_STD),
        fake_fraction=float(flagged.mean()),
        pattern=_pattern(flagged),
        trend=trend,
        slope_per_s=slope,
        anomalies=_anomalies(times, scores, smoothed, std),
        segments=_segments(times, np.asarray(smoothed), threshold),
    )


def to_webvtt(segments: Sequence[Segment]) -> str:
    """WebVTT cues, one per segment, for a video player's subtitle track."""
    cues = ["WEBVTT", ""]
    for number, seg in enumerate(segments, start=1):
        # A cue must end after it starts; a one-frame clip gives a segment of no length.
        end = max(seg["end"], seg["start"] + 0.001)
        cues += [
            str(number),
            f"{_vtt_time(seg['start'])} --> {_vtt_time(end)}",
            f"Suspected fake (peak {seg['peak']:.2f})",
            "",
        ]
    return "\n".join(cues)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each maximal run of True."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for i, flag in enumerate(flags.tolist()):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(flags) - 1))
    return runs


def _pattern(flagged: np.ndarray) -> Pattern:
    if len(flagged) < MIN_FRAMES:
        return "insufficient_data"
    if float(flagged.mean()) >= SUSTAINED_SHARE:
        return "sustained_fake_pattern"
    # The real share is counted, not taken as 1 - fake share, which rounds below 0.2.
    if float((~flagged).mean()) >= SUSTAINED_SHARE:
        return "sustained_real_pattern"
    return "intermittent" if len(_runs(flagged)) >= 2 else "mixed"


def _trend(times: np.ndarray, scores: np.ndarray) -> tuple[Trend, float]:
    span = float(times[-1] - times[0]) if len(times) else 0.0
    if len(scores) < 2 or span <= 0.0:
        return "stable", 0.0
    centred = times - times.mean()
    slope = float((centred * (scores - scores.mean())).sum() / (centred**2).sum())
    change = slope * span
    if change > TREND_CHANGE:
        return "increasing", slope
    if change < -TREND_CHANGE:
        return "decreasing", slope
    return "stable", slope


def _anomalies(
    times: np.ndarray, scores: np.ndarray, smoothed: list[float], std: float
) -> list[Anomaly]:
    if std == 0.0:
        return []
    return [
        Anomaly(index=i, timestamp=float(times[i]), score=float(scores[i]), rolling_mean=mean)
        for i, mean in enumerate(smoothed)
        if abs(scores[i] - mean) > 2.0 * std
    ]


def _segments(times: np.ndarray, smoothed: np.ndarray, threshold: float) -> list[Segment]:
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    segments: list[Segment] = []
    for first, last in _runs(smoothed >= threshold):
        end = float(times[last + 1]) if last + 1 < len(times) else float(times[last]) + step
        segments.append(
            Segment(
                start=float(times[first]),
                end=end,
                peak=float(smoothed[first : last + 1].max()),
                frames=last - first + 1,
            )
        )
    return segments


def _vtt_time(seconds: float) -> str:
    millis = round(max(0.0, seconds) * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"
