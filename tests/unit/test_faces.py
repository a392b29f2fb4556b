"""detectors.faces: dlib HOG on a downscaled copy, mediapipe's BlazeFace where HOG sees no face,
boxes and landmarks in full-frame pixels, and the BlazeFace model file's checks."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data

from detectors.faces import BLAZEFACE_MODEL, BlazeFace, FaceFinder, default_landmarks_path
from detectors.manifest import (
    SCHEMA,
    Manifest,
    ManifestError,
    ModelFile,
    read_manifest,
    register,
    registered_model,
    source_tree_manifest,
    write_manifest,
)
from detectors.weights import WeightsError, WeightsUnreadable, sha256_file

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


# --- BlazeFace ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blazeface() -> BlazeFace:
    model = BlazeFace()
    model.load()
    return model


@pytest.fixture(scope="module")
def hybrid() -> FaceFinder:
    finder = FaceFinder(detect_max_side=640, method="hog+blazeface")
    finder.load()
    return finder


def _small_astronaut(scale: float, frame: tuple[int, int] = (960, 540)) -> tuple[np.ndarray, Any]:
    """The astronaut shrunk by ``scale`` at (600, 200) of a black frame, and her face's box."""
    small = cv2.resize(
        skimage.data.astronaut(), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA
    )
    canvas = np.zeros((frame[1], frame[0], 3), np.uint8)
    canvas[200 : 200 + small.shape[0], 600 : 600 + small.shape[1]] = small
    left, top, right, bottom = ASTRONAUT_BOX
    return canvas, (
        600 + left * scale,
        200 + top * scale,
        600 + right * scale,
        200 + bottom * scale,
    )


def _centre(box: Any) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def test_blazeface_finds_the_astronaut_with_its_keypoints(blazeface: BlazeFace) -> None:
    [face] = blazeface.detect(skimage.data.astronaut())

    assert face.score > 0.8
    assert _centre(face.box) == pytest.approx(_centre(ASTRONAUT_BOX), abs=8)
    assert face.side == pytest.approx(ASTRONAUT_BOX[2] - ASTRONAUT_BOX[0], rel=0.25)
    # Keypoints in mediapipe's order: her right eye, left eye, nose tip, mouth: eyes above the
    # nose, the nose above the mouth, all inside the box.
    right_eye, left_eye, nose, mouth = face.keypoints[:4]
    assert right_eye[0] < left_eye[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]
    left, top, right, bottom = face.box
    assert ((face.keypoints[:4] >= (left, top)) & (face.keypoints[:4] <= (right, bottom))).all()


@pytest.mark.parametrize("scale", [0.5, 0.25])
def test_a_small_face_hog_misses_is_found_and_boxed_as_hog_would(
    finder: FaceFinder, hybrid: FaceFinder, scale: float
) -> None:
    frame, truth = _small_astronaut(scale)  # a face of 44 or 22 px in a 960 x 540 frame

    assert finder.find(frame) is None
    face = hybrid.find(frame)

    assert face is not None
    assert face.found_by == "blazeface"
    assert _centre(face.box) == pytest.approx(_centre(truth), abs=4)
    assert face.box[2] - face.box[0] == pytest.approx(truth[2] - truth[0], rel=0.25)
    eyes = face.landmarks[36:48].mean(axis=0)
    assert truth[0] < eyes[0] < truth[2]
    assert truth[1] < eyes[1] < truth[3]


