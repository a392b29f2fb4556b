"""Find the main face in a frame, then its 68 dlib landmarks on the full frame.

Three ways to find it, chosen per detector (``face_finder``):

- ``hog``: dlib's frontal HOG detector on a downscaled copy. Quick on faces that fill much of
  the frame, blind to faces under about 80 px in the copy (people standing in a room, filmed at
  1080p and searched at 640 px).
- ``blazeface``: mediapipe's full-range BlazeFace (a 676 kB TFLite model shipped in
  ``weights/blazeface/``), run with the LiteRT interpreter on the whole frame letterboxed to
  192 x 192, then, when that finds nothing, on overlapping tiles at twice the resolution. It
  finds faces down to about 10 px of its input, but misses some close-ups that fill the frame.
- ``hog+blazeface``: HOG, and BlazeFace only on the frames where HOG finds nothing.
- ``blazeface+hog``: BlazeFace, and HOG only on the frames where BlazeFace finds nothing (the
  close-ups): nearly BlazeFace's cost, nearly HOG's coverage of close-ups.

Whichever finds the box, the landmarks come from the same dlib predictor, so what detectors
measure on them keeps its meaning. A BlazeFace box is turned into the box HOG would draw around
the same face (same centre, 0.9 of the side: measured on 447 frames where both found one face)
because the predictor was trained on HOG's boxes.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import dlib
import numpy as np

from detectors.manifest import registered_model
from detectors.weights import WeightsError, WeightsUnreadable

_LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"

FaceFinderName = Literal["hog", "blazeface", "hog+blazeface", "blazeface+hog"]
FACE_FINDERS: tuple[FaceFinderName, ...] = get_args(FaceFinderName)
FACE_FINDER_HELP = (
    "How faces are found: hog (dlib's HOG detector on a downscaled copy), blazeface "
    "(mediapipe's full-range BlazeFace: finds small faces), hog+blazeface (BlazeFace only "
    "on frames where HOG finds none), or blazeface+hog (HOG only on frames where BlazeFace "
    "finds none)."
)
# The name of the BlazeFace model in weights/manifest.json's ``models``.
BLAZEFACE_MODEL = "blazeface-full-range"

# The full-range model's contract (mediapipe/modules/face_detection/face_detection_full_range
# .pbtxt and face_detection.pbtxt): a 192 x 192 RGB input scaled to [-1, 1]; one SSD anchor per
# cell of a 48 x 48 grid (stride 4, fixed size, so offsets are in input pixels); per anchor a
# score logit and 16 numbers: box centre x, y, width, height, then six (x, y) keypoints (eyes,
# nose tip, mouth, ear tragions).
_INPUT = 192
_GRID = _INPUT // 4
_CELL_CENTRES = (np.arange(_GRID, dtype=np.float32) + 0.5) / _GRID
# (x, y) of each anchor as a fraction of the input, row by row as the model lays them out.
_ANCHORS = np.stack(np.meshgrid(_CELL_CENTRES, _CELL_CENTRES), axis=-1).reshape(-1, 2)
_LOGIT_CLIP = 100.0
_NMS_IOU = 0.3
# HOG's box around a face has BlazeFace's centre and 0.906 of its side (median over 447 frames
# of the shared clips where both found exactly one face; interquartile range 0.10).
_HOG_SIDE_PER_BLAZEFACE = 0.9
# A closer look at a face (to confirm it, or to follow it into the next frame) reads a square
# this many times its side: the face fills a third of the input, at least at its own size.
_LOOK_REGION = 3.0
# Second looks per frame: each is one inference; a frame full of look-alikes stops there.
_MAX_CONFIRMATIONS = 4


@dataclass(frozen=True)
class Face:
    """One face in full-frame pixels: its box (left, top, right, bottom) and 68 (x, y) points;
    ``found_by`` names the finder that drew the box."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray
    found_by: str = "hog"


