"""Color cues + LSTM: the face's (r, g) chromaticity histogram over time, scored by an LSTM.

Face swaps blend a generated face into a real frame; the blend tends to leave colour statistics
that drift from frame to frame differently from a camera's. The network and the features follow
the seed project's layout exactly, so its checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from detectors.base import (
    DetectorConfig,
    DetectorResult,
    FrameScore,
    Label,
    SampledFrames,
)
from detectors.errors import DetectorError
from detectors.faces import FACE_FINDER_HELP, Face, FaceFinder, FaceFinderName
from detectors.manifest import (
    CalibratedConfig,
    CalibratedDetector,
    ManifestEntry,
    resolve_weights,
)
from detectors.weights import load_checked

if TYPE_CHECKING:
    # torch loads with the network, at setup: listing and configuring detectors stays quick.
    import torch

    from detectors.color_cues_net import ColorCuesNet

KEY = "color-cues-lstm-v1"


class ColorCuesConfig(CalibratedConfig):
    """Settings of ``color-cues-lstm-v1``."""

    num_frames: int = Field(64, ge=1, description="Evenly spaced frames taken from the video.")
    sequence_length: int = Field(32, ge=1, description="Histograms per LSTM window.")
    window_stride: int = Field(16, ge=1, description="Step between consecutive windows.")
    min_face_fraction: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Abstain (no_face) when fewer than this share of sampled frames show a face.",
    )
    histogram_bins: int = Field(32, ge=2, description="Bins per chromaticity axis (r and g).")
    margin: int = Field(20, ge=0, description="Pixels added around the landmarks' box.")
    hidden_size: int = Field(64, ge=1, description="LSTM hidden units.")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout (training only).")
    face_detect_max_side: int = Field(
        640, ge=64, description="Longest side of the copy faces are searched on."
    )
    face_upsample: int = Field(
        0, ge=0, le=2, description="dlib upsampling passes; each finds smaller faces, 4x cost."
    )
    # HOG by default: the shipped weights' operating point was measured on HOG's faces.
    face_finder: FaceFinderName = Field("hog", description=FACE_FINDER_HELP)

    def feature_settings(self) -> dict[str, Any]:
        """The settings that shape ``prepare``'s output: features computed under equal settings
        are interchangeable (the training feature cache keys on them)."""
        settings = self.model_dump(
            exclude={"weights", "threshold", "seed", "hidden_size", "dropout"}
            | {"uncertain_band", "manifest"}
        )
        # HOG alone leaves the settings as they read before there was a choice of finder, so
        # features cached for it stay valid.
        if settings["face_finder"] == "hog":
            del settings["face_finder"]
        return settings


@dataclass(frozen=True)
class ColorCuesInput:
    """Prepared video: one histogram per frame with a face, and the windows over them."""

    histograms: np.ndarray  # (faces, bins * bins) float32, in time order
    timestamps: tuple[float, ...]  # one per histogram
    window_starts: tuple[int, ...]  # index of each window's first histogram
    frames_sampled: int


@dataclass(frozen=True)
class NoFace:
    """Prepared video with too few faces to judge: predict abstains."""

    frames_sampled: int
    frames_with_face: int


def chromaticity_histogram(rgb: np.ndarray, bins: int) -> np.ndarray:
    """Raw 2-D histogram of r = R/(R+G+B) (rows) and g = G/(R+G+B) (columns) over [0, 1]."""
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    # As the seed: a tiny offset per channel, so black pixels count as neutral (1/3, 1/3)
    # instead of dividing by zero.
    pixels += 1e-6
    total = pixels.sum(axis=1)
    r = pixels[:, 0] / total
    g = pixels[:, 1] / total
    hist: np.ndarray = np.histogram2d(r, g, bins=bins, range=[[0.0, 1.0], [0.0, 1.0]])[0]
    return hist


def face_histogram(rgb: np.ndarray, face: Face, bins: int, margin: int) -> np.ndarray | None:
    """The seed's per-frame feature: histogram of the landmarks' box plus ``margin``, scaled so
    its largest bin is 255, flattened; None when the crop is empty."""
    height, width = rgb.shape[:2]
    x0, y0 = face.landmarks.min(axis=0) - margin
    x1, y1 = face.landmarks.max(axis=0) + margin
    crop = rgb[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)]
    if crop.size == 0:
        return None
    hist = chromaticity_histogram(crop, bins)
    # The seed used min-max scaling to 0-255; bins with r + g > 1 are always empty, so the
    # minimum is 0 and that equals dividing by the maximum.
    scaled: np.ndarray = (hist * (255.0 / hist.max())).astype(np.float32).ravel()
    return scaled


def window_starts(count: int, length: int, stride: int) -> tuple[int, ...]:
    """First index of each window of ``length`` over ``count`` items, the last flush with the
    end so no item is left out; a single window when ``count < length``."""
    if count <= length:
        return (0,)
    starts = list(range(0, count - length + 1, stride))
    if starts[-1] != count - length:
        starts.append(count - length)
    return tuple(starts)


def video_windows(histograms: np.ndarray, starts: Sequence[int], length: int) -> list[np.ndarray]:
    """Windows of ``length`` histograms beginning at ``starts``; a video with fewer histograms
    gets one window padded with its last histogram."""
    hists = histograms.astype(np.float32, copy=False)
    if hists.shape[0] < length:
        # A short video still gets a verdict: the LSTM takes fixed-length windows, and
        # holding the last face still is the least invented filler (no zeros or black
        # frames the network never saw in training).
        padding = np.repeat(hists[-1:], length - hists.shape[0], axis=0)
        return [np.concatenate([hists, padding])]
    return [hists[s : s + length] for s in starts]


class ColorCuesDetector(CalibratedDetector[ColorCuesConfig]):
    """Per-frame face chromaticity histograms, scored in sliding windows by an LSTM."""

    key: ClassVar[str] = KEY
    version: ClassVar[str] = "1.0.0"
    config_class: ClassVar[type[DetectorConfig]] = ColorCuesConfig
    trainer: ClassVar[str | None] = "detectors.training:ColorCuesTrainer"

    def __init__(self, config: ColorCuesConfig) -> None:
        super().__init__(config)
        self._faces = FaceFinder(
            config.face_detect_max_side, config.face_upsample, method=config.face_finder
        )
        self._model: ColorCuesNet | None = None
        self._device: torch.device | None = None

    @property
    def num_frames(self) -> int:
        """Frames wanted from the shared decode."""
        return self.config.num_frames

    @property
    def input_size(self) -> int:
        """Histogram length: bins squared."""
        return self.config.histogram_bins**2

    def check_checkpoint(self, path: str | Path) -> str:
        """Check a checkpoint's keys and shapes against the configured network on the CPU;
        returns its sha256."""
        from detectors.color_cues_net import ColorCuesNet

        cfg = self.config
        return load_checked(ColorCuesNet(self.input_size, cfg.hidden_size, cfg.dropout), path)

    def setup(self, device: str) -> None:
        """Build the network, load its weights (or seeded dummies) and their operating point from
        the weights manifest, move it to ``device``."""
        import torch

        from detectors.color_cues_net import ColorCuesNet

        cfg = self.config
        entry: ManifestEntry | None = None
        if cfg.weights == "dummy":
            # Seeded in a forked RNG so that building a detector leaves torch's global RNG alone.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = ColorCuesNet(self.input_size, cfg.hidden_size, cfg.dropout)
            weights_id = "dummy"
        else:
            model = ColorCuesNet(self.input_size, cfg.hidden_size, cfg.dropout)
            weights_id, entry = self._load(model)
        self.use_operating_point(entry)
        self._device = torch.device(device)
        self._model = model.to(self._device).eval()
        self._weights_id = weights_id
        # The 100 MB landmark model: load it now so a missing file fails at start-up.
        self._faces.load()

    def _load(self, model: ColorCuesNet) -> tuple[str, ManifestEntry | None]:
        """Load the configured checkpoint; returns its sha256 and its manifest entry, if any."""
        cfg = self.config
        return resolve_weights(KEY, cfg.weights, cfg.manifest, lambda p: load_checked(model, p))

    def prepare(self, frames: SampledFrames) -> ColorCuesInput | NoFace:
        """Face histograms of the sampled frames (frames without a face are skipped)."""
        cfg = self.config
        histograms: list[np.ndarray] = []
        timestamps: list[float] = []
        for image, t in zip(frames.frames, frames.timestamps, strict=True):
            face = self._faces.find(image)
            if face is None:
                continue
            hist = face_histogram(image, face, cfg.histogram_bins, cfg.margin)
            if hist is not None:
                histograms.append(hist)
                timestamps.append(t)
        sampled = len(frames.frames)
        if not histograms or len(histograms) < cfg.min_face_fraction * sampled:
            return NoFace(frames_sampled=sampled, frames_with_face=len(histograms))
        return ColorCuesInput(
            histograms=np.stack(histograms),
            timestamps=tuple(timestamps),
            window_starts=window_starts(len(histograms), cfg.sequence_length, cfg.window_stride),
            frames_sampled=sampled,
        )

    def predict(self, batch: Sequence[Any]) -> list[DetectorResult | DetectorError]:
        """All windows of all videos in one LSTM pass; a video scores the mean of its windows.

        A malformed input fails alone; a device out-of-memory error propagates, so the caller
        can split the batch.
        """
        if self._model is None:
            raise RuntimeError("setup() has not run")
        results: dict[int, DetectorResult | DetectorError] = {}
        windows: list[np.ndarray] = []
        owners: list[tuple[int, ColorCuesInput, int, int]] = []  # (index, item, first, count)
        for i, item in enumerate(batch):
            if isinstance(item, NoFace):
                results[i] = self._abstain(item)
                continue
            problem = self._invalid(item)
            if problem is not None:
                results[i] = DetectorError(f"{KEY}: bad prepared input: {problem}")
                continue
            item_windows = self.windows(item)
            owners.append((i, item, len(windows), len(item_windows)))
            windows.extend(item_windows)
        if windows:
            scores = self.window_scores(np.stack(windows))
            for i, item, first, count in owners:
                results[i] = self._verdict(item, scores[first : first + count])
        return [results[i] for i in range(len(batch))]

    def _invalid(self, item: Any) -> str | None:
        """Why ``item`` cannot go into the batch, or None; checked before anything is stacked."""
        if not isinstance(item, ColorCuesInput):
            return f"expected ColorCuesInput, got {type(item).__name__}"
        hists = item.histograms
        if not isinstance(hists, np.ndarray) or hists.ndim != 2 or hists.shape[0] == 0:
            return "histograms must be a non-empty 2-D array"
        if hists.shape[1] != self.input_size:
            return f"histograms have {hists.shape[1]} bins, expected {self.input_size}"
        if not np.issubdtype(hists.dtype, np.floating) or not np.isfinite(hists).all():
            return "histograms must be finite floats"
        if len(item.timestamps) != hists.shape[0]:
            return f"{len(item.timestamps)} timestamps for {hists.shape[0]} histograms"
        limit = max(0, hists.shape[0] - self.config.sequence_length)
        if not item.window_starts or any(not 0 <= s <= limit for s in item.window_starts):
            return "window starts out of range"
        return None

    def windows(self, item: ColorCuesInput) -> list[np.ndarray]:
        """The fixed-length LSTM windows of a prepared video, as ``predict`` scores them."""
        return video_windows(item.histograms, item.window_starts, self.config.sequence_length)

    def window_scores(self, windows: np.ndarray) -> np.ndarray:
        """The network's uncalibrated fake probability for each window (n, steps, features)."""
        if self._model is None:
            raise RuntimeError("setup() has not run")
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(windows).to(self._device)
            probs = torch.sigmoid(self._model(x))
        result: np.ndarray = probs.float().cpu().numpy()
        return result

    def _verdict(self, item: ColorCuesInput, scores: np.ndarray) -> DetectorResult:
        cfg = self.config
        op = self._operating
        raw = float(scores.mean())
        probability = op.probability(raw)
        count = item.histograms.shape[0]
        # Each frame scores the mean of the windows that cover it.
        total = np.zeros(count)
        covering = np.zeros(count)
        for start, score in zip(item.window_starts, scores, strict=True):
            total[start : start + cfg.sequence_length] += score
            covering[start : start + cfg.sequence_length] += 1
        frame_scores = [
            FrameScore(timestamp=t, fake_probability=op.probability(float(s / c)))
            for t, s, c in zip(item.timestamps, total, covering, strict=True)
        ]
        return DetectorResult(
            label=op.label(probability),
            fake_probability=probability,
            threshold=op.threshold,
            frame_scores=frame_scores,
            details={
                "weights": self.weights_id,
                "raw_probability": raw,
                "operating_point": op.describe(),
                "frames_sampled": item.frames_sampled,
                "frames_with_face": count,
                "windows": len(scores),
                "window_scores": [float(s) for s in scores],
            },
        )

    def _abstain(self, item: NoFace) -> DetectorResult:
        return DetectorResult(
            label=Label.ABSTAIN,
            fake_probability=None,
            threshold=self._operating.threshold,
            details={
                "reason": "no_face",
                "weights": self.weights_id,
                "frames_sampled": item.frames_sampled,
                "frames_with_face": item.frames_with_face,
                "min_face_fraction": self.config.min_face_fraction,
            },
        )
