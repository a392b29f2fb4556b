"""``face-cues-v1``: twelve measured cues of the face over the first frames, weighed by a
logistic regression.

Talking-head generators and face swaps repaint the face, above all the mouth, and drive it with
a model of motion. What that leaves, and what the cues measure over a run of consecutive frames:

- detail: the mouth's sharpness against the eyes' (and its steadiness), the inner face's
  against the whole frame (repainted faces come out softer than their surroundings);
- colour: the gap in chroma and luma between the cheeks and a ring around the face (blending
  seams), and how much the chroma gap wanders;
- motion: landmark jerk (second differences, in inter-ocular units; generated motion is
  smoother than a camera's), jerk relative to speed, and how much the mouth moves against the
  eyes and the inner face (lip-sync models move the mouth alone);
- light: whether the face's brightness follows the background's from frame to frame;
- how many of the frames show a face at all.

Each cue is a number per clip, so the model is a standardisation and one weight per cue: small
enough to train on a few hundred clips, and readable (``details.cues`` reports every cue and
its contribution). The weights file is JSON; its sha256 is the weights id.

For a timeline, the same cues are also measured over windows of the run (``WINDOW_FRAMES``
frames, ``WINDOW_STRIDE`` apart, faces found once per frame) and weighed by the same model and
calibration: one ``frame_scores`` entry per window with three faces or more, at its centre.
The model was trained and calibrated on whole clips' cues, so window scores are indicative
(where in the run the cues look most repainted), not verdicts; the clip's probability and
label come from the whole run alone, exactly as without windows.

Several people in view: the largest face is followed as before, and up to ``max_faces - 1``
others, spotted in a look at the whole frame every ``_SPOT_EVERY`` frames, are each followed
over the run and measured alike. Every face seen in ``min_faces`` frames or more is scored, and
the verdict is the most suspicious one's, with its box and track number (0 is the largest
face). Training and evaluation read the largest face's cues only (the feature cache keeps no
others).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import cv2
import numpy as np
from pydantic import Field, model_validator

from detectors.base import (
    DetectorConfig,
    DetectorResult,
    FrameScore,
    Label,
    SampledFrames,
    describe,
)
from detectors.errors import DetectorError
from detectors.faces import FACE_FINDER_HELP, Face, FaceFinder, FaceFinderName, iou
from detectors.manifest import (
    CalibratedConfig,
    CalibratedDetector,
    ManifestEntry,
    resolve_weights,
)
from detectors.weights import WeightsError, WeightsUnreadable

KEY = "face-cues-v1"
SCHEMA = "drishtiksha.face-cues-weights/1"

CUES = (
    "mouth_eye_sharpness",
    "mouth_eye_sharpness_sd",
    "face_frame_sharpness",
    "chroma_gap",
    "chroma_gap_sd",
    "luma_gap",
    "landmark_jerk",
    "landmark_jerk_ratio",
    "mouth_vs_eye_motion",
    "mouth_vs_inner_motion",
    "light_following",
    "face_fraction",
)

# What each cue measures, in words, for ``explain``.
CUE_WORDS = {
    "mouth_eye_sharpness": "how sharp the mouth is against the eyes",
    "mouth_eye_sharpness_sd": "how much the mouth's sharpness against the eyes' varies",
    "face_frame_sharpness": "how sharp the face is against the rest of the frame",
    "chroma_gap": "the colour difference between the cheeks and the skin around the face",
    "chroma_gap_sd": "how much that colour difference wanders from frame to frame",
    "luma_gap": "the brightness difference between the cheeks and the area around the face",
    "landmark_jerk": "how jerky the face's movement is",
    "landmark_jerk_ratio": "how jerky the face's movement is for its speed",
    "mouth_vs_eye_motion": "how much the mouth moves against the eyes",
    "mouth_vs_inner_motion": "how much the mouth moves against the rest of the face",
    "light_following": "whether the face's brightness follows the background's",
    "face_fraction": "how many of the frames show a face",
}
# The windows the timeline's scores come from: long enough for the motion cues (second
# differences, medians), half overlapping so a change shows in two windows.
WINDOW_FRAMES = 16
WINDOW_STRIDE = 8
# Cues named in an explanation: the strongest few say why; all twelve would say nothing.
_EXPLAINED_CUES = 2

# dlib's 68-point layout.
_EYES = slice(36, 48)
_LEFT_EYE, _RIGHT_EYE = slice(36, 42), slice(42, 48)
_MOUTH = slice(48, 68)
_EPS = 1e-6
# Other people are looked for in the whole frame on every this many frames of the run (its
# first included), so someone who walks in is followed from there.
_SPOT_EVERY = 16
# A face overlapping one already followed this much is that face.
_SAME_FACE_IOU = 0.3


class FaceCuesConfig(CalibratedConfig):
    """Settings of ``face-cues-v1``."""

    run_frames: int = Field(
        48, ge=8, description="Consecutive frames from the start that the cues are measured on."
    )
    min_faces: int = Field(
        8, ge=3, description="Abstain (no_face) when fewer of the run's frames show a face."
    )
    analysis_max_side: int = Field(
        960, ge=128, description="Frames are measured at most this large (longest side)."
    )
    face_detect_max_side: int = Field(
        640, ge=64, description="Longest side of the copy faces are searched on."
    )
    face_upsample: int = Field(
        0, ge=0, le=2, description="dlib upsampling passes; each finds smaller faces, 4x cost."
    )
    face_finder: FaceFinderName = Field("blazeface+hog", description=FACE_FINDER_HELP)
    # Not one of feature_settings: training and evaluation read the largest face alone.
    max_faces: int = Field(
        4,
        ge=1,
        le=8,
        description="People followed and judged apart; the verdict is the most suspicious "
        "one's (1: the largest face only).",
    )

    @model_validator(mode="after")
    def _faces_fit_the_run(self) -> Self:
        if self.min_faces > self.run_frames:
            raise ValueError("min_faces cannot exceed run_frames")
        return self

    def feature_settings(self) -> dict[str, Any]:
        """The settings that shape ``prepare``'s output (the training feature cache keys on
        them)."""
        settings = self.model_dump(
            include={
                "run_frames",
                "min_faces",
                "analysis_max_side",
                "face_detect_max_side",
                "face_upsample",
                "face_finder",
            }
        )
        # HOG alone leaves the settings as they read before there was a choice of finder, so
        # features cached for it stay valid.
        if settings["face_finder"] == "hog":
            del settings["face_finder"]
        return settings


@dataclass(frozen=True)
class FaceCuesInput:
    """One clip's cues, in ``CUES`` order, and the same cues over windows of the run."""

    cues: np.ndarray  # (len(CUES),) float64
    frames_sampled: int
    frames_with_face: int
    # (windows, len(CUES)) and each window's centre in seconds; empty where only the clip's
    # cues were kept (the training feature cache: training and evaluation use no windows).
    window_cues: np.ndarray = field(default_factory=lambda: np.zeros((0, len(CUES))))
    window_times: tuple[float, ...] = ()
    # Where the largest face was first seen: (left, top, right, bottom) as fractions of the
    # frame; None where not kept (the training feature cache).
    box: tuple[float, float, float, float] | None = None
    others: tuple[OtherFace, ...] = ()


