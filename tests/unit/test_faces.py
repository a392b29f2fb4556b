"""detectors.faces: dlib HOG on a downscaled copy, boxes and landmarks in full-frame pixels."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import skimage.data

from detectors.faces import FaceFinder, default_landmarks_path

# dlib finds the astronaut's face here in the 512 x 512 original.
ASTRONAUT_BOX = (179, 83, 266, 170)


@pytest.fixture(scope="module")
def finder() -> FaceFinder:
    finder = FaceFinder(detect_max_side=640)
    finder.load()
    return finder


def test_landmark_model_ships_with_the_package() -> None:
    assert default_landmarks_path().is_file()


def test_finds_the_astronaut(finder: FaceFinder) -> None:
    face = finder.find(skimage.data.astronaut())

    assert face is not None
    assert face.box == pytest.approx(ASTRONAUT_BOX, abs=3)
    assert face.landmarks.shape == (68, 2)
    left, top, right, bottom = face.box
    inner = face.landmarks[17:]  # brows, eyes, nose, mouth: inside the detector's box
    assert (inner[:, 0] >= left).all()
    assert (inner[:, 0] <= right).all()
    assert (inner[:, 1] >= top).all()
    assert (inner[:, 1] <= bottom + 15).all()


def test_boxes_are_mapped_back_to_full_resolution(finder: FaceFinder) -> None:
    big = cv2.resize(skimage.data.astronaut(), (1536, 1536), interpolation=cv2.INTER_CUBIC)

    face = finder.find(big)

    assert face is not None
    # Searched at 640 px, where HOG's scale pyramid sizes the box a little differently from the
    # 512 px original; its centre and the landmarks (fitted on the full frame) must agree.
    center = ((face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2)
    left, top, right, bottom = ASTRONAUT_BOX
    assert center == pytest.approx((1.5 * (left + right), 1.5 * (top + bottom)), abs=12)
    reference = finder.find(skimage.data.astronaut())
    assert reference is not None
    assert np.abs(face.landmarks - 3 * reference.landmarks).mean() < 6


def test_picks_the_largest_face(finder: FaceFinder) -> None:
    astronaut = skimage.data.astronaut()
    canvas = np.full((600, 900, 3), 128, np.uint8)
    canvas[44:556, 0:512] = astronaut
    small = cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)
    canvas[108:492, 516:900] = small

    face = finder.find(canvas)

    assert face is not None
    width = face.box[2] - face.box[0]
    assert face.box[0] < 512
    assert width > 75


def test_no_face_gives_none(finder: FaceFinder) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    assert finder.find(noise) is None


def test_survives_pickling(finder: FaceFinder) -> None:
    copy = pickle.loads(pickle.dumps(finder))

    face = copy.find(skimage.data.astronaut())

    assert face is not None
    assert face.box == pytest.approx(ASTRONAUT_BOX, abs=3)