def test_blazeface_runs_only_where_hog_finds_nothing(
    hybrid: FaceFinder, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hybrid.blazeface is not None
    calls: list[object] = []
    search = hybrid.blazeface.search
    monkeypatch.setattr(hybrid.blazeface, "search", lambda *a: calls.append(a) or search(*a))

    face = hybrid.find(skimage.data.astronaut())

    assert face is not None
    assert face.found_by == "hog"
    assert face.box == pytest.approx(ASTRONAUT_BOX, abs=3)  # exactly what HOG alone gives
    assert calls == []
    assert hybrid.find(_small_astronaut(0.5)[0]) is not None
    assert len(calls) == 1


def test_a_track_looks_where_the_face_was(
    hybrid: FaceFinder, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hybrid.blazeface is not None
    inferences: list[object] = []
    detect = hybrid.blazeface.detect
    monkeypatch.setattr(hybrid.blazeface, "detect", lambda *a: inferences.append(a) or detect(*a))
    frame, truth = _small_astronaut(0.25)
    track = hybrid.track()

    first = track.find(frame)
    searched = len(inferences)
    second = track.find(frame)

    assert first is not None
    assert second is not None
    assert searched >= 2  # the whole frame and its tiles, then a closer look
    assert len(inferences) == searched + 1  # one look around the last face
    assert _centre(second.box) == pytest.approx(_centre(truth), abs=4)


def test_blazeface_turns_away_frames_without_a_face(blazeface: BlazeFace) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (540, 960, 3), dtype=np.uint8)
    coffee = cv2.resize(skimage.data.coffee(), (960, 540))

    assert blazeface.search(noise) is None
    assert blazeface.search(np.ascontiguousarray(coffee)) is None


def test_blazeface_alone_and_after_pickling(hybrid: FaceFinder) -> None:
    alone = FaceFinder(method="blazeface")
    face = pickle.loads(pickle.dumps(alone)).find(skimage.data.astronaut())
    copy = pickle.loads(pickle.dumps(hybrid)).find(_small_astronaut(0.5)[0])

    assert face is not None
    assert face.found_by == "blazeface"
    assert _centre(face.box) == pytest.approx(_centre(ASTRONAUT_BOX), abs=8)
    assert copy is not None
    assert copy.found_by == "blazeface"


def test_an_unknown_finder_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown face finder 'mtcnn'"):
        FaceFinder(method="mtcnn")  # type: ignore[arg-type]


def test_the_shipped_model_is_registered_with_its_licence_and_card() -> None:
    manifest = source_tree_manifest()
    [entry] = [m for m in read_manifest(manifest).models if m.name == BLAZEFACE_MODEL]
    folder = manifest.parent

    assert registered_model(BLAZEFACE_MODEL) == folder / entry.file
    assert entry.license == "Apache-2.0"
    assert "Apache License" in (folder / entry.file).with_name("LICENSE").read_text()
    assert entry.sha256 in (folder / entry.card).read_text()


def test_a_missing_model_fails_at_load_naming_it(tmp_path: Path) -> None:
    gone = tmp_path / "face.tflite"
    finder = FaceFinder(method="hog+blazeface", blazeface_path=gone)

    with pytest.raises(WeightsUnreadable, match=f"BlazeFace model not found: {gone}"):
        finder.load()


def test_a_corrupt_model_fails_at_load_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "face.tflite"
    broken.write_bytes(registered_model(BLAZEFACE_MODEL).read_bytes()[:5000])

    with pytest.raises(WeightsUnreadable, match=f"cannot load BlazeFace model {broken}"):
        FaceFinder(method="blazeface", blazeface_path=broken).load()


def _manifest_with_model(tmp_path: Path, payload: bytes, sha256: str) -> Path:
    (tmp_path / "face.tflite").write_bytes(payload)
    manifest = tmp_path / "manifest.json"
    model = ModelFile(
        name=BLAZEFACE_MODEL,
        file="face.tflite",
        sha256=sha256,
        license="Apache-2.0",
        source="test",
        card="face.md",
    )
    write_manifest(manifest, Manifest(schema=SCHEMA, models=[model]))
    return manifest


def test_a_registered_model_whose_bytes_changed_is_refused(tmp_path: Path) -> None:
    shipped = registered_model(BLAZEFACE_MODEL)
    payload = bytearray(shipped.read_bytes())
    payload[-1] ^= 0xFF
    manifest = _manifest_with_model(tmp_path, bytes(payload), sha256_file(shipped))

    with pytest.raises(WeightsError, match="damaged or was replaced"):
        registered_model(BLAZEFACE_MODEL, manifest)
    with pytest.raises(ManifestError, match="lists no model named other"):
        registered_model("other", manifest)
    (tmp_path / "face.tflite").unlink()
    with pytest.raises(WeightsUnreadable, match="not found"):
        registered_model(BLAZEFACE_MODEL, manifest)


def test_registering_a_detector_keeps_the_models(tmp_path: Path) -> None:
    manifest = _manifest_with_model(tmp_path, b"x", "0" * 64)
    entry = read_manifest(source_tree_manifest()).default_entry("face-cues-v1")

    register(manifest, entry)

    assert [m.name for m in read_manifest(manifest).models] == [BLAZEFACE_MODEL]
