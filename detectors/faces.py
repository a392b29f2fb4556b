"""Find the main face in a frame: dlib HOG detection on a downscaled copy, 68 landmarks on the
full frame."""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import dlib
import numpy as np

_LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"


@dataclass(frozen=True)
class Face:
    """One face in full-frame pixels: its box (left, top, right, bottom) and 68 (x, y) points."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray


def default_landmarks_path() -> Path:
    """The 68-landmark model shipped by the ``face-recognition-models`` package."""
    # Its __init__ imports pkg_resources, which new setuptools no longer ship: find the files
    # without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the face-recognition-models package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / _LANDMARKS_FILE


class FaceFinder:
    """dlib's frontal HOG detector plus its 68-landmark predictor, loaded on first use.

    HOG cost grows with the pixel count (about 80 fps at 640x360 but 9 fps at 1080p on one
    core), so faces are searched for on a copy whose longest side is ``detect_max_side`` and the
    boxes mapped back. The finder may be shared by threads (dlib releases the GIL) and pickled
    (the models are reloaded on the other side).
    """

    def __init__(
        self,
        detect_max_side: int = 640,
        upsample: int = 0,
        landmarks_path: Path | None = None,
    ) -> None:
        self.detect_max_side = detect_max_side
        self.upsample = upsample
        self.landmarks_path = landmarks_path
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
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def load(self) -> None:
        """Load the landmark model now (otherwise on the first ``find``)."""
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
        if self._predictor is None:
            self.load()
        image = np.ascontiguousarray(rgb, dtype=np.uint8)
        height, width = image.shape[:2]
        scale = min(1.0, self.detect_max_side / max(height, width))
        small = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
        boxes = self._detector()(small, self.upsample)
        if len(boxes) == 0:
            return None
        best = max(boxes, key=lambda r: r.width() * r.height())
        left = max(0, round(best.left() / scale))
        top = max(0, round(best.top() / scale))
        right = min(width - 1, round(best.right() / scale))
        bottom = min(height - 1, round(best.bottom() / scale))
        shape = self._predictor(image, dlib.rectangle(left, top, right, bottom))
        landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.int32)
        return Face(box=(left, top, right, bottom), landmarks=landmarks)
