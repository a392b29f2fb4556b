"""Temporal analysis of frame scores: smoothing, patterns, anomalies, trend, segments, WebVTT."""

from __future__ import annotations

import pytest

from detectors.base import FrameScore
from detectors.temporal import Segment, analyse, rolling_mean, to_webvtt


def _scores(values: list[float], step: float = 0.5) -> list[FrameScore]:
    return [FrameScore(round(i * step, 6), v) for i, v in enumerate(values)]


# --- rolling mean ------------------------------------------------------------------------------


def test_rolling_mean_is_trailing_and_as_long_as_the_input() -> None:
    assert rolling_mean([1.0, 2.0, 3.0, 4.0, 5.0], 3) == pytest.approx([1.0, 1.5, 2.0, 3.0, 4.0])
    assert rolling_mean([0.2, 0.4], 10) == pytest.approx([0.2, 0.3])
    assert rolling_mean([0.7, 0.1], 1) == pytest.approx([0.7, 0.1])
    assert rolling_mean([], 5) == []


def test_rolling_mean_needs_a_window() -> None:
    with pytest.raises(ValueError, match="window"):
        rolling_mean([0.5], 0)


# --- patterns ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ([0.9] * 20, "sustained_fake_pattern"),
        ([0.9] * 16 + [0.1] * 4, "sustained_fake_pattern"),
        ([0.1] * 20, "sustained_real_pattern"),
        ([0.1] * 16 + [0.9] * 4, "sustained_real_pattern"),
        ([0.9, 0.1] * 10, "intermittent"),
        ([0.9] * 5 + [0.1] * 10 + [0.9] * 5, "intermittent"),
        ([0.1] * 10 + [0.9] * 10, "mixed"),
        ([0.9] * 7 + [0.1] * 13, "mixed"),
        ([0.9, 0.9], "insufficient_data"),
        ([], "insufficient_data"),
    ],
)
def test_patterns(values: list[float], pattern: str) -> None:
    assert analyse(_scores(values), threshold=0.5, window=3)["pattern"] == pattern


def test_threshold_counts_as_fake() -> None:
    result = analyse(_scores([0.5] * 5), threshold=0.5)
    assert result["fake_fraction"] == 1.0
    assert result["pattern"] == "sustained_fake_pattern"


# --- consistency, anomalies, trend --------------------------------------------------------------


def test_consistency_is_one_minus_normalised_std() -> None:
    assert analyse(_scores([0.3] * 8), 0.5)["consistency"] == pytest.approx(1.0)
    assert analyse(_scores([0.0, 1.0] * 4), 0.5)["consistency"] == pytest.approx(0.0)
    # std of [0.25, 0.75] is 0.25, half the largest possible.
    assert analyse(_scores([0.25, 0.75] * 4), 0.5)["consistency"] == pytest.approx(0.5)


def test_a_single_spike_is_an_anomaly() -> None:
    values = [0.1] * 30
    values[20] = 0.95

    result = analyse(_scores(values), threshold=0.5, window=10)

    assert [a["index"] for a in result["anomalies"]] == [20]
    anomaly = result["anomalies"][0]
    assert anomaly["timestamp"] == pytest.approx(10.0)
    assert anomaly["score"] == pytest.approx(0.95)
    assert anomaly["rolling_mean"] == pytest.approx(0.1 + 0.85 / 10)


def test_constant_scores_have_no_anomalies() -> None:
    assert analyse(_scores([0.4] * 12), 0.5)["anomalies"] == []


@pytest.mark.parametrize(
    ("values", "trend"),
    [
        ([i / 10 for i in range(10)], "increasing"),
        ([1 - i / 10 for i in range(10)], "decreasing"),
        ([0.5, 0.52, 0.48, 0.5, 0.51, 0.49], "stable"),
        ([0.7], "stable"),
    ],
)
def test_trend(values: list[float], trend: str) -> None:
    assert analyse(_scores(values), 0.5)["trend"] == trend


def test_trend_slope_is_per_second() -> None:
    # +0.05 per frame at 0.5 s per frame.
    result = analyse(_scores([0.1 + 0.05 * i for i in range(10)], step=0.5), 0.5)
    assert result["slope_per_s"] == pytest.approx(0.1)


# --- segments ----------------------------------------------------------------------------------


def test_consecutive_frames_merge_into_one_segment() -> None:
    values = [0.1, 0.1, 0.9, 0.8, 0.95, 0.1, 0.1]

    segments = analyse(_scores(values), threshold=0.5, window=1)["segments"]

    assert segments == [Segment(start=1.0, end=2.5, peak=0.95, frames=3)]


def test_separate_runs_give_separate_segments_on_smoothed_scores() -> None:
    # Smoothed over 2 frames, each lone spike lifts itself and the frame after it to 0.525.
    values = [0.1, 0.95, 0.1, 0.1, 0.1, 0.95, 0.1]

    segments = analyse(_scores(values, step=1.0), threshold=0.5, window=2)["segments"]

    assert [(s["start"], s["end"], s["frames"]) for s in segments] == [(1, 3, 2), (5, 7, 2)]
    assert all(s["peak"] == pytest.approx(0.525) for s in segments)


def test_segment_at_the_end_lasts_one_frame_step() -> None:
    segments = analyse(_scores([0.1, 0.1, 0.9], step=0.25), threshold=0.5, window=1)["segments"]
    assert segments == [Segment(start=0.5, end=0.75, peak=0.9, frames=1)]


def test_no_segments_below_the_threshold() -> None:
    assert analyse(_scores([0.2, 0.3, 0.1]), threshold=0.5)["segments"] == []


# --- empty and short inputs --------------------------------------------------------------------


def test_empty_input() -> None:
    result = analyse([], threshold=0.5)

    assert result["frames"] == 0
    assert result["rolling_mean"] == []
    assert result["mean"] is None
    assert result["consistency"] is None
    assert result["pattern"] == "insufficient_data"
    assert result["trend"] == "stable"
    assert result["anomalies"] == []
    assert result["segments"] == []


def test_single_frame() -> None:
    result = analyse([FrameScore(1.5, 0.8)], threshold=0.5)

    assert result["frames"] == 1
    assert result["mean"] == pytest.approx(0.8)
    assert result["pattern"] == "insufficient_data"
    assert result["segments"] == [Segment(start=1.5, end=1.5, peak=0.8, frames=1)]


# --- WebVTT ------------------------------------------------------------------------------------


def test_webvtt_cues() -> None:
    segments = [
        Segment(start=1.0, end=2.5, peak=0.874, frames=3),
        Segment(start=3725.25, end=3726.0, peak=0.6, frames=2),
    ]

    assert to_webvtt(segments) == (
        "WEBVTT\n"
        "\n"
        "1\n"
        "00:00:01.000 --> 00:00:02.500\n"
        "Suspected fake (peak 0.87)\n"
        "\n"
        "2\n"
        "01:02:05.250 --> 01:02:06.000\n"
        "Suspected fake (peak 0.60)\n"
    )


def test_webvtt_without_segments_is_a_valid_empty_file() -> None:
    assert to_webvtt([]) == "WEBVTT\n"


def test_webvtt_cue_always_ends_after_it_starts() -> None:
    vtt = to_webvtt([Segment(start=1.5, end=1.5, peak=0.8, frames=1)])
    assert "00:00:01.500 --> 00:00:01.501" in vtt
