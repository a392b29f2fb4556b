"""detectors.frames: even sampling from one sequential decode, and a typed error for every way a
file can fail to be a usable video."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import skimage.data
from PIL import Image

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
from detectors.frames import DecodeLimits, decode_by_seeking, decode_sampled, probe, to_rgb
from tests.media import make_audio_only, make_text_as_mp4, make_truncated, make_video

LIMITS = DecodeLimits(
    max_file_bytes=100_000_000,
    max_duration_s=600,
    max_pixels=3840 * 2160,
    max_decoded_frames=50_000,
)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def h264(media: Path) -> Path:
    return make_video(media / "h264.mp4", seconds=2.0, fps=30)


@pytest.fixture(scope="module")
def faststart(media: Path) -> Path:
    return make_video(media / "faststart.mp4", seconds=4.0, fps=30, faststart=True)


def test_samples_are_evenly_spread_in_time(h264: Path) -> None:
    sample = decode_sampled(h264, 8, LIMITS, max_side=640)

    assert len(sample.frames) == len(sample.timestamps) == 8
    assert sample.info.duration_s == pytest.approx(2.0)
    assert sample.info.fps == pytest.approx(30.0)
    assert (sample.info.width, sample.info.height) == (320, 240)
    for i, t in enumerate(sample.timestamps):
        target = (i + 0.5) * 2.0 / 8
        # The first frame at or after the target: at most one frame interval late.
        assert target - 1e-6 <= t < target + 1 / 30
    assert all(f.dtype == np.uint8 and f.shape == (240, 320, 3) for f in sample.frames)


@pytest.mark.parametrize("samples", [1, 8])
def test_run_holds_the_first_frames_in_order(h264: Path, samples: int) -> None:
    """The run outlasts the samples when one sample lies before its end (1 sample: at 1 s)."""
    sample = decode_sampled(h264, samples, LIMITS, max_side=160, run=40)
    with av.open(str(h264)) as container:
        first = [to_rgb(f, 160) for f, _ in zip(container.decode(video=0), range(40), strict=False)]
    assert len(sample.run) == 40
    assert all(np.array_equal(a, b) for a, b in zip(sample.run, first, strict=True))
    assert len(sample.frames) == samples
    assert decode_sampled(h264, samples, LIMITS, max_side=160).run == []


def test_run_alone_stops_decoding_early_but_still_notices_a_cut_off_stream(
    media: Path, faststart: Path
) -> None:
    sample = decode_sampled(faststart, 0, LIMITS, max_side=160, run=12)
    assert (len(sample.run), sample.frames) == (12, [])
    assert decode_sampled(faststart, 0, LIMITS, max_side=160).run == []
    # The first frames of a copy cut at 60% of its bytes decode fine; its packets end at 1.3 s
    # of 4 s (the synthetic first frames are large).
    cut = make_truncated(faststart, media / "run-cut.mp4", 0.6)
    with pytest.raises(CorruptVideo, match="the video stream ends at"):
        decode_sampled(cut, 0, LIMITS, max_side=160, run=12)


def test_short_video_gives_each_frame_once(h264: Path) -> None:
    sample = decode_sampled(h264, 100, LIMITS, max_side=640)

    assert 55 <= len(sample.frames) <= 60
    assert all(b > a for a, b in zip(sample.timestamps, sample.timestamps[1:], strict=False))


@pytest.mark.parametrize(("size", "max_side"), [((1280, 720), 320), ((500, 282), 333)])
def test_downscales_to_max_side_keeping_aspect(
    media: Path, size: tuple[int, int], max_side: int
) -> None:
    path = make_video(media / f"big{size[0]}.mp4", seconds=0.5, size=size, face=False)

    frame = decode_sampled(path, 3, LIMITS, max_side=max_side).frames[0]

    height, width = frame.shape[:2]
    assert max(width, height) <= max_side
    assert width % 2 == 0
    assert height % 2 == 0
    assert width / height == pytest.approx(size[0] / size[1], rel=0.02)


def test_never_upscales(h264: Path) -> None:
    assert decode_sampled(h264, 2, LIMITS, max_side=4000).frames[0].shape == (240, 320, 3)


@pytest.mark.parametrize("codec", ["h264", "mpeg4"])
def test_sequential_decode_matches_seeking_decode(media: Path, codec: str) -> None:
    path = make_video(media / f"cmp-{codec}.mp4", seconds=2.0, fps=25, codec=codec)

    sequential = decode_sampled(path, 10, LIMITS, max_side=10_000)
    seeking = decode_by_seeking(path, 10)

    assert sequential.timestamps == pytest.approx(seeking.timestamps)
    for ours, theirs in zip(sequential.frames, seeking.frames, strict=True):
        # Same frames; only the YUV -> RGB conversions of FFmpeg and OpenCV differ slightly.
        assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 2.0


def test_display_rotation_is_applied(media: Path) -> None:
    path = make_video(media / "rotated.mp4", seconds=1.0, rotation=90)

    ours = decode_sampled(path, 3, LIMITS, max_side=10_000)
    # OpenCV applies the display rotation on its own.
    theirs = decode_by_seeking(path, 3)

    assert ours.frames[0].shape == (320, 240, 3)
    for a, b in zip(ours.frames, theirs.frames, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0


@pytest.mark.parametrize("name", ["streamed.webm", "streamed.ts"])
def test_duration_found_by_demuxing_when_header_lacks_it(media: Path, name: str) -> None:
    codec = "vp9" if name.endswith("webm") else "h264"
    path = make_video(media / name, seconds=2.0, fps=30, codec=codec, streamed=True)

    sample = decode_sampled(path, 8, LIMITS, max_side=640)

    assert sample.info.duration_s == pytest.approx(2.0, abs=0.05)
    assert len(sample.frames) == 8
    # Timestamps count from the stream's start (MPEG-TS starts at an arbitrary clock value).
    assert sample.timestamps[0] == pytest.approx(0.125, abs=1 / 30)
    assert sample.timestamps[-1] == pytest.approx(1.875, abs=1 / 30)


def test_streamed_webm_header_really_has_no_duration(media: Path) -> None:
    path = make_video(media / "nodur.webm", seconds=1.0, codec="vp9", streamed=True)
    with av.open(str(path)) as container:
        assert container.duration is None
        assert container.streams.video[0].duration is None


def test_probe_describes_the_video(h264: Path) -> None:
    info = probe(h264, LIMITS)

    assert info.codec == "h264"
    assert "mp4" in info.container
    assert (info.width, info.height, info.fps) == (320, 240, 30.0)
    assert info.duration_s == pytest.approx(2.0)


# --- errors: each one triggered by a real crafted file ---------------------------------------


def _expect(error: type[DetectorError], path: Path, limits: DecodeLimits = LIMITS) -> str:
    with pytest.raises(error) as probed:
        probe(path, limits)
    with pytest.raises(error) as decoded:
        decode_sampled(path, 8, limits, max_side=640)
    assert probed.value.code == decoded.value.code == error.code
    return decoded.value.message


def test_empty_file(media: Path) -> None:
    path = media / "empty.mp4"
    path.write_bytes(b"")
    _expect(EmptyFile, path)


def test_text_file_is_not_a_video(media: Path) -> None:
    message = _expect(NotAVideo, make_text_as_mp4(media / "notes.mp4"))
    assert "notes.mp4" in message


def test_still_image_is_not_a_video(media: Path) -> None:
    path = media / "photo.mp4"
    Image.fromarray(skimage.data.astronaut()).save(path, format="PNG")
    assert "still image" in _expect(NotAVideo, path)


def test_truncated_mp4_is_corrupt_not_text(media: Path, h264: Path) -> None:
    # The default MP4 keeps its index (moov) at the end: half a file cannot even be opened.
    path = make_truncated(h264, media / "half.mp4", 0.5)
    message = _expect(CorruptVideo, path)
    assert CorruptVideo.code != NotAVideo.code
    assert "MP4" in message


def test_stream_ending_early_is_corrupt_and_says_how_far(media: Path, faststart: Path) -> None:
    # With the index first the file opens, and decoding runs dry long before the end.
    path = make_truncated(faststart, media / "cut.mp4", 0.3)
    with pytest.raises(CorruptVideo) as exc:
        decode_sampled(path, 16, LIMITS, max_side=640)
    assert " of 4.0 s" in exc.value.message


def test_few_missing_tail_frames_are_tolerated(media: Path, faststart: Path) -> None:
    path = make_truncated(faststart, media / "nearly.mp4", 0.95)

    sample = decode_sampled(path, 16, LIMITS, max_side=640)

    assert 8 <= len(sample.frames) <= 16


def test_garbage_mid_stream_is_corrupt(media: Path, faststart: Path) -> None:
    payload = bytearray(faststart.read_bytes())
    rng = np.random.default_rng(1)
    start = len(payload) // 2
    payload[start:] = rng.integers(0, 256, len(payload) - start, dtype=np.uint8).tobytes()
    path = media / "garbage.mp4"
    path.write_bytes(bytes(payload))

    with pytest.raises(CorruptVideo) as exc:
        decode_sampled(path, 16, LIMITS, max_side=640)
    assert "of 4.0 s" in exc.value.message


def test_audio_only_has_no_video_stream(media: Path) -> None:
    message = _expect(NoVideoStream, make_audio_only(media / "voice.m4a"))
    assert "audio" in message


def test_missing_file_is_transient(media: Path) -> None:
    with pytest.raises(TransientError):
        probe(media / "gone.mp4", LIMITS)


def test_file_too_large(h264: Path) -> None:
    limits = DecodeLimits(1000, 600, 3840 * 2160, 50_000)
    assert "limit" in _expect(FileTooLarge, h264, limits)


def test_too_long(h264: Path) -> None:
    limits = DecodeLimits(100_000_000, 1.5, 3840 * 2160, 50_000)
    assert _expect(TooLong, h264, limits) == "video is 2 s long; the limit is 1.5 s"


def test_too_many_pixels_is_refused_before_decoding(h264: Path) -> None:
    limits = DecodeLimits(100_000_000, 600, 320 * 240 - 1, 50_000)
    assert "320x240" in _expect(TooManyPixels, h264, limits)


def test_too_many_frames_from_the_index(h264: Path) -> None:
    _expect(TooManyFrames, h264, DecodeLimits(100_000_000, 600, 3840 * 2160, 10))


def test_too_many_frames_while_decoding(media: Path) -> None:
    # Matroska declares no frame count, so only counting decoded frames can catch it.
    path = make_video(media / "count.mkv", seconds=2.0, fps=30, codec="mpeg4")
    with pytest.raises(TooManyFrames):
        decode_sampled(path, 8, DecodeLimits(100_000_000, 600, 3840 * 2160, 20), max_side=640)


def test_too_many_frames_while_demuxing(media: Path) -> None:
    path = make_video(media / "count.webm", seconds=2.0, fps=30, codec="vp9", streamed=True)
    _expect(TooManyFrames, path, DecodeLimits(100_000_000, 600, 3840 * 2160, 20))
