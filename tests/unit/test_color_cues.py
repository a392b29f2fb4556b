"""color-cues-lstm-v1: seed-compatible features and checkpoints, batched windows, abstention,
and the registry that builds it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from detectors import registry
from detectors.base import DetectorResult, Label, SampledFrames
from detectors.color_cues import (
    KEY,
    ColorCuesConfig,
    ColorCuesDetector,
    ColorCuesInput,
    NoFace,
    chromaticity_histogram,
    window_starts,
)
from detectors.errors import DetectorError
from detectors.frames import DecodeLimits, decode_sampled
from detectors.weights import WeightsError, WeightsUnreadable, sha256_file
from tests.media import SHARED_VIDEOS, make_video

LIMITS = DecodeLimits(100_000_000, 600, 3840 * 2160, 50_000)


class SeedLSTMClassifier(nn.Module):
    """The seed project's network, written out independently to produce its checkpoints."""

    def __init__(self, input_size: int = 1024, hidden_size: int = 64) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, 1, batch_first=True)
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(hidden_size, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        return self.fc2(self.relu(self.fc1(self.dropout(h[:, -1, :])))).squeeze(-1)


def _detector(**config: Any) -> ColorCuesDetector:
    detector = ColorCuesDetector(ColorCuesConfig(**config))
    detector.setup("cpu")
    return detector


def _result(outcome: DetectorResult | DetectorError) -> DetectorResult:
    assert isinstance(outcome, DetectorResult), outcome
    return outcome


def _prepared(count: int, seed: int, config: ColorCuesConfig) -> ColorCuesInput:
    rng = np.random.default_rng(seed)
    hists = rng.uniform(0, 255, (count, config.histogram_bins**2)).astype(np.float32)
    return ColorCuesInput(
        histograms=hists,
        timestamps=tuple(0.1 * i for i in range(count)),
        window_starts=window_starts(count, config.sequence_length, config.window_stride),
        frames_sampled=count,
    )


@pytest.fixture(scope="module")
def detector() -> ColorCuesDetector:
    return _detector(num_frames=16)


@pytest.fixture(scope="module")
def face_video(tmp_path_factory: pytest.TempPathFactory) -> SampledFrames:
    path = make_video(tmp_path_factory.mktemp("cc") / "face.mp4", seconds=2.0, face=True)
    return decode_sampled(path, 16, LIMITS, max_side=640)


# --- features ----------------------------------------------------------------------------------


def test_chromaticity_histogram_bins() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    image[:5] = (255, 0, 0)  # r = 1, g = 0
    image[5:, :5] = (100, 100, 100)  # grey: r = g = 1/3
    # Black counts as neutral grey too, as in the seed.
    hist = chromaticity_histogram(image, 32)

    assert hist.sum() == 100
    assert hist[31, 0] == 50
    assert hist[10, 10] == 50


def test_window_starts_cover_every_item() -> None:
    assert window_starts(10, 32, 16) == (0,)
    assert window_starts(32, 32, 16) == (0,)
    assert window_starts(64, 32, 16) == (0, 16, 32)
    assert window_starts(70, 32, 16) == (0, 16, 32, 38)


def test_features_on_synthetic_face_video(
    detector: ColorCuesDetector, face_video: SampledFrames
) -> None:
    prepared = detector.prepare(face_video)

    assert isinstance(prepared, ColorCuesInput)
    assert prepared.histograms.shape == (16, 1024)
    assert prepared.histograms.dtype == np.float32
    assert prepared.timestamps == tuple(face_video.timestamps)
    assert (prepared.histograms.max(axis=1) == 255).all()
    assert (prepared.histograms >= 0).all()
    # The same face drifting a few pixels: every frame's histogram holds about the same mass.
    sums = prepared.histograms.sum(axis=1)
    assert sums.std() / sums.mean() < 0.1


@pytest.mark.skipif(not SHARED_VIDEOS.is_dir(), reason=f"{SHARED_VIDEOS} is missing")
def test_faces_found_on_most_frames_of_a_real_clip(detector: ColorCuesDetector) -> None:
    clip = SHARED_VIDEOS / "real" / "celebdf_id13_0011.mp4"
    frames = decode_sampled(clip, 16, LIMITS, max_side=1280)

    prepared = detector.prepare(frames)

    assert isinstance(prepared, ColorCuesInput)
    assert len(prepared.timestamps) >= 0.8 * len(frames.frames)


def test_no_face_abstains(detector: ColorCuesDetector, tmp_path: Path) -> None:
    path = make_video(tmp_path / "empty-room.mp4", seconds=1.0, face=False)
    prepared = detector.prepare(decode_sampled(path, 16, LIMITS, max_side=640))

    result = _result(detector.predict([prepared])[0])

    assert isinstance(prepared, NoFace)
    assert result.label is Label.ABSTAIN
    assert result.fake_probability is None
    assert result.details["reason"] == "no_face"
    assert result.details["frames_with_face"] == 0


def test_end_to_end_verdict(detector: ColorCuesDetector, face_video: SampledFrames) -> None:
    result = _result(detector.predict([detector.prepare(face_video)])[0])

    assert result.label in (Label.REAL, Label.FAKE)
    assert result.fake_probability is not None
    assert 0.0 <= result.fake_probability <= 1.0
    assert [s.timestamp for s in result.frame_scores] == face_video.timestamps
    assert result.details["weights"] == "dummy"


# --- batching ----------------------------------------------------------------------------------


def test_batched_predict_equals_one_by_one(detector: ColorCuesDetector) -> None:
    items = [_prepared(n, seed, detector.config) for seed, n in enumerate([5, 32, 50, 70, 16])]

    batched = [_result(r) for r in detector.predict(items)]
    single = [_result(detector.predict([item])[0]) for item in items]

    for a, b in zip(batched, single, strict=True):
        assert a.fake_probability == pytest.approx(b.fake_probability, abs=1e-5)
        assert [s.fake_probability for s in a.frame_scores] == pytest.approx(
            [s.fake_probability for s in b.frame_scores], abs=1e-5
        )


def test_frame_score_is_mean_of_covering_windows(detector: ColorCuesDetector) -> None:
    item = _prepared(70, 3, detector.config)  # windows start at 0, 16, 32, 38

    result = _result(detector.predict([item])[0])

    w = result.details["window_scores"]
    scores = [s.fake_probability for s in result.frame_scores]
    assert len(scores) == 70
    assert result.fake_probability == pytest.approx(np.mean(w))
    assert scores[0] == pytest.approx(w[0])
    assert scores[20] == pytest.approx((w[0] + w[1]) / 2)
    assert scores[40] == pytest.approx((w[1] + w[2] + w[3]) / 3)
    assert scores[69] == pytest.approx(w[3])


def test_poisoned_items_fail_alone(detector: ColorCuesDetector) -> None:
    good = _prepared(40, 0, detector.config)
    wrong_bins = replace(good, histograms=np.zeros((40, 999), np.float32))
    not_finite = replace(good, histograms=np.full((40, 1024), np.nan, np.float32))
    bad_windows = replace(good, window_starts=(0, 30))
    batch = [good, wrong_bins, "not prepared", not_finite, bad_windows, good]

    results = detector.predict(batch)

    assert len(results) == len(batch)
    for bad in results[1:5]:
        assert isinstance(bad, DetectorError)
    assert "999" in str(results[1])
    alone = _result(detector.predict([good])[0])
    for ok in (results[0], results[5]):
        assert _result(ok).fake_probability == pytest.approx(alone.fake_probability, abs=1e-5)


def test_threshold_decides_the_label() -> None:
    item = _prepared(32, 0, ColorCuesConfig())
    assert _result(_detector(threshold=0.0).predict([item])[0]).label is Label.FAKE
    assert _result(_detector(threshold=1.0).predict([item])[0]).label is Label.REAL


# --- weights -----------------------------------------------------------------------------------


def test_dummy_weights_are_deterministic_for_a_seed() -> None:
    item = _prepared(40, 0, ColorCuesConfig())
    a, b, c = _detector(seed=7), _detector(seed=7), _detector(seed=8)

    assert a.weights_id == "dummy"
    pa, pb, pc = (_result(d.predict([item])[0]).fake_probability for d in (a, b, c))
    assert pa == pb
    assert pa != pc


@pytest.mark.parametrize("wrapped", [False, True])
def test_seed_checkpoint_round_trip(tmp_path: Path, wrapped: bool) -> None:
    torch.manual_seed(123)
    seed_model = SeedLSTMClassifier().eval()
    state = seed_model.state_dict()
    path = tmp_path / "color_cues.pth"
    torch.save({"model_state_dict": state, "epoch": 9} if wrapped else state, path)

    detector = _detector(weights=str(path))

    assert detector.weights_id == sha256_file(path)
    x = torch.rand(3, 32, 1024) * 255
    model = detector._model
    assert model is not None
    with torch.no_grad():
        torch.testing.assert_close(model(x), seed_model(x))


def test_mismatched_checkpoint_is_refused_naming_the_keys(tmp_path: Path) -> None:
    state = SeedLSTMClassifier(hidden_size=48).state_dict()
    state["fc3.weight"] = state.pop("fc2.weight")
    path = tmp_path / "other.pth"
    torch.save(state, path)

    with pytest.raises(WeightsError) as exc:
        _detector(weights=str(path))

    message = exc.value.message
    assert exc.value.code == "weights_mismatch"
    assert "missing keys: fc2.weight" in message
    assert "unexpected keys: fc3.weight" in message
    assert "lstm.weight_ih_l0 (192, 1024) (expected (256, 1024))" in message


def test_checkpoint_that_is_not_a_state_dict(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(WeightsUnreadable):
        _detector(weights=str(text))
    with pytest.raises(WeightsUnreadable):
        _detector(weights=str(tmp_path / "missing.pth"))


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hostile.pth"
    torch.save({"model_state_dict": SeedLSTMClassifier().state_dict(), "extra": Path("/")}, path)
    with pytest.raises(WeightsUnreadable):
        _detector(weights=str(path))


# --- registry ----------------------------------------------------------------------------------


def test_registry_builds_by_key() -> None:
    assert registry.available()[KEY] is ColorCuesDetector
    assert KEY not in registry.unavailable()

    built = registry.build(KEY, {"num_frames": 24})

    assert isinstance(built, ColorCuesDetector)
    assert built.num_frames == 24


def test_registry_unknown_key_lists_available() -> None:
    with pytest.raises(registry.UnknownDetector) as exc:
        registry.build("no-such-detector", {})
    assert KEY in str(exc.value)
    assert isinstance(exc.value, KeyError)


def test_registry_bad_config_raises_validation_error() -> None:
    with pytest.raises(ValidationError, match="sequence_lenght"):
        registry.build(KEY, {"sequence_lenght": 16})


def test_registry_reports_a_broken_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._PLUGINS, "broken-v1", "detectors.no_such_module")

    assert "broken-v1" in registry.unavailable()
    assert KEY in registry.available()
    with pytest.raises(registry.UnknownDetector, match="unavailable"):
        registry.build("broken-v1", {})