@dataclass(frozen=True)
class Detection:
    """One BlazeFace detection in frame pixels: its score, box (left, top, right, bottom) and
    six keypoints (6 x 2)."""

    score: float
    box: tuple[float, float, float, float]
    keypoints: np.ndarray

    @property
    def side(self) -> float:
        """The longer side of the box."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


def default_landmarks_path() -> Path:
    """The 68-landmark model shipped by the ``face-recognition-models`` package."""
    # Its __init__ imports pkg_resources, which new setuptools no longer ship: find the files
    # without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the face-recognition-models package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / _LANDMARKS_FILE


class BlazeFace:
    """mediapipe's full-range BlazeFace detector, decoded as mediapipe's graph decodes it (SSD
    anchors, sigmoid scores, weighted non-max suppression).

    ``model_path`` None takes the file registered in the source checkout's weights manifest,
    after checking its sha256. One LiteRT interpreter per thread (an interpreter is not safe
    for concurrent calls), each on one CPU thread: frames are already prepared in parallel.
    """

    def __init__(self, model_path: Path | None = None, min_score: float = 0.5) -> None:
        self.model_path = model_path
        self.min_score = min_score
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._model: bytes | None = None
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "min_score": self.min_score}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def load(self) -> None:
        """Read and check the model now (otherwise on the first detection): a missing, damaged
        or wrong file fails here, with its path in the message."""
        with self._lock:
            if self._model is not None:
                return
            path = self.model_path or registered_model(BLAZEFACE_MODEL)
            try:
                model = path.read_bytes()
            except OSError as exc:
                raise WeightsUnreadable(
                    f"BlazeFace model not found: {path} ({exc.strerror})"
                ) from exc
            self._local.interpreter = _open_interpreter(model, path)
            self._model = model

    def _interpreter(self) -> Any:
        if self._model is None:
            self.load()
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            assert self._model is not None
            interpreter = self._local.interpreter = _open_interpreter(self._model, self.model_path)
        return interpreter

    def detect(
        self, rgb: np.ndarray, region: tuple[int, int, int] | None = None
    ) -> list[Detection]:
        """Faces in an RGB uint8 frame, or in its square ``region`` (left, top, side; it may
        reach past the frame, which then reads as black), best first."""
        height, width = rgb.shape[:2]
        left, top, side = region or (0, 0, max(width, height))
        scale = _INPUT / side
        # The frame's part of the region, resized into the input; the rest stays black, as
        # mediapipe letterboxes (the whole frame is a region centred on it).
        if region is None:
            left, top = (width - side) // 2, (height - side) // 2
        x0, y0 = max(0, left), max(0, top)
        x1, y1 = min(width, left + side), min(height, top + side)
        canvas = np.zeros((_INPUT, _INPUT, 3), np.uint8)
        if x1 > x0 and y1 > y0:
            cx0, cy0 = round((x0 - left) * scale), round((y0 - top) * scale)
            cx1 = max(cx0 + 1, min(_INPUT, round((x1 - left) * scale)))
            cy1 = max(cy0 + 1, min(_INPUT, round((y1 - top) * scale)))
            canvas[cy0:cy1, cx0:cx1] = cv2.resize(
                rgb[y0:y1, x0:x1], (cx1 - cx0, cy1 - cy0), interpolation=cv2.INTER_AREA
            )
        tensor = canvas.astype(np.float32)[None] / 127.5 - 1.0
        interpreter = self._interpreter()
        inputs = interpreter.get_input_details()[0]["index"]
        interpreter.set_tensor(inputs, tensor)
        interpreter.invoke()
        regressors, scores = _outputs(interpreter)
        # Compare logits, not probabilities: no exp of logits that would overflow.
        logits = np.clip(scores.reshape(-1), -_LOGIT_CLIP, _LOGIT_CLIP)
        keep = logits >= math.log(self.min_score / (1.0 - self.min_score))
        if not keep.any():
            return []
        raw, anchors = regressors[keep] / _INPUT, _ANCHORS[keep]
        centres = raw[:, :2] + anchors
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([centres - half, centres + half], axis=1) * side
        boxes += (left, top, left, top)
        keypoints = (raw[:, 4:].reshape(-1, 6, 2) + anchors[:, None]) * side + (left, top)
        probabilities = 1.0 / (1.0 + np.exp(-logits[keep]))
        return list(_weighted_nms(probabilities, boxes, keypoints))

    def search(
        self, rgb: np.ndarray, near: tuple[int, int, int, int] | None = None
    ) -> Detection | None:
        """The face in a frame, found at a bounded cost, or None.

        Around ``near`` (a box in this frame: the last face seen) first, one inference at a
        resolution fit for that face, taking the face that overlaps it most (else the largest).
        Then the whole frame, then overlapping tiles at twice its resolution; a face seen there,
        largest first, counts once a second look at three times its size confirms it. That look
        also draws the box finely (a small face spans a few pixels of the coarse input) and
        turns away most look-alikes (of scikit-image's sample pictures without a face, a
        rocket scored 0.52 on the whole frame and nothing on a closer look; one galaxy of the
        Hubble deep field passes both). At most ``_MAX_CONFIRMATIONS`` second looks per frame.
        """
        height, width = rgb.shape[:2]
        if near is not None:
            found = self.detect(rgb, _around(near, width, height))
            if found:
                overlap = _iou(np.asarray(near, float), np.array([d.box for d in found]))
                if overlap.max() > 0:
                    return found[int(overlap.argmax())]
                return max(found, key=lambda d: d.side)
        looks = _MAX_CONFIRMATIONS
        for region in _coarse_regions(width, height):
            for candidate in sorted(self.detect(rgb, region), key=lambda d: -d.side):
                if looks == 0:
                    return None
                looks -= 1
                closer = self.detect(rgb, _around(candidate.box, width, height))
                if closer:
                    overlap = _iou(np.asarray(candidate.box), np.array([d.box for d in closer]))
                    if overlap.max() > _NMS_IOU:
                        return closer[int(overlap.argmax())]
        return None


def _around(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int]:
    """The square region centred on ``box``, ``_LOOK_REGION`` times its side (at least the
    model's input, at most the frame's longest side)."""
    left, top, right, bottom = box
    side = round(
        min(max(_INPUT, _LOOK_REGION * max(right - left, bottom - top)), max(width, height))
    )
    return round((left + right - side) / 2), round((top + bottom - side) / 2), side


def _coarse_regions(width: int, height: int) -> Iterator[tuple[int, int, int] | None]:
    """The whole frame (None), then, on a frame large enough, tiles half its longest side."""
    yield None
    longest = max(width, height)
    if longest < 2 * _INPUT:
        return  # tiles would be upscaled: nothing smaller to find
    side = math.ceil(longest / 2)
    # A quarter of a tile overlaps the next: a face the whole-frame search is too coarse for
    # (under a twentieth of the frame) lies whole inside some tile.
    for top in _starts(height, side):
        for left in _starts(width, side):
            yield (left, top, side)


def _starts(length: int, side: int) -> list[int]:
    if length <= side:
        return [(length - side) // 2]
    count = math.ceil((length - side) / (0.75 * side)) + 1
    return [round(i * (length - side) / (count - 1)) for i in range(count)]


def _open_interpreter(model: bytes, path: Path | None) -> Any:
    """A LiteRT interpreter for the model, checked to be the full-range BlazeFace."""
    name = path or BLAZEFACE_MODEL
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        # Its wheels stop at the Pythons they were built for; HOG alone needs no interpreter.
        raise WeightsUnreadable(
            f"BlazeFace needs the ai-edge-litert package, which cannot be imported here ({exc}); "
            "use face_finder: hog"
        ) from exc
    try:
        interpreter = Interpreter(model_content=model, num_threads=1)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise WeightsUnreadable(f"cannot load BlazeFace model {name}: {exc}") from exc
    shapes = sorted(tuple(d["shape"]) for d in interpreter.get_output_details())
    inputs = [tuple(d["shape"]) for d in interpreter.get_input_details()]
    if inputs != [(1, _INPUT, _INPUT, 3)] or shapes != [(1, _GRID**2, 1), (1, _GRID**2, 16)]:
        raise WeightsError(
            f"{name} is not the full-range BlazeFace model: inputs {inputs}, outputs {shapes} "
            f"(expected a 1x{_INPUT}x{_INPUT}x3 input and {_GRID**2} anchors)"
        )
    return interpreter


def _outputs(interpreter: Any) -> tuple[np.ndarray, np.ndarray]:
    """The regressors (anchors x 16) and score logits (anchors x 1), told apart by shape."""
    tensors = sorted(
        (interpreter.get_tensor(d["index"])[0] for d in interpreter.get_output_details()),
        key=lambda t: t.shape[-1],
    )
    return tensors[1], tensors[0]


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two boxes (left, top, right, bottom)."""
    return float(_iou(np.asarray(a, float), np.asarray([b], float))[0])


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    low = np.maximum(box[:2], boxes[:, :2])
    high = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-9))


