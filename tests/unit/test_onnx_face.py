"""onnx-face-classifier with tiny ONNX graphs the tests build themselves: graphs whose output is
a known function of the input, so the crops, the normalisation, the output's meaning and the
aggregation can all be checked by the numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from detectors import registry
from detectors.base import DetectorResult, Label
from detectors.frames import DecodeLimits
from detectors.onnx_face import (
    KEY,
    FaceCrops,
    OnnxFaceConfig,
    aggregate,
    crop_face,
    fake_probabilities,
    normalise,
)
from detectors.weights import WeightsError, sha256_file
from processor.pipeline import Pipeline
from tests.media import make_video
from tests.onnx_models import SIZE, mean_graph

LIMITS = DecodeLimits(1 << 30, 3600, 3840 * 2160, 100_000)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mean_graph(tmp_path_factory.mktemp("onnx") / "mean.onnx")


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("media") / "face.mp4", seconds=1.5, fps=10)


BASE = {
    "input_size": [SIZE, SIZE],
    "num_frames": 6,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}


def build(model: Path, **config: Any) -> Any:
    detector = registry.build(KEY, BASE | {"weights": str(model)} | config)
    detector.setup("cpu")
    return detector


def expected_scores(crops: np.ndarray) -> np.ndarray:
    """What the mean graph gives under BASE: sigmoid of the mean of (x / 255 - 0.5) / 0.25."""
    logit = ((crops.astype(np.float64) / 255.0 - 0.5) / 0.25).mean(axis=(1, 2, 3))
    out: np.ndarray = 1.0 / (1.0 + np.exp(-logit))
    return out


def test_the_detector_loads_and_its_weights_id_is_the_files_sha256(model: Path) -> None:
    detector = build(model)
    assert detector.weights_id == sha256_file(model)
    assert detector.num_frames == 6
    assert detector.check_checkpoint(model) == sha256_file(model)


def test_a_batch_of_real_videos_is_judged_and_aggregated_by_the_numbers(
    model: Path, face_clip: Path, tmp_path: Path
) -> None:
    other = make_video(tmp_path / "other.mp4", seconds=1.0, fps=10, size=(480, 360))
    detector = build(model)
    pipeline = Pipeline({KEY: detector}, LIMITS, 640)
    prepared = [pipeline.prepare(p, [KEY]) for p in (face_clip, other)]
    items = [p.inputs[KEY] for p in prepared]
    for item in items:
        # The astronaut's face is found on every sampled frame and cropped to the input size.
        assert isinstance(item, FaceCrops)
        assert item.crops.shape == (6, SIZE, SIZE, 3)
    predicted = pipeline.predict(prepared)  # both videos' crops in one run
    for item, outcome in zip(items, predicted, strict=True):
        result = outcome.outcomes[KEY]
        assert isinstance(result, DetectorResult)
        scores = expected_scores(item.crops)
        assert result.fake_probability == pytest.approx(scores.mean(), abs=1e-5)
        assert [s.fake_probability for s in result.frame_scores] == pytest.approx(
            list(scores), abs=1e-5
        )
        assert [s.timestamp for s in result.frame_scores] == list(item.timestamps)
        assert result.details["frames_with_face"] == 6
        assert result.details["weights"] == sha256_file(model)
        assert result.label is (Label.FAKE if scores.mean() >= 0.5 else Label.REAL)

    # The same crops under each aggregation.
    item = items[0]
    scores = expected_scores(item.crops)
    for how, want in (
        ("median", np.median(scores)),
        ("max", scores.max()),
        ("top_k_mean", np.sort(scores)[-2:].mean()),
    ):
        [result] = build(model, aggregate=how, top_k=2).predict([item])
        assert isinstance(result, DetectorResult)
        assert result.fake_probability == pytest.approx(want, abs=1e-5), how


def test_the_output_means_what_the_configuration_says(model: Path, tmp_path: Path) -> None:
    crops = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    item = FaceCrops(crops, tuple(float(i) for i in range(5)), ((0, 0, 1, 1),) * 5, 5)
    base = expected_scores(crops)

    # The same single value read as the probability that the face is real.
    [result] = build(model, class_is="real").predict([item])
    assert isinstance(result, DetectorResult)
    assert result.fake_probability == pytest.approx((1 - base).mean(), abs=1e-5)

    # Two logits [m, -m] with "fake" second: softmax gives sigmoid(-2m).
    two = mean_graph(tmp_path / "two.onnx", two_classes=True)
    logit = np.log(base / (1 - base))
    [result] = build(two, class_index=1).predict([item])
    assert isinstance(result, DetectorResult)
    assert result.fake_probability == pytest.approx((1 / (1 + np.exp(2 * logit))).mean(), abs=1e-5)


def test_a_fixed_batch_graph_runs_in_runs_of_its_size(tmp_path: Path) -> None:
    fixed = mean_graph(tmp_path / "fixed.onnx", shape=(4, 3, SIZE, SIZE))
    crops = np.random.default_rng(1).integers(0, 256, (7, SIZE, SIZE, 3), dtype=np.uint8)
    items = [
        FaceCrops(crops[:3], (0.0, 1.0, 2.0), ((0, 0, 1, 1),) * 3, 3),
        FaceCrops(crops[3:], (0.0, 1.0, 2.0, 3.0), ((0, 0, 1, 1),) * 4, 4),
    ]
    results = build(fixed).predict(items)
    for item, result in zip(items, results, strict=True):
        assert isinstance(result, DetectorResult)
        assert result.fake_probability == pytest.approx(
            expected_scores(item.crops).mean(), abs=1e-5
        )


def test_no_face_abstains(model: Path, tmp_path: Path) -> None:
    blank = make_video(tmp_path / "blank.mp4", seconds=1.0, fps=10, face=False)
    detector = build(model)
    pipeline = Pipeline({KEY: detector}, LIMITS, 640)
    [predicted] = pipeline.predict([pipeline.prepare(blank, [KEY])])
    result = predicted.outcomes[KEY]
    assert isinstance(result, DetectorResult)
    assert (result.label, result.fake_probability) == (Label.ABSTAIN, None)
    assert result.details["reason"] == "no_face"
    assert result.details["frames_with_face"] == 0
    assert "found a face in 0 of 6 sampled frames" in detector.explain(result)


def test_normalisation_layout_channels_and_range() -> None:
    crop = np.zeros((1, 2, 2, 3), np.uint8)
    crop[..., 0], crop[..., 1], crop[..., 2] = 10, 20, 30
    cfg = OnnxFaceConfig.model_validate({"input_size": [8, 8]})
    assert normalise(crop, cfg).shape == (1, 3, 2, 2)
    assert normalise(crop, cfg)[0, :, 0, 0] == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    keras = OnnxFaceConfig.model_validate(
        {
            "layout": "NHWC",
            "channel_order": "BGR",
            "pixel_range": "0-255",
            "mean": [1, 2, 3],
            "std": [2, 2, 2],
        }
    )
    x = normalise(crop, keras)
    assert x.shape == (1, 2, 2, 3)
    assert x[0, 0, 0] == pytest.approx([(30 - 1) / 2, (20 - 2) / 2, (10 - 3) / 2])


def test_probabilities_out_of_range_say_the_output_kind_is_wrong() -> None:
    cfg = OnnxFaceConfig.model_validate({"output_kind": "probability"})
    assert fake_probabilities(np.array([[0.2], [0.9]]), cfg) == pytest.approx([0.2, 0.9])
    with pytest.raises(Exception, match="set output_kind: logit"):
        fake_probabilities(np.array([[3.0]]), cfg)


def test_aggregates() -> None:
    scores = np.array([0.1, 0.9, 0.4, 0.6])
    assert aggregate(scores, "mean", 3) == pytest.approx(0.5)
    assert aggregate(scores, "median", 3) == pytest.approx(0.5)
    assert aggregate(scores, "max", 3) == pytest.approx(0.9)
    assert aggregate(scores, "top_k_mean", 2) == pytest.approx(0.75)
    assert aggregate(scores, "top_k_mean", 10) == pytest.approx(0.5)


def test_a_crop_at_the_frame_edge_keeps_the_face_proportions() -> None:
    frame = np.full((100, 200, 3), 200, np.uint8)
    crop, box = crop_face(frame, (0, 10, 40, 50), 0.25, True, (16, 16))
    # A 40 px face and a quarter of it on each side: 60 px around its centre (20, 30), so
    # x -10 to 50; the part left of the frame is black.
    assert box == (-10, 0, 50, 60)
    assert crop.shape == (16, 16, 3)
    assert crop[8, 0].tolist() == [0, 0, 0]
    assert crop[8, 15].tolist() == [200, 200, 200]


def test_a_graph_that_does_not_fit_is_refused_in_one_line(model: Path, tmp_path: Path) -> None:
    wrong = mean_graph(tmp_path / "wrong.onnx", shape=("N", 3, 64, 64))
    detector = registry.build(KEY, BASE)
    with pytest.raises(WeightsError) as caught:
        detector.check_checkpoint(wrong)
    message = str(caught.value)
    assert "\n" not in message
    assert "has shape [?, 3, 64, 64]" in message
    assert "[batch, 3, 32, 32]" in message
    with pytest.raises(WeightsError, match="class_index 2, but output score"):
        registry.build(KEY, BASE | {"class_index": 2}).check_checkpoint(model)
    with pytest.raises(WeightsError, match=r"output_index 1, but the graph has 1 output$"):
        registry.build(KEY, BASE | {"output_index": 1}).check_checkpoint(model)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="not a loadable ONNX model"):
        detector.check_checkpoint(garbage)


def test_the_configuration_is_checked() -> None:
    with pytest.raises(ValidationError, match="no dummy weights"):
        OnnxFaceConfig.model_validate({"weights": "dummy"})
    with pytest.raises(ValidationError, match="min_faces cannot exceed num_frames"):
        OnnxFaceConfig.model_validate({"num_frames": 2, "min_faces": 3})
    with pytest.raises(ValidationError, match="std may be 0"):
        OnnxFaceConfig.model_validate({"std": [1, 0, 1]})


def test_the_readme_example_is_a_valid_section() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("```yaml\ndetectors:\n  onnx-face-classifier:\n", 1)[1].split("```")[0]
    section = yaml.safe_load("section:\n" + block)["section"]
    cfg = OnnxFaceConfig.model_validate(section)
    assert (cfg.class_index, cfg.mean) == (1, (0.485, 0.456, 0.406))
