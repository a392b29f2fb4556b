"""processor.visualize: the annotated MP4 and the timeline PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from detectors.base import FrameScore
from detectors.errors import MediaError, TooManyFrames
from detectors.faces import FaceFinder
from detectors.frames import DecodeLimits
from detectors.temporal import analyse
from processor.visualize import (
    TIMELINE_DPI,
    TIMELINE_SIZE_IN,
    frame_scores,
    render_timeline,
    render_video,
)
from tests.media import make_text_as_mp4, make_video

LIMITS = DecodeLimits(
    max_file_bytes=10**9, max_duration_s=600, max_pixels=10**8, max_decoded_frames=10_000
)
SECONDS, FPS = 1.0, 15
SOURCE_SIZE = (320, 240)
MAX_SIDE = 160  # the output is scaled to 160 x 120


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(
        tmp_path_factory.mktemp("media") / "face.mp4", seconds=SECONDS, fps=FPS, size=SOURCE_SIZE
    )


@pytest.fixture(scope="module")
def finder() -> FaceFinder:
    return FaceFinder()


def flat_scores(p: float) -> list[dict[str, float]]:
    """Stored-style frame scores, all ``p``."""
    return [{"t": t, "p": p} for t in (0.1, 0.4, 0.7, 0.95)]


def render(src: Path, dst: Path, scores: Any, finder: FaceFinder | None, **kw: Any) -> int:
    options: dict[str, Any] = {
        "label": "FAKE",
        "fake_probability": 0.9,
        "threshold": 0.5,
        "detector": "color-cues-lstm-v1",
        "weights_id": "0123456789abcdef" * 4,
        "face_finder": finder,
        "limits": LIMITS,
        "max_side": MAX_SIDE,
    } | kw
    return render_video(src, dst, scores, **options)


def decoded(path: Path) -> tuple[str, list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return stream.codec_context.name, frames


def test_annotated_video_keeps_every_frame_at_the_scaled_size(
    clip: Path, tmp_path: Path, finder: FaceFinder
) -> None:
    dst = tmp_path / "out.mp4"
    written = render(clip, dst, flat_scores(0.9), finder)

    codec, frames = decoded(dst)
    assert codec == "h264"
    assert written == len(frames) == round(SECONDS * FPS)
    assert {f.shape for f in frames} == {(120, 160, 3)}
    # Only the finished file is left: no partial output beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_score_bar_shows_the_frame_score(clip: Path, tmp_path: Path) -> None:
    low, high = tmp_path / "low.mp4", tmp_path / "high.mp4"
    render(clip, low, flat_scores(0.1), None, label="REAL", fake_probability=0.1)
    render(clip, high, flat_scores(0.9), None)
    _, low_frames = decoded(low)
    _, high_frames = decoded(high)
    # The bar runs along the bottom; at 75 % of the width it is filled (red) only when the
    # score is above 0.75.
    region = (slice(112, 118), slice(116, 124))
    low_px = low_frames[7][region].astype(int).mean(axis=(0, 1))
    high_px = high_frames[7][region].astype(int).mean(axis=(0, 1))
    assert high_px[0] - low_px[0] > 100, (low_px, high_px)
    assert high_px[0] > 2 * high_px[1]


def test_face_box_is_drawn_only_with_a_finder(
    clip: Path, tmp_path: Path, finder: FaceFinder
) -> None:
    plain, boxed = tmp_path / "plain.mp4", tmp_path / "boxed.mp4"
    # Full size: at 160 x 120 the face is smaller than dlib's 80-pixel HOG window.
    render(clip, plain, flat_scores(0.9), None, max_side=320)
    render(clip, boxed, flat_scores(0.9), finder, max_side=320)
    _, plain_frames = decoded(plain)
    _, boxed_frames = decoded(boxed)
    # Above the score bar and below the text, only the box can differ.
    middle = (slice(50, 220), slice(None))
    diff = np.abs(plain_frames[0][middle].astype(int) - boxed_frames[0][middle].astype(int))
    assert (diff.max(axis=2) > 60).sum() > 50


def test_a_video_over_the_frame_cap_is_refused(clip: Path, tmp_path: Path) -> None:
    capped = DecodeLimits(10**9, 600, 10**8, max_decoded_frames=5)
    with pytest.raises(TooManyFrames):
        render(clip, tmp_path / "capped.mp4", flat_scores(0.5), None, limits=capped)
    assert list(tmp_path.iterdir()) == []


def test_without_scores_or_probability(clip: Path, tmp_path: Path) -> None:
    dst = tmp_path / "abstain.mp4"
    render(clip, dst, [], None, label="ABSTAIN", fake_probability=None)
    assert len(decoded(dst)[1]) == round(SECONDS * FPS)


def test_not_a_video_is_a_media_error_and_leaves_nothing(tmp_path: Path) -> None:
    src = make_text_as_mp4(tmp_path / "list.mp4")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(MediaError) as info:
        render(src, out / "x.mp4", flat_scores(0.5), None)
    assert info.value.code == "not_a_video"
    assert list(out.iterdir()) == []


def test_frame_scores_accepts_both_shapes_in_time_order() -> None:
    stored = [{"t": 0.5, "p": 0.2}, {"t": 0.1, "p": 0.7}]
    assert frame_scores(stored) == [FrameScore(0.1, 0.7), FrameScore(0.5, 0.2)]
    assert frame_scores([FrameScore(0.2, 0.3)]) == [FrameScore(0.2, 0.3)]


def test_timeline_is_a_png_of_the_documented_size(tmp_path: Path) -> None:
    scores = [FrameScore(i / 10, p) for i, p in enumerate([0.1, 0.2, 0.9, 0.95, 0.9, 0.2])]
    segments = analyse(scores, 0.5, window=1)["segments"]
    assert segments, "the test needs a shaded segment"
    dst = tmp_path / "timeline.png"
    render_timeline(dst, scores, 0.5, segments)

    assert dst.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(dst) as image:
        image.verify()
    with Image.open(dst) as image:
        width, height = TIMELINE_SIZE_IN
        assert image.size == (round(width * TIMELINE_DPI), round(height * TIMELINE_DPI))


def test_timeline_without_scores(tmp_path: Path) -> None:
    dst = tmp_path / "empty.png"
    render_timeline(dst, [], 0.5, [])
    with Image.open(dst) as image:
        assert image.format == "PNG"
