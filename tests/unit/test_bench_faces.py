"""``bench faces``: clips padded into a large black frame at decode time, where HOG on the
downscaled copy finds no face and BlazeFace does, counted per finder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.face_cues import FaceCuesConfig
from detectors.frames import DecodeLimits
from detectors.training import Clip
from processor.bench.faces import bench_faces, pad, parse_finders, parse_size
from tests.media import SHARED_VIDEOS, make_video

LIMITS = DecodeLimits(1 << 30, 3600, 3840 * 2160, 100_000)
SETTINGS = FaceCuesConfig(run_frames=8, min_faces=3)
FINDERS = parse_finders("hog,hog+blazeface")


def _clip(path: Path) -> Clip:
    return Clip(path=path, file=path.name, label=0, dataset="test", sha256="0" * 64)


def test_sizes_and_finders_are_parsed() -> None:
    assert parse_size("1920x1080") == (1920, 1080)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("1080p")
    assert parse_finders("hog+blazeface, hog") == ["hog", "hog+blazeface"]
    with pytest.raises(ValueError, match="unknown face finder mtcnn"):
        parse_finders("hog,mtcnn")


def test_padding_centres_the_frame_at_its_own_size() -> None:
    frame = np.full((240, 320, 3), 200, np.uint8)

    padded = pad(frame, (1920, 1080))

    assert padded.shape == (1080, 1920, 3)
    assert (padded[420:660, 800:1120] == 200).all()
    assert padded.sum() == frame.sum()
    assert pad(np.ones((2000, 1000, 3), np.uint8), (1920, 1080)).shape == (1080, 1920, 3)


def test_a_generated_face_padded_into_1080p_is_found_only_with_blazeface(tmp_path: Path) -> None:
    # The astronaut's face is about 90 px in this 320 x 240 clip: 45 px in the 960 px frame the
    # cues are measured on, 30 px in HOG's 640 px copy, under its 80 px window.
    clip = make_video(tmp_path / "face.mp4", seconds=1.0, fps=10)

    native = bench_faces([_clip(clip)], LIMITS, 1280, SETTINGS, FINDERS)
    report = bench_faces([_clip(clip)], LIMITS, 1280, SETTINGS, FINDERS, pad_to=(1920, 1080))

    assert native["finders"]["hog"]["frames_with_face"] == 8
    assert native["finders"]["hog+blazeface"]["frames_by_blazeface"] == 0
    hog, hybrid = report["finders"]["hog"], report["finders"]["hog+blazeface"]
    assert (hog["frames_with_face"], hog["clips_without_face"]) == (0, ["face.mp4"])
    assert hybrid["frames_with_face"] == hybrid["frames_by_blazeface"] == 8
    assert (hybrid["clips_with_face"], hybrid["clips_judged"]) == (1, 1)
    assert report["clips"][0]["size"] == [960, 540]
    assert report["pad_to"] == "1920x1080"


@pytest.mark.skipif(not SHARED_VIDEOS.is_dir(), reason=f"{SHARED_VIDEOS} is missing")
def test_a_real_clip_padded_into_1080p_is_found_only_with_blazeface() -> None:
    clip = SHARED_VIDEOS / "real" / "dpe_s.mp4"  # 256 x 256, one face filling most of it

    report = bench_faces([_clip(clip)], LIMITS, 1280, SETTINGS, FINDERS, pad_to=(1920, 1080))

    assert report["finders"]["hog"]["frames_with_face"] == 0
    assert report["finders"]["hog+blazeface"]["frames_with_face"] == 8
