"""The pipeline's batch isolation: a poisoned input or a batch too big for the device never
costs the other videos their verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from detectors.base import Detector, DetectorConfig, DetectorResult, Label, SampledFrames
from detectors.errors import DetectorError
from detectors.frames import DecodeLimits
from detectors.weights import WeightsError
from processor.pipeline import Pipeline, PreparedVideo
from tests.media import make_video


class Echo(Detector[DetectorConfig]):
    """Scores each input by its own number; fails like a real model would on bad inputs."""

    key = "echo"
    version = "0"
    config_class = DetectorConfig

    def __init__(self, max_batch: int = 100) -> None:
        super().__init__(DetectorConfig())
        self.max_batch = max_batch
        self.batch_sizes: list[int] = []

    @property
    def num_frames(self) -> int:
        return 4

    @property
    def weights_id(self) -> str:
        return "dummy"

    @property
    def threshold(self) -> float:
        return 0.5

    def check_checkpoint(self, path: str | Path) -> str:
        raise WeightsError("echo has no weights")

    def setup(self, device: str) -> None:
        pass

    def prepare(self, frames: SampledFrames) -> Any:
        return float(frames.frames[0].mean()) / 255

    def predict(self, batch: Sequence[Any]) -> list[DetectorResult | DetectorError]:
        self.batch_sizes.append(len(batch))
        if len(batch) > self.max_batch:
            raise torch.cuda.OutOfMemoryError("simulated")
        values = torch.tensor([float(x) for x in batch])  # ValueError on a poisoned input
        return [DetectorResult(Label.REAL, float(v), 0.5) for v in values]


def _prepared(value: Any) -> PreparedVideo:
    video = PreparedVideo(Path("x"), None)  # type: ignore[arg-type]
    video.inputs["echo"] = value
    return video


def _pipeline(det: Echo) -> Pipeline:
    return Pipeline({"echo": det}, DecodeLimits(10**9, 600, 10**8, 10**6), 256)


def test_poisoned_input_fails_alone() -> None:
    det = Echo()
    out = _pipeline(det).predict([_prepared(0.1), _prepared("poison"), _prepared(0.3)])
    first, bad, third = (p.outcomes["echo"] for p in out)
    assert isinstance(first, DetectorResult)
    assert first.fake_probability == pytest.approx(0.1)
    assert isinstance(bad, DetectorError)
    assert bad.code == "internal_error"
    assert isinstance(third, DetectorResult)
    assert third.fake_probability == pytest.approx(0.3)


def test_out_of_memory_splits_the_batch() -> None:
    det = Echo(max_batch=2)
    out = _pipeline(det).predict([_prepared(i / 10) for i in range(7)])
    assert [p.outcomes["echo"].fake_probability for p in out] == pytest.approx(  # type: ignore[union-attr]
        [i / 10 for i in range(7)]
    )
    assert det.batch_sizes[0] == 7
    # The batches that fitted cover every video exactly once.
    assert sum(n for n in det.batch_sizes if n <= 2) == 7


def test_out_of_memory_on_one_video_is_retryable() -> None:
    det = Echo(max_batch=0)
    [out] = _pipeline(det).predict([_prepared(0.5)])
    error = out.outcomes["echo"]
    assert isinstance(error, DetectorError)
    assert error.retryable


class DeviceHog(Echo):
    """Takes ``per_video`` bytes of device memory per input, as a network's activations grow
    with the batch: a real CUDA out-of-memory error once the batch is too big."""

    def __init__(self, per_video: int) -> None:
        super().__init__()
        self.per_video = per_video

    def predict(self, batch: Sequence[Any]) -> list[DetectorResult | DetectorError]:
        self.batch_sizes.append(len(batch))
        held = torch.empty(len(batch) * self.per_video, dtype=torch.uint8, device="cuda")
        del held
        return [DetectorResult(Label.REAL, float(x), 0.5) for x in batch]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_out_of_memory_splits_the_batch() -> None:
    free, _ = torch.cuda.mem_get_info()
    # One video fits in the free memory, two do not: eight must be split down to ones.
    det = DeviceHog(int(free * 0.6))
    try:
        out = _pipeline(det).predict([_prepared(i / 10) for i in range(8)])
    finally:
        torch.cuda.empty_cache()
    assert [p.outcomes["echo"].fake_probability for p in out] == pytest.approx(  # type: ignore[union-attr]
        [i / 10 for i in range(8)]
    )
    assert det.batch_sizes[:4] == [8, 4, 2, 1], "halved until one video fits"
    assert det.batch_sizes.count(1) == 8


def test_prepare_decodes_once_for_every_detector(tmp_path: Path) -> None:
    path = make_video(tmp_path / "v.mp4", seconds=1.0, fps=10, size=(64, 48), face=False)
    det = Echo()
    prepared = _pipeline(det).prepare(path, ["echo"])
    assert prepared.info.width == 64
    assert 0.0 <= prepared.inputs["echo"] <= 1.0
