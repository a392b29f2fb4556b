"""The detector contract: every detector is a small class behind this interface.

A detector never touches the database, nor the filesystem beyond its own weights and the video
it is judging (``SampledFrames.path``: file-level signals such as content credentials read it).
The worker decodes each video once (``detectors.frames``), hands the shared ``SampledFrames`` to
every detector's CPU-side ``prepare`` and gathers prepared inputs from many videos into one
``predict``.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from detectors.errors import DetectorError


class Label(enum.StrEnum):
    REAL = "REAL"
    FAKE = "FAKE"
    UNCERTAIN = "UNCERTAIN"
    ABSTAIN = "ABSTAIN"


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video (filled in by the decoder)."""

    container: str
    codec: str
    width: int
    height: int
    fps: float
    duration_s: float


@dataclass
class SampledFrames:
    """Frames sampled evenly in time from one sequential decode; RGB uint8, H x W x 3."""

    info: VideoInfo
    frames: list[np.ndarray]
    timestamps: list[float]
    path: Path | None = None  # the file decoded, for detectors that read the container itself
    # The first frames of the video, consecutive, for detectors that measure motion between
    # frames (``Detector.run_frames``); RGB uint8 like ``frames``.
    run: list[np.ndarray] = field(default_factory=list)
    run_timestamps: list[float] = field(default_factory=list)  # seconds, one per ``run`` frame

    def subset(self, n: int) -> SampledFrames:
        """``n`` frames spread evenly over this sample (all of them when it holds fewer)."""
        if n >= len(self.frames):
            return self
        idx = np.linspace(0, len(self.frames) - 1, n).round().astype(int)
        return SampledFrames(
            self.info,
            [self.frames[i] for i in idx],
            [self.timestamps[i] for i in idx],
            self.path,
            self.run,
            self.run_timestamps,
        )


@dataclass(frozen=True)
class FrameScore:
    timestamp: float
    fake_probability: float


@dataclass
class DetectorResult:
    """One detector's verdict on one video."""

    label: Label
    fake_probability: float | None
    threshold: float
    frame_scores: list[FrameScore] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class DetectorConfig(BaseModel):
    """The base of every detector's settings: unknown keys are errors, settings never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkConfig(DetectorConfig):
    """Settings every detector built on a trained network accepts; each extends it."""

    weights: str = Field(
        "dummy",
        description="Path to a checkpoint file, or 'dummy' for seeded random weights "
        "(benchmarks and smoke runs only; every verdict then says weights: dummy).",
    )
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Fake probability at or above which the verdict is FAKE."
    )
    seed: int = Field(0, description="Seed for the dummy weights.")


ConfigT = TypeVar("ConfigT", bound=DetectorConfig)


class Detector(ABC, Generic[ConfigT]):
    """One detector. ``setup`` loads weights; ``prepare`` runs on CPU in a pool, one video at a
    time; ``predict`` runs on the device over a batch and returns one entry per input."""

    key: ClassVar[str]
    version: ClassVar[str]
    config_class: ClassVar[type[DetectorConfig]]
    # ABSTAIN reasons that are facts about the bytes (same file, version and weights: same
    # answer), so a stored one may be reused like a verdict; errors never are.
    final_abstentions: ClassVar[frozenset[str]] = frozenset()
    # "module:Class" of the ``detectors.training.Trainer`` that trains it (None: it cannot be
    # trained), imported only by the commands that train.
    trainer: ClassVar[str | None] = None

    def __init__(self, config: ConfigT) -> None:
        self.config = config
        self._weights_id: str | None = None  # set by ``setup``

    @property
    @abstractmethod
    def num_frames(self) -> int:
        """How many evenly spaced frames this detector wants from the shared decode."""

    @property
    def run_frames(self) -> int:
        """How many consecutive frames from the start this detector wants (``SampledFrames.run``);
        most want none."""
        return 0

    @property
    def weights_id(self) -> str:
        """What identifies the loaded weights (a file's sha256, or ``dummy``), set by ``setup``;
        stored with every result and part of the stored-result cache key."""
        if self._weights_id is None:
            raise RuntimeError("setup() has not run")
        return self._weights_id

    @property
    @abstractmethod
    def threshold(self) -> float:
        """The fake probability at or above which this detector says FAKE (after ``setup``,
        weights may bring their own calibrated threshold)."""

    @abstractmethod
    def check_checkpoint(self, path: str | Path) -> str:
        """Check a checkpoint against the configured network on the CPU, without ``setup``:
        raise ``WeightsError`` naming every missing, unexpected or wrongly shaped key; return
        the file's sha256."""

    @abstractmethod
    def setup(self, device: str) -> None:
        """Load weights onto ``device`` ('cpu', 'cuda', 'cuda:1')."""

    @abstractmethod
    def prepare(self, frames: SampledFrames) -> Any:
        """CPU-side work for one video (faces, crops, features). May raise DetectorError."""

    @abstractmethod
    def predict(self, batch: Sequence[Any]) -> list[DetectorResult | DetectorError]:
        """Batched inference: exactly one result or error per prepared input, in order."""

    @classmethod
    def explain(cls, result: DetectorResult) -> str:
        """What ``result`` means in plain words, for a person who never reads its details.
        A class method: a stored result is explained without loading any weights. Detectors
        whose details say why override it."""
        return describe(cls.key, result)


def describe(key: str, result: DetectorResult) -> str:
    """The plain-words reading of any detector's result: its label, probability and
    threshold, or why it could not judge."""
    if result.label is Label.ABSTAIN or result.fake_probability is None:
        why = result.details.get("message") or str(result.details.get("reason", "no reason given"))
        return f"{key} could not judge this clip ({why.replace('_', ' ')})."
    chance = f"{key} puts the chance that it is manipulated at {result.fake_probability:.0%}"
    if result.label is Label.UNCERTAIN:
        return f"{chance}, too close to its threshold ({result.threshold:.0%}) to call."
    side = "at or above" if result.label is Label.FAKE else "below"
    return f"{chance}, {side} the {result.threshold:.0%} from which it calls a clip fake."
