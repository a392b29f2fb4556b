"""Decode each video once, share its frames among detectors, and run detectors over batches."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from detectors.base import Detector, DetectorResult, VideoInfo
from detectors.errors import DetectorError, DeviceOutOfMemory
from detectors.frames import DecodeLimits, decode_sampled

log = logging.getLogger(__name__)

Outcome = DetectorResult | DetectorError


def _torch_if_loaded() -> ModuleType | None:
    """torch when some detector has imported it. Without it no device memory can run out, and
    importing it only to ask would cost seconds."""
    return sys.modules.get("torch")


class InternalDetectorError(DetectorError):
    """The detector raised an unexpected exception on this video."""

    code = "internal_error"


@dataclass
class PreparedVideo:
    """One video after the CPU stage: the inputs each detector asked for."""

    path: Path
    info: VideoInfo
    inputs: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, DetectorError] = field(default_factory=dict)
    decode_s: float = 0.0
    prepare_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Predicted:
    """Outcome and time share of every detector for one video of a batch."""

    outcomes: dict[str, Outcome]
    elapsed_s: dict[str, float]


class Pipeline:
    """The detectors the process loaded, and the one way every entry point runs them."""

    def __init__(
        self, detectors: Mapping[str, Detector[Any]], limits: DecodeLimits, max_side: int
    ) -> None:
        self.detectors = dict(detectors)
        self.limits = limits
        self.max_side = max_side

    def prepare(self, path: Path, keys: Sequence[str]) -> PreparedVideo:
        """Decode once with as many frames as the most demanding detector wants, then run each
        detector's CPU preparation on its share. A MediaError means the video itself is bad;
        a detector's own permanent error is kept per detector."""
        wanted = [self.detectors[k] for k in keys]
        start = time.perf_counter()
        frames = decode_sampled(
            path,
            max(d.num_frames for d in wanted),
            self.limits,
            self.max_side,
            max(d.run_frames for d in wanted),
        )
        prepared = PreparedVideo(path, frames.info, decode_s=time.perf_counter() - start)
        for key, det in zip(keys, wanted, strict=True):
            start = time.perf_counter()
            try:
                prepared.inputs[key] = det.prepare(frames.subset(det.num_frames))
            except DetectorError as exc:
                if exc.retryable:
                    raise
                prepared.errors[key] = exc
            prepared.prepare_s[key] = time.perf_counter() - start
        return prepared

    def predict(self, videos: Sequence[PreparedVideo]) -> list[Predicted]:
        """Run every detector once over all videos that have an input for it."""
        out = [Predicted(dict(v.errors), {}) for v in videos]
        for key, det in self.detectors.items():
            members = [i for i, v in enumerate(videos) if key in v.inputs]
            if not members:
                continue
            start = time.perf_counter()
            results = self._predict_isolated(det, [videos[i].inputs[key] for i in members])
            share = (time.perf_counter() - start) / len(members)
            for i, result in zip(members, results, strict=True):
                out[i].outcomes[key] = result
                out[i].elapsed_s[key] = videos[i].prepare_s.get(key, 0.0) + share
        return out

    def _predict_isolated(self, det: Detector[Any], inputs: list[Any]) -> list[Outcome]:
        """``det.predict`` with the batch split on device OOM and on unexpected errors, so one
        poisoned input fails alone and a batch too big for the device still runs."""
        try:
            results = det.predict(inputs)
            if len(results) != len(inputs):
                raise RuntimeError(
                    f"{det.key} returned {len(results)} results for {len(inputs)} inputs"
                )
            return results
        except Exception as exc:
            torch = _torch_if_loaded()
            if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
                if len(inputs) == 1:
                    return [DeviceOutOfMemory(f"{det.key}: out of device memory on one video")]
                torch.cuda.empty_cache()
                log.warning(
                    "%s: device out of memory on %d videos; splitting", det.key, len(inputs)
                )
            elif len(inputs) == 1:
                log.exception("%s failed on one video", det.key)
                return [InternalDetectorError(f"{det.key}: {type(exc).__name__}: {exc}")]
            else:
                log.warning("%s failed on a batch of %d; isolating", det.key, len(inputs))
        half = len(inputs) // 2
        return self._predict_isolated(det, inputs[:half]) + self._predict_isolated(
            det, inputs[half:]
        )