def _weighted_nms(
    scores: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray
) -> Iterator[Detection]:
    """mediapipe's weighted non-max suppression: each detection, best first, is averaged with
    every lower one that overlaps it by IoU above 0.3, weighted by score, and takes its score."""
    order = np.argsort(-scores, kind="stable")
    while len(order):
        same = _iou(boxes[order[0]], boxes[order]) > _NMS_IOU
        same[0] = True  # the best counts even when its box has no area (IoU 0 with itself)
        group = order[same]
        weights = scores[group] / scores[group].sum()
        box = (boxes[group] * weights[:, None]).sum(axis=0)
        yield Detection(
            score=float(scores[order[0]]),
            box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            keypoints=(keypoints[group] * weights[:, None, None]).sum(axis=0),
        )
        order = order[~same]


class FaceFinder:
    """A face finder (``method``: one of ``FACE_FINDERS``, see the module's notes) plus dlib's
    68-landmark predictor, loaded on first use.

    HOG cost grows with the pixel count (about 80 fps at 640x360 but 9 fps at 1080p on one
    core), so faces are searched for on a copy whose longest side is ``detect_max_side`` and the
    boxes mapped back. BlazeFace reads the whole frame at its own 192 px input. The finder may
    be shared by threads (dlib and LiteRT release the GIL) and pickled (the models are reloaded
    on the other side).
    """

    def __init__(
        self,
        detect_max_side: int = 640,
        upsample: int = 0,
        landmarks_path: Path | None = None,
        method: FaceFinderName = "hog",
        blazeface_path: Path | None = None,
    ) -> None:
        if method not in FACE_FINDERS:
            raise ValueError(f"unknown face finder {method!r}; one of {', '.join(FACE_FINDERS)}")
        self.detect_max_side = detect_max_side
        self.upsample = upsample
        self.landmarks_path = landmarks_path
        self.method = method
        self.blazeface = BlazeFace(blazeface_path) if method != "hog" else None
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._predictor: Any = None
        # dlib's object_detector is not safe for concurrent calls; the shape predictor is, and
        # it is the one that weighs 100 MB: one detector per thread, one predictor for all.
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        # dlib models, locks and thread-locals do not pickle; the copy reloads on first use.
        return {
            "detect_max_side": self.detect_max_side,
            "upsample": self.upsample,
            "landmarks_path": self.landmarks_path,
            "method": self.method,
            "blazeface": self.blazeface,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def load(self) -> None:
        """Load the landmark model, and BlazeFace when the method uses it, now (otherwise on
        the first ``find``)."""
        if self.blazeface is not None:
            self.blazeface.load()
        with self._lock:
            if self._predictor is not None:
                return
            path = self.landmarks_path or default_landmarks_path()
            if not path.is_file():
                raise FileNotFoundError(f"landmark model not found: {path}")
            self._predictor = dlib.shape_predictor(str(path))

    def _detector(self) -> Any:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = dlib.get_frontal_face_detector()
        return detector

    def find(self, rgb: np.ndarray) -> Face | None:
        """The largest face in an RGB uint8 frame (H x W x 3), or None when there is none."""
        return self.find_near(rgb, None)

    def track(self) -> FaceTrack:
        """A finder for the consecutive frames of one run: BlazeFace looks first where the last
        face was."""
        return FaceTrack(self)

    def find_near(self, rgb: np.ndarray, near: tuple[int, int, int, int] | None) -> Face | None:
        """As ``find``; a BlazeFace search starts around ``near`` (a box in this frame's
        pixels) and prefers the face found there."""
        if self._predictor is None:
            self.load()
        image = np.ascontiguousarray(rgb, dtype=np.uint8)
        box: tuple[int, int, int, int] | None = None
        found_by = ""
        for finder in self.method.split("+"):
            if finder == "hog":
                box, found_by = self._hog_box(image), "hog"
            else:
                box, found_by = self._blazeface_box(image, near), "blazeface"
            if box is not None:
                break
        if box is None:
            return None
        return self._landmarks(image, box, found_by)

    def boxes(self, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Every face in one look at the whole frame (largest first), by the method's first
        finder that sees any: where to start following the other people in view. Faces too
        small for one look at the frame are left to ``find``'s closer search."""
        image = np.ascontiguousarray(rgb, dtype=np.uint8)
        for finder in self.method.split("+"):
            if finder == "hog":
                found = self._hog_boxes(image)
            else:
                assert self.blazeface is not None
                found = [
                    b
                    for d in self.blazeface.detect(image)
                    if (b := _hog_like(d, image.shape)) is not None
                ]
            if found:
                return sorted(found, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
        return []

    def follow(self, rgb: np.ndarray, near: tuple[int, int, int, int]) -> Face | None:
        """The face overlapping ``near`` (the same person's box in the previous frame), looked
        for only around it, or None: unlike ``find_near`` it never answers with another face,
        so following one person cannot jump to the next."""
        if self._predictor is None:
            self.load()
        image = np.ascontiguousarray(rgb, dtype=np.uint8)
        height, width = image.shape[:2]
        left, top, side = _around(near, width, height)
        for finder in self.method.split("+"):
            found: list[tuple[int, int, int, int]]
            if finder == "hog":
                x0, y0 = max(0, left), max(0, top)
                crop = image[y0 : max(y0, top + side), x0 : max(x0, left + side)]
                found = [
                    (b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0)
                    for b in (self._hog_boxes(np.ascontiguousarray(crop)) if crop.size else [])
                ]
            else:
                assert self.blazeface is not None
                found = [
                    b
                    for d in self.blazeface.detect(image, (left, top, side))
                    if (b := _hog_like(d, image.shape)) is not None
                ]
            if found:
                overlap = _iou(np.asarray(near, float), np.array(found, float))
                if overlap.max() > 0:
                    return self._landmarks(image, found[int(overlap.argmax())], finder)
        return None

    def _landmarks(self, image: np.ndarray, box: tuple[int, int, int, int], found_by: str) -> Face:
        shape = self._predictor(image, dlib.rectangle(*box))
        landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.int32)
        return Face(box=box, landmarks=landmarks, found_by=found_by)

    def _hog_boxes(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        height, width = image.shape[:2]
        scale = min(1.0, self.detect_max_side / max(height, width))
        small = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
        found = sorted(
            self._detector()(small, self.upsample), key=lambda r: -r.width() * r.height()
        )
        # Largest first, by the detector's own boxes (before clamping to the frame).
        return [
            (
                max(0, round(r.left() / scale)),
                max(0, round(r.top() / scale)),
                min(width - 1, round(r.right() / scale)),
                min(height - 1, round(r.bottom() / scale)),
            )
            for r in found
        ]

    def _hog_box(self, image: np.ndarray) -> tuple[int, int, int, int] | None:
        boxes = self._hog_boxes(image)
        return boxes[0] if boxes else None

    def _blazeface_box(
        self, image: np.ndarray, near: tuple[int, int, int, int] | None
    ) -> tuple[int, int, int, int] | None:
        assert self.blazeface is not None
        best = self.blazeface.search(image, near)
        return None if best is None else _hog_like(best, image.shape)


def _hog_like(found: Detection, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """The box HOG would draw around a BlazeFace detection, clamped to the frame (None when
    nothing of it is left there)."""
    left, top, right, bottom = found.box
    cx, cy = (left + right) / 2, (top + bottom) / 2
    half = _HOG_SIDE_PER_BLAZEFACE * found.side / 2
    height, width = shape[:2]
    box = (
        max(0, round(cx - half)),
        max(0, round(cy - half)),
        min(width - 1, round(cx + half)),
        min(height - 1, round(cy + half)),
    )
    # A detection can lie wholly past the frame's edge once clamped.
    return box if box[2] > box[0] and box[3] > box[1] else None


class FaceTrack:
    """Faces frame after frame of one run (not shared between threads): each BlazeFace search
    starts around the last face found, which costs one inference while the face stays there
    and keeps following the same person when several are in view."""

    def __init__(self, finder: FaceFinder) -> None:
        self.finder = finder
        self.last: tuple[int, int, int, int] | None = None

    def find(self, rgb: np.ndarray) -> Face | None:
        """The face in the next frame of the run, or None."""
        face = self.finder.find_near(rgb, self.last)
        if face is not None:
            self.last = face.box
        return face
