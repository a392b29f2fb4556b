"""face-cues-v1: the cues on real decoded frames, the weights file, the regression, and a whole
training run on synthetic cues."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detectors import registry
from detectors.base import DetectorResult
from detectors.cue_training import FitParams, fit_logistic, train_and_ship
from detectors.evaluation import roc_auc
from detectors.face_cues import (
    CUES,
    KEY,
    FaceCuesConfig,
    FaceCuesDetector,
    FaceCuesInput,
    NoFace,
    OtherFace,
    dummy_model,
    read_weights,
    window_starts,
)
from detectors.frames import DecodeLimits
from detectors.manifest import read_manifest
from detectors.training import (
    Clip,
    DatasetError,
    FeatureCache,
    Features,
    ShipSettings,
    Split,
)
from detectors.weights import WeightsError
from processor.pipeline import Pipeline
from tests.media import make_two_people, make_video

LIMITS = DecodeLimits(1 << 30, 3600, 3840 * 2160, 100_000)
SMALL = {"run_frames": 12, "min_faces": 6}


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("media") / "face.mp4", seconds=1.5, fps=10)


def judge(path: Path, **config: Any) -> DetectorResult:
    detector = registry.build(KEY, SMALL | config)
    detector.setup("cpu")
    pipeline = Pipeline({KEY: detector}, LIMITS, 640)
    prepared = pipeline.prepare(path, [KEY])
    [predicted] = pipeline.predict([prepared])
    result = predicted.outcomes[KEY]
    assert isinstance(result, DetectorResult)
    return result


def test_cues_of_a_real_face_through_the_pipeline(face_clip: Path) -> None:
    detector = registry.build(KEY, SMALL)
    detector.setup("cpu")
    prepared = Pipeline({KEY: detector}, LIMITS, 640).prepare(face_clip, [KEY])
    item = prepared.inputs[KEY]
    assert isinstance(item, FaceCuesInput)
    assert item.cues.shape == (len(CUES),)
    assert np.isfinite(item.cues).all()
    assert (item.frames_sampled, item.frames_with_face) == (12, 12)
    # The synthetic head drifts a few pixels per frame: landmarks move, but smoothly.
    cue = dict(zip(CUES, item.cues, strict=True))
    assert cue["face_fraction"] == 1.0
    assert cue["landmark_jerk"] > 0

    result = judge(face_clip)
    assert result.label.value in ("REAL", "FAKE")
    assert result.details["weights"] == "dummy"
    assert list(result.details["cues"]) == list(CUES)
    # The logit shares add up to the logit, so a reader can see what drove the score.
    shares = sum(c["logit_share"] for c in result.details["cues"].values())
    raw = result.details["raw_probability"]
    assert shares == pytest.approx(np.log(raw / (1 - raw)), abs=1e-3)


def test_each_person_in_view_is_judged_and_the_verdict_names_the_face(tmp_path: Path) -> None:
    clip = make_two_people(tmp_path / "two.mp4")
    both = judge(clip)
    face = both.details["face"]
    assert face["faces_judged"] == 2
    left, right = sorted(both.details["faces"], key=lambda f: f["box"][0])
    assert left["box"][2] < 0.5 < right["box"][0], "one face on each side"
    assert {left["track"], right["track"]} == {0, 1}
    for f in (left, right):
        assert f["frames_with_face"] >= SMALL["min_faces"]
    judged = left if face["track"] == left["track"] else right
    assert face["box"] == judged["box"]
    assert judged["fake_probability"] == max(left["fake_probability"], right["fake_probability"])
    assert both.fake_probability == pytest.approx(judged["fake_probability"], abs=1e-4)
    assert "2 faces were judged apart" in registry.available()[KEY].explain(both)
    # One face only: the largest one, as before there were several.
    alone = judge(clip, max_faces=1)
    assert alone.details["face"]["faces_judged"] == 1
    assert "faces" not in alone.details
    [largest] = [f for f in (left, right) if f["track"] == 0]
    assert alone.fake_probability == pytest.approx(largest["fake_probability"], abs=1e-4)
    assert alone.details["face"]["box"] == largest["box"]


@pytest.mark.parametrize("seed", range(4))
def test_the_most_suspicious_face_decides(seed: int) -> None:
    detector = FaceCuesDetector(FaceCuesConfig(weights="dummy"))
    detector.setup("cpu")
    cues = np.random.default_rng(seed).normal(size=(3, len(CUES)))
    boxes = [(0.1, 0.1, 0.3, 0.4), (0.4, 0.1, 0.6, 0.4), (0.7, 0.1, 0.9, 0.4)]
    item = FaceCuesInput(
        cues[0],
        12,
        12,
        box=boxes[0],
        others=tuple(OtherFace(t, boxes[t], cues[t], 9) for t in (1, 2)),
    )
    raw = detector.raw_probabilities(cues)
    [result] = detector.predict([item])
    assert isinstance(result, DetectorResult)
    worst = int(np.argmax(raw))
    assert result.details["face"] == {"track": worst, "box": list(boxes[worst]), "faces_judged": 3}
    assert result.details["raw_probability"] == pytest.approx(raw[worst])
    assert result.details["frames_with_face"] == (12 if worst == 0 else 9)
    assert [f["track"] for f in result.details["faces"]] == [0, 1, 2]
    values = [c["value"] for c in result.details["cues"].values()]
    assert values == pytest.approx(cues[worst], abs=1e-4), "the cues shown are the judged face's"


def test_no_face_abstains(tmp_path: Path) -> None:
    blank = make_video(tmp_path / "blank.mp4", seconds=1.5, fps=10, face=False)
    result = judge(blank)
    assert (result.label.value, result.fake_probability) == ("ABSTAIN", None)
    assert result.details["reason"] == "no_face"
    assert result.details["frames_with_face"] == 0


def test_windows_score_the_run_without_touching_the_clip(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "long.mp4", seconds=4.0, fps=10)
    detector = registry.build(KEY, {"run_frames": 40, "min_faces": 6})
    detector.setup("cpu")
    pipeline = Pipeline({KEY: detector}, LIMITS, 640)
    item = pipeline.prepare(clip, [KEY]).inputs[KEY]
    assert isinstance(item, FaceCuesInput)
    [result] = detector.predict([item])
    assert isinstance(result, DetectorResult)

    # Windows of 16 frames, 8 apart, over 40 frames at 10 fps: each scored at its centre,
    # midway between its first and last frame.
    assert window_starts(40) == [0, 8, 16, 24]
    times = [s.timestamp for s in result.frame_scores]
    assert times == pytest.approx([0.75, 1.55, 2.35, 3.15])
    assert times == sorted(times)
    assert all(0.0 <= s.fake_probability <= 1.0 for s in result.frame_scores)

    # The clip's probability is the whole run's alone: the same without any window.
    [bare] = detector.predict(
        [dataclasses.replace(item, window_cues=np.zeros((0, len(CUES))), window_times=())]
    )
    assert isinstance(bare, DetectorResult)
    assert bare.frame_scores == []
    assert (bare.fake_probability, bare.label, bare.details) == (
        result.fake_probability,
        result.label,
        result.details,
    )

    # One batch: every clip takes back its own windows.
    short = pipeline.prepare(make_video(tmp_path / "short.mp4", seconds=2.0, fps=10), [KEY])
    other = short.inputs[KEY]
    assert isinstance(other, FaceCuesInput)
    assert len(other.window_times) == 2  # 20 frames: windows at 0 and 4
    batched = detector.predict([other, item, other])
    alone = [*detector.predict([other]), result, *detector.predict([other])]
    for got, want in zip(batched, alone, strict=True):
        assert isinstance(got, DetectorResult)
        assert isinstance(want, DetectorResult)
        assert got.fake_probability == pytest.approx(want.fake_probability)
        assert [s.timestamp for s in got.frame_scores] == [s.timestamp for s in want.frame_scores]
        assert [s.fake_probability for s in got.frame_scores] == pytest.approx(
            [s.fake_probability for s in want.frame_scores]
        )


@pytest.mark.parametrize(
    ("count", "starts"),
    [
        (3, [0]),
        (16, [0]),
        (17, [0, 1]),
        (20, [0, 4]),
        (48, [0, 8, 16, 24, 32]),
        (50, [0, 8, 16, 24, 32, 34]),
    ],
)
def test_window_starts_cover_the_run(count: int, starts: list[int]) -> None:
    assert window_starts(count) == starts


def _weights_doc(**changes: Any) -> dict[str, Any]:
    return dummy_model(0).to_json() | changes


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema": "other"}, "not a face-cues-v1 weights file"),
        ({"cues": list(reversed(CUES))}, "cues"),
        ({"coef": [1.0] * 3}, "coef must be 12 finite numbers"),
        ({"mean": [float("nan")] * 12}, "mean must be 12 finite numbers"),
        ({"scale": [0.0] * 12}, "scale must be positive"),
        ({"intercept": "x"}, "intercept"),
    ],
)
def test_bad_weights_files_are_refused_by_name(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(_weights_doc(**changes)))
    with pytest.raises(WeightsError, match=message):
        read_weights(path)


def test_weights_round_trip_and_id(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(_weights_doc()))
    model, sha = read_weights(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    np.testing.assert_array_equal(model.coef, dummy_model(0).coef)
    detector = registry.build(KEY, {"weights": str(path)})
    assert detector.check_checkpoint(path) == sha
    detector.setup("cpu")
    assert detector.weights_id == sha


def _separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    cues = rng.normal(size=(n, len(CUES))) * 3 + 10
    cues[:, 2] += np.where(labels == 1, -6.0, 6.0)  # fakes: a softer face than the frame
    return cues, labels.astype(float)


def test_fit_learns_and_is_deterministic() -> None:
    cues, labels = _separable(60, 0)
    first = fit_logistic(cues, labels, FitParams())
    again = fit_logistic(cues, labels, FitParams())
    np.testing.assert_array_equal(first.coef, again.coef)
    held_cues, held_labels = _separable(40, 1)
    assert roc_auc(held_labels, first.logits(held_cues)) > 0.9
    assert first.coef[2] < 0
    with pytest.raises(DatasetError, match="both labels"):
        fit_logistic(cues, np.zeros(60), FitParams())


def test_a_whole_training_run(tmp_path: Path) -> None:
    cues, labels = _separable(48, 2)
    clips: list[Clip] = []
    features: dict[str, Features] = {}
    splits: list[Split] = []
    for i, (row, label) in enumerate(zip(cues, labels, strict=True)):
        sha = hashlib.sha256(f"clip{i}".encode()).hexdigest()
        clips.append(
            Clip(tmp_path / f"{i}.mp4", f"{i}.mp4", int(label), "synthetic", sha, "", f"g{i}")
        )
        features[sha] = Features(FaceCuesInput(row, 12, 12), None)
        splits.append(("train", "train", "val", "test")[i // 2 % 4])
    # One clip without a face: left out of training, reported in the card.
    features[clips[0].sha256] = Features(NoFace(12, 2), None)
    settings = ShipSettings(tmp_path / "w", "synthetic", "test", "v0", 0.25, 0.25, resamples=50)
    config = registry.build(KEY, {}).config
    report = train_and_ship(clips, splits, features, config, FitParams(), settings, seed=0)  # type: ignore[arg-type]

    [entry] = read_manifest(tmp_path / "w" / "manifest.json").entries
    assert entry.file == f"{KEY}.json"
    assert entry.held_out is not None
    assert entry.held_out.clips == report["measured"]["test"]["n"] == 12
    assert entry.held_out.roc_auc > 0.9
    card = (tmp_path / "w" / f"{KEY}.md").read_text()
    assert "Held-out test split" in card
    assert "`0.mp4`: no_face (2/12 frames)" in card

    # The daemon's way: weights and operating point from the manifest.
    detector = registry.build(
        KEY, {"weights": "manifest", "manifest": str(tmp_path / "w" / "manifest.json")}
    )
    detector.setup("cpu")
    assert detector.threshold == entry.threshold
    [result] = detector.predict([FaceCuesInput(cues[1], 12, 12)])
    assert isinstance(result, DetectorResult)
    assert result.details["operating_point"]["held_out"]["clips"] == 12


def test_feature_cache_keeps_cues_and_no_face(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "ns")
    cues = np.arange(len(CUES), dtype=np.float64)
    cache.put("a" * 64, Features(FaceCuesInput(cues, 48, 40), None))
    cache.put("b" * 64, Features(NoFace(48, 3), None))
    hit = cache.get("a" * 64)
    assert hit is not None
    assert isinstance(hit.prepared, FaceCuesInput)
    np.testing.assert_array_equal(hit.prepared.cues, cues)
    assert (hit.prepared.frames_sampled, hit.prepared.frames_with_face) == (48, 40)
    miss = cache.get("b" * 64)
    assert miss is not None
    assert miss.prepared == NoFace(48, 3)


def test_settings_unlike_the_measured_ones_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    detector = registry.build(KEY, {"weights": "manifest", "run_frames": 24})
    with caplog.at_level("WARNING", logger="detectors.manifest"):
        detector.setup("cpu")
    assert "run_frames (24, measured 48)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="detectors.manifest"):
        registry.build(KEY, {"weights": "manifest"}).setup("cpu")
    assert caplog.text == ""
    with pytest.raises(ValueError, match="min_faces cannot exceed run_frames"):
        registry.build(KEY, {"run_frames": 8, "min_faces": 9})