@dataclass(frozen=True)
class OtherFace:
    """Another person in view, followed over the run: track number, where first seen (as
    ``FaceCuesInput.box``), cues and frames with this face."""

    track: int
    box: tuple[float, float, float, float]
    cues: np.ndarray
    frames_with_face: int


@dataclass(frozen=True)
class NoFace:
    """Too few faces in the run to measure anything: predict abstains."""

    frames_sampled: int
    frames_with_face: int


@dataclass(frozen=True)
class CueModel:
    """Standardisation and logistic regression over ``CUES``."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def logits(self, cues: np.ndarray) -> np.ndarray:
        """Cues (n, len(CUES)) -> logits (n,)."""
        out: np.ndarray = ((cues - self.mean) / self.scale) @ self.coef + self.intercept
        return out

    def contributions(self, cues: np.ndarray) -> np.ndarray:
        """Each cue's share of one clip's logit (without the intercept)."""
        out: np.ndarray = (cues - self.mean) / self.scale * self.coef
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "cues": list(CUES),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
        }

    @classmethod
    def from_json(cls, doc: Any, source: str) -> CueModel:
        """Parse a weights document; ``WeightsError`` names what is wrong."""
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise WeightsError(f"{source}: not a {KEY} weights file (schema {SCHEMA})")
        if doc.get("cues") != list(CUES):
            raise WeightsError(f"{source}: cues {doc.get('cues')} differ from {list(CUES)}")
        arrays = {}
        for name in ("mean", "scale", "coef"):
            value = np.asarray(doc.get(name), dtype=np.float64)
            if value.shape != (len(CUES),) or not np.isfinite(value).all():
                raise WeightsError(f"{source}: {name} must be {len(CUES)} finite numbers")
            arrays[name] = value
        if (arrays["scale"] <= 0).any():
            raise WeightsError(f"{source}: scale must be positive")
        intercept = doc.get("intercept")
        if not isinstance(intercept, int | float) or not np.isfinite(intercept):
            raise WeightsError(f"{source}: intercept must be a finite number")
        return cls(arrays["mean"], arrays["scale"], arrays["coef"], float(intercept))


def read_weights(path: str | Path) -> tuple[CueModel, str]:
    """A weights file and its sha256."""
    try:
        raw = Path(path).read_bytes()
        doc = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise WeightsUnreadable(f"cannot read {path}: {exc}") from exc
    return CueModel.from_json(doc, str(path)), hashlib.sha256(raw).hexdigest()


def dummy_model(seed: int) -> CueModel:
    """Seeded random weights over unit-scaled cues: for benchmarks and smoke runs only."""
    rng = np.random.default_rng(seed)
    n = len(CUES)
    return CueModel(np.zeros(n), np.ones(n), rng.normal(0.0, 0.5, n), 0.0)


# --- the cues ----------------------------------------------------------------------------------


def _box(points: np.ndarray, pad: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    x0, y0 = points.min(0)
    x1, y1 = points.max(0)
    dx, dy = (x1 - x0) * pad, (y1 - y0) * pad
    return (
        int(max(0, x0 - dx)),
        int(max(0, y0 - dy)),
        int(min(shape[1] - 1, x1 + dx)),
        int(min(shape[0] - 1, y1 + dy)),
    )


def _patch(gray: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> Any:
    left, top, right, bottom = box
    if right - left < 4 or bottom - top < 4:
        return None
    return cv2.resize(gray[top:bottom, left:right], size, interpolation=cv2.INTER_AREA).astype(
        np.float32
    )


def _sharpness(patch: np.ndarray) -> float:
    return float(cv2.Laplacian(patch, cv2.CV_32F).var()) + _EPS


@dataclass(frozen=True)
class _Frame:
    """What one frame with a face contributes."""

    mouth: np.ndarray
    eyes: np.ndarray
    inner: np.ndarray
    landmarks: np.ndarray  # centred, in inter-ocular units
    mouth_eye: float
    face_frame: float
    chroma_gap: float
    luma_gap: float
    face_luma: float
    background_luma: float


def _measure(rgb: np.ndarray, face: Face) -> _Frame | None:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    points = face.landmarks.astype(np.float32)
    mouth = _patch(gray, _box(points[_MOUTH], 0.2, gray.shape), (64, 32))
    eyes = _patch(gray, _box(points[_EYES], 0.2, gray.shape), (96, 24))
    left, top, right, bottom = face.box
    width, height = right - left, bottom - top
    if mouth is None or eyes is None or width < 20 or height < 20:
        return None
    inner_box = (left + width // 6, top + height // 4, right - width // 6, bottom - height // 8)
    inner = _patch(gray, inner_box, (64, 64))
    if inner is None:
        return None
    rows, cols = gray.shape
    frame_small = cv2.resize(
        gray, (128, max(1, round(128 * rows / cols))), interpolation=cv2.INTER_AREA
    ).astype(np.float32)
    outside = np.ones(gray.shape, bool)
    outside[top:bottom, left:right] = False
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    cheeks = lab[top + height // 3 : top + 2 * height // 3, left + width // 4 : right - width // 4]
    ring_box = (
        max(0, left - width // 6),
        max(0, top - height // 6),
        min(cols, right + width // 6),
        min(rows, bottom + height // 6),
    )
    # The ring: inside the face box widened by a sixth on each side, outside the face box.
    ring = outside[ring_box[1] : ring_box[3], ring_box[0] : ring_box[2]]
    ring_pixels = lab[ring_box[1] : ring_box[3], ring_box[0] : ring_box[2]][ring]
    cheek_mean = cheeks.reshape(-1, 3).mean(0)
    ring_mean = ring_pixels.mean(0) if len(ring_pixels) else cheek_mean
    eye_gap = np.linalg.norm(points[_LEFT_EYE].mean(0) - points[_RIGHT_EYE].mean(0)) + _EPS
    return _Frame(
        mouth=mouth,
        eyes=eyes,
        inner=inner,
        landmarks=(points - points.mean(0)) / eye_gap,
        mouth_eye=float(np.log(_sharpness(mouth) / _sharpness(eyes))),
        face_frame=float(np.log(_sharpness(inner) / _sharpness(frame_small))),
        chroma_gap=float(np.linalg.norm(cheek_mean[1:] - ring_mean[1:])),
        luma_gap=float(cheek_mean[0] - ring_mean[0]),
        face_luma=float(inner.mean()),
        background_luma=float(gray[outside].mean()) if outside.any() else float(gray.mean()),
    )


def _motion(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def _following(face: np.ndarray, background: np.ndarray) -> float:
    """Correlation of frame-to-frame brightness changes of face and background (0 if flat)."""
    df, db = np.diff(face), np.diff(background)
    if len(df) < 3 or df.std() < _EPS or db.std() < _EPS:
        return 0.0
    return float(np.corrcoef(df, db)[0, 1])


def measure_frames(
    run: Sequence[np.ndarray], finder: FaceFinder, max_side: int
) -> list[_Frame | None]:
    """What each frame of a run of consecutive RGB frames contributes (None: no usable face)."""
    return measure_faces(run, finder, max_side, 1)[0].measured


@dataclass
class FaceTrackRun:
    """One person's face over a run: what each frame contributes, where it was first seen (as
    ``FaceCuesInput.box``) and the last box found (where to look next)."""

    track: int
    measured: list[_Frame | None] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    last: tuple[int, int, int, int] | None = None

    def add(self, rgb: np.ndarray, face: Face | None) -> None:
        self.measured.append(_measure(rgb, face) if face is not None else None)
        if face is None:
            return  # looked for around the last box again in the next frame
        self.last = face.box
        if self.box is None:
            rows, cols = rgb.shape[:2]
            left, top, right, bottom = face.box
            self.box = (
                round(left / cols, 4),
                round(top / rows, 4),
                round(right / cols, 4),
                round(bottom / rows, 4),
            )


def measure_faces(
    run: Sequence[np.ndarray], finder: FaceFinder, max_side: int, max_faces: int
) -> list[FaceTrackRun]:
    """Each person's face over a run of consecutive RGB frames: the largest face first (as
    ``FaceTrack`` follows it), then up to ``max_faces - 1`` others, each followed from the
    frame it was spotted in (the frames before it are None)."""
    main = finder.track()
    tracks = [FaceTrackRun(0)]
    for index, rgb in enumerate(run):
        rows, cols = rgb.shape[:2]
        scale = min(1.0, max_side / max(rows, cols))
        if scale < 1.0:
            size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        face = main.find(rgb)
        tracks[0].add(rgb, face)
        taken = [face.box] if face is not None else []
        for track in tracks[1:]:
            assert track.last is not None  # every other track starts from a face
            found = finder.follow(rgb, track.last)
            if found is not None and any(iou(found.box, b) > _SAME_FACE_IOU for b in taken):
                found = None  # it ran into a face already followed: not this person here
            track.add(rgb, found)
            if found is not None:
                taken.append(found.box)
        if len(tracks) < max_faces and index % _SPOT_EVERY == 0:
            for box in finder.boxes(rgb):
                if len(tracks) >= max_faces:
                    break
                if any(iou(box, b) > _SAME_FACE_IOU for b in taken):
                    continue
                spotted = finder.follow(rgb, box)
                if spotted is None or any(iou(spotted.box, b) > _SAME_FACE_IOU for b in taken):
                    continue
                track = FaceTrackRun(len(tracks), [None] * index)
                track.add(rgb, spotted)
                tracks.append(track)
                taken.append(spotted.box)
    return tracks


def cues_of(measured: Sequence[_Frame | None]) -> FaceCuesInput | NoFace:
    """The cues (``CUES`` order) of consecutive frames as ``measure_frames`` measured them;
    motion is taken between adjacent frames that both show a face."""
    frames = [m for m in measured if m is not None]
    pairs = [  # mouth, eyes, inner motion of adjacent frames
        (_motion(b.mouth, a.mouth), _motion(b.eyes, a.eyes), _motion(b.inner, a.inner))
        for a, b in itertools.pairwise(measured)
        if a is not None and b is not None
    ]
    if len(frames) < 3:
        return NoFace(len(measured), len(frames))
    marks = np.stack([f.landmarks for f in frames])
    jerk = float(np.median(np.abs(marks[2:] - 2 * marks[1:-1] + marks[:-2]).mean(axis=(1, 2))))
    speed = float(np.median(np.abs(marks[1:] - marks[:-1]).mean(axis=(1, 2))))
    motion = np.array(pairs) if pairs else np.zeros((1, 3))
    mouth_m, eye_m, inner_m = (float(np.median(motion[:, i])) for i in range(3))
    mouth_eye = np.array([f.mouth_eye for f in frames])
    chroma = np.array([f.chroma_gap for f in frames])
    cues = np.array(
        [
            float(np.median(mouth_eye)),
            float(mouth_eye.std()),
            float(np.median([f.face_frame for f in frames])),
            float(np.median(chroma)),
            float(chroma.std()),
            float(np.median([f.luma_gap for f in frames])),
            jerk,
            jerk / (speed + _EPS),
            float(np.log((mouth_m + 1e-3) / (eye_m + 1e-3))),
            float(np.log((mouth_m + 1e-3) / (inner_m + 1e-3))),
            _following(
                np.array([f.face_luma for f in frames]),
                np.array([f.background_luma for f in frames]),
            ),
            len(frames) / len(measured),
        ]
    )
    return FaceCuesInput(cues, len(measured), len(frames))


def window_starts(count: int) -> list[int]:
    """First frames of the ``WINDOW_FRAMES``-long windows, ``WINDOW_STRIDE`` apart, over a run
    of ``count`` frames; a last window ends with the run, so no frame is left out; a run
    shorter than a window is one window."""
    if count <= WINDOW_FRAMES:
        return [0]
    starts = list(range(0, count - WINDOW_FRAMES + 1, WINDOW_STRIDE))
    if starts[-1] + WINDOW_FRAMES < count:
        starts.append(count - WINDOW_FRAMES)
    return starts


def window_cues(
    measured: Sequence[_Frame | None], timestamps: Sequence[float]
) -> tuple[np.ndarray, tuple[float, ...]]:
    """The cues of each window with enough faces (n, len(CUES)) and the time of its centre
    (midway between its first and last frame)."""
    rows: list[np.ndarray] = []
    times: list[float] = []
    for start in window_starts(len(measured)):
        end = min(start + WINDOW_FRAMES, len(measured))
        found = cues_of(measured[start:end])
        if isinstance(found, FaceCuesInput):
            rows.append(found.cues)
            times.append((timestamps[start] + timestamps[end - 1]) / 2)
    cues = np.stack(rows) if rows else np.zeros((0, len(CUES)))
    return cues, tuple(times)


# --- the detector ------------------------------------------------------------------------------


class FaceCuesDetector(CalibratedDetector[FaceCuesConfig]):
    """Twelve face cues over the first frames, scored by a logistic regression."""

    key: ClassVar[str] = KEY
    version: ClassVar[str] = "1.0.0"
    config_class: ClassVar[type[DetectorConfig]] = FaceCuesConfig
    trainer: ClassVar[str | None] = "detectors.cue_training:FaceCuesTrainer"

    def __init__(self, config: FaceCuesConfig) -> None:
        super().__init__(config)
        self._faces = FaceFinder(
            config.face_detect_max_side, config.face_upsample, method=config.face_finder
        )
        self._model: CueModel | None = None

    @property
    def num_frames(self) -> int:
        """None of the evenly spaced sample: the cues use the run."""
        return 0

    @property
    def run_frames(self) -> int:
        """Consecutive frames wanted from the start."""
        return self.config.run_frames

    def check_checkpoint(self, path: str | Path) -> str:
        """Parse and check a weights file; returns its sha256."""
        return read_weights(path)[1]

    def setup(self, device: str) -> None:
        """Load the weights (or seeded dummies) and their operating point; the regression runs
        on the CPU whatever ``device`` says (twelve multiplications per clip)."""
        cfg = self.config
        entry: ManifestEntry | None = None
        if cfg.weights == "dummy":
            model, weights_id = dummy_model(cfg.seed), "dummy"
        else:
            loaded: list[CueModel] = []

            def load(path: Path) -> str:
                model, sha256 = read_weights(path)
                loaded.append(model)
                return sha256

            weights_id, entry = resolve_weights(KEY, cfg.weights, cfg.manifest, load)
            model = loaded[0]
        self.use_operating_point(entry)
        self._model = model
        self._weights_id = weights_id
        self._faces.load()

    def prepare(self, frames: SampledFrames) -> FaceCuesInput | NoFace:
        """The cues of the run and of its windows, and of each other face followed over the
        run (faces found once per frame, on the CPU)."""
        cfg = self.config
        main, *rest = measure_faces(frames.run, self._faces, cfg.analysis_max_side, cfg.max_faces)
        found = cues_of(main.measured)
        if isinstance(found, NoFace):
            return found
        if found.frames_with_face < cfg.min_faces:
            return NoFace(found.frames_sampled, found.frames_with_face)
        windows, times = window_cues(main.measured, frames.run_timestamps)
        others = tuple(
            OtherFace(track.track, track.box, cues.cues, cues.frames_with_face)
            for track in rest
            if track.box is not None
            and isinstance(cues := cues_of(track.measured), FaceCuesInput)
            and cues.frames_with_face >= cfg.min_faces
        )
        return dataclasses.replace(
            found, window_cues=windows, window_times=times, box=main.box, others=others
        )

    def raw_probabilities(self, cues: np.ndarray) -> np.ndarray:
        """Uncalibrated fake probabilities of cues (n, len(CUES))."""
        if self._model is None:
            raise RuntimeError("setup() has not run")
        out: np.ndarray = 1.0 / (1.0 + np.exp(-self._model.logits(cues)))
        return out

    def predict(self, batch: Sequence[Any]) -> list[DetectorResult | DetectorError]:
        """One matrix product for the batch; a malformed input fails alone."""
        if self._model is None:
            raise RuntimeError("setup() has not run")
        results: dict[int, DetectorResult | DetectorError] = {}
        rows: list[tuple[int, FaceCuesInput]] = []
        for i, item in enumerate(batch):
            if isinstance(item, NoFace):
                results[i] = self._abstain(item)
            elif (
                isinstance(item, FaceCuesInput)
                and item.cues.shape == (len(CUES),)
                and np.isfinite(item.cues).all()
                and item.window_cues.shape == (len(item.window_times), len(CUES))
                and np.isfinite(item.window_cues).all()
                and all(
                    o.cues.shape == (len(CUES),) and np.isfinite(o.cues).all() for o in item.others
                )
            ):
                rows.append((i, item))
            else:
                results[i] = DetectorError(f"{KEY}: bad prepared input {type(item).__name__}")
        if rows:
            # Every face and window of the batch in one product each; each clip takes back
            # its own.
            faces = self.raw_probabilities(
                np.stack(
                    [c for _, item in rows for c in (item.cues, *(o.cues for o in item.others))]
                )
            )
            windows = self.raw_probabilities(np.concatenate([item.window_cues for _, item in rows]))
            face_ends = np.cumsum([1 + len(item.others) for _, item in rows])
            window_ends = np.cumsum([len(item.window_times) for _, item in rows])
            for (i, item), raw, own in zip(
                rows,
                np.split(faces, face_ends[:-1]),
                np.split(windows, window_ends[:-1]),
                strict=True,
            ):
                results[i] = self._verdict(item, raw, own)
        return [results[i] for i in range(len(batch))]

    def _verdict(self, item: FaceCuesInput, raw: np.ndarray, windows: np.ndarray) -> DetectorResult:
        """The most suspicious face's verdict (``raw``: the largest face's raw probability,
        then each other face's)."""
        assert self._model is not None
        op = self._operating
        faces = [(0, item.box, item.cues, item.frames_with_face)] + [
            (o.track, o.box, o.cues, o.frames_with_face) for o in item.others
        ]
        judged = int(np.argmax(raw))
        track, box, cues, frames_with_face = faces[judged]
        probability = op.probability(float(raw[judged]))
        shares = self._model.contributions(cues)
        details: dict[str, Any] = {
            "weights": self.weights_id,
            "raw_probability": float(raw[judged]),
            "operating_point": op.describe(),
            "frames": item.frames_sampled,
            "frames_with_face": frames_with_face,
            "face": {"track": track, "box": list(box) if box else None, "faces_judged": len(faces)},
            "cues": {
                name: {"value": round(float(v), 5), "logit_share": round(float(s), 4)}
                for name, v, s in zip(CUES, cues, shares, strict=True)
            },
        }
        if len(faces) > 1:
            details["faces"] = [
                {
                    "track": t,
                    "box": list(b) if b else None,
                    "frames_with_face": n,
                    "fake_probability": round(op.probability(float(r)), 4),
                }
                for (t, b, _, n), r in zip(faces, raw, strict=True)
            ]
        return DetectorResult(
            label=op.label(probability),
            fake_probability=probability,
            threshold=op.threshold,
            # The timeline follows the largest face (track 0).
            frame_scores=[
                FrameScore(t, op.probability(float(w)))
                for t, w in zip(item.window_times, windows, strict=True)
            ],
            details=details,
        )

    @classmethod
    def explain(cls, result: DetectorResult) -> str:
        """The cues that pushed hardest towards the label, and how well the weights ranked
        clips they never saw."""
        details = result.details
        if result.label is Label.ABSTAIN:
            if details.get("reason") == "no_face":
                return (
                    f"{KEY} found a face in {details.get('frames_with_face', 0)} of the first "
                    f"{details.get('frames', 0)} frames, too few to judge."
                )
            return describe(KEY, result)
        shares = {
            name: float(cue["logit_share"])
            for name, cue in (details.get("cues") or {}).items()
            if name in CUE_WORDS
        }
        towards_real = result.label is Label.REAL
        strongest = sorted(shares, key=lambda n: shares[n], reverse=not towards_real)
        pushing = [n for n in strongest if (shares[n] < 0) == towards_real and shares[n] != 0]
        words = [CUE_WORDS[n] for n in pushing[:_EXPLAINED_CUES]]
        sentence = describe(KEY, result)
        face = details.get("face") or {}
        if int(face.get("faces_judged") or 1) > 1:
            sentence += (
                f" {face['faces_judged']} faces were judged apart; this is the most suspicious, "
                + ("the largest." if face.get("track") == 0 else f"face {face.get('track')}.")
            )
        if words:
            side = "real" if towards_real else "fake"
            sentence += f" What weighed most towards {side}: {' and '.join(words)}."
        held = (details.get("operating_point") or {}).get("held_out")
        if held:
            auc = float(held["roc_auc"])
            sentence += (
                f" On {held['clips']} clips it never saw, it ranked a fake above a real about "
                f"{round(auc * 10)} times in 10 (ROC AUC {auc:.2f}): a hint, not proof."
            )
        return sentence

    def _abstain(self, item: NoFace) -> DetectorResult:
        return DetectorResult(
            label=Label.ABSTAIN,
            fake_probability=None,
            threshold=self._operating.threshold,
            details={
                "reason": "no_face",
                "weights": self.weights_id,
                "frames": item.frames_sampled,
                "frames_with_face": item.frames_with_face,
                "min_faces": self.config.min_faces,
            },
        )
