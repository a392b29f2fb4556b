"""The weights manifest: round trip, registration, and the operating point a detector takes
from it (threshold, UNCERTAIN band, calibration; explicit settings win)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detectors.base import DetectorResult, Label
from detectors.color_cues import (
    KEY,
    ColorCuesConfig,
    ColorCuesDetector,
    ColorCuesInput,
    window_starts,
)
from detectors.color_cues_net import ColorCuesNet
from detectors.manifest import (
    SCHEMA,
    Calibration,
    ManifestEntry,
    ManifestError,
    OperatingPoint,
    find_manifest,
    operating_point,
    read_manifest,
    register,
    source_tree_manifest,
)
from detectors.weights import WeightsError, sha256_file

SHA = "a" * 64


def _entry(**changes: Any) -> ManifestEntry:
    fields: dict[str, Any] = {
        "detector": KEY,
        "file": "x.pt",
        "sha256": SHA,
        "threshold": 0.4,
        "uncertain_band": (0.35, 0.45),
        "calibration": Calibration(a=1.0, b=0.0),
        "card": "x.md",
        "default": True,
        "registered": "2025-01-01",
    }
    return ManifestEntry(**(fields | changes))


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    register(path, _entry())

    manifest = read_manifest(path)
    assert manifest.entries == [_entry()]
    raw = json.loads(path.read_text())
    assert raw["schema"] == SCHEMA
    assert raw["entries"][0]["uncertain_band"] == [0.35, 0.45]


def test_register_replaces_same_file_and_moves_the_default(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    register(path, _entry())
    register(path, _entry(threshold=0.6))
    assert [e.threshold for e in read_manifest(path).entries] == [0.6]

    register(path, _entry(file="y.pt", sha256="b" * 64))
    manifest = read_manifest(path)
    assert {e.file: e.default for e in manifest.entries} == {"x.pt": False, "y.pt": True}
    assert manifest.default_entry(KEY).file == "y.pt"
    assert manifest.by_sha256(KEY, SHA) is not None
    assert manifest.by_sha256("other", SHA) is None
    with pytest.raises(ManifestError, match="no default entry"):
        manifest.default_entry("other")


def test_bad_manifests_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(path)
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(path)
    path.write_text(json.dumps({"schema": SCHEMA, "entries": [{"detector": KEY}]}))
    with pytest.raises(ManifestError, match="invalid"):
        read_manifest(path)
    with pytest.raises(ValueError, match="uncertain_band"):
        _entry(uncertain_band=(0.5, 0.4))


def test_probability_inside_the_band_is_uncertain() -> None:
    op = OperatingPoint(threshold=0.4, uncertain_band=(0.35, 0.45))
    assert op.label(0.36) is Label.UNCERTAIN
    assert op.label(0.45) is Label.UNCERTAIN
    assert op.label(0.46) is Label.FAKE
    assert op.label(0.2) is Label.REAL
    assert OperatingPoint(threshold=0.4).label(0.4) is Label.FAKE


def test_explicit_settings_override_the_manifest() -> None:
    entry = _entry()
    none = {"threshold": False, "uncertain_band": False}
    assert operating_point(entry, 0.5, None, none).threshold == 0.4
    assert operating_point(entry, 0.5, None, none).uncertain_band == (0.35, 0.45)
    explicit = operating_point(entry, 0.7, None, {"threshold": True, "uncertain_band": True})
    assert (explicit.threshold, explicit.uncertain_band) == (0.7, None)
    # Calibration is a property of the weights, not a setting: it always comes along.
    assert explicit.calibration == entry.calibration
    plain = operating_point(None, 0.5, None, none)
    assert (plain.threshold, plain.uncertain_band, plain.calibration) == (0.5, None, None)


def test_calibration_is_platt_scaling() -> None:
    assert Calibration(a=1.0, b=0.0).apply(0.3) == pytest.approx(0.3)
    assert Calibration(a=0.0, b=0.0).apply(0.9) == pytest.approx(0.5)
    assert Calibration(a=2.0, b=0.0).apply(0.75) == pytest.approx(0.9)


# --- the detector reads it ---------------------------------------------------------------------


def _checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(5)
    path = folder / "cc.pt"
    torch.save(ColorCuesNet(1024, 64, 0.5).state_dict(), path)
    return path


def _input(config: ColorCuesConfig) -> ColorCuesInput:
    hists = np.random.default_rng(0).uniform(0, 255, (40, 1024)).astype(np.float32)
    return ColorCuesInput(
        histograms=hists,
        timestamps=tuple(0.1 * i for i in range(40)),
        window_starts=window_starts(40, config.sequence_length, config.window_stride),
        frames_sampled=40,
    )


def _judge(config: ColorCuesConfig) -> tuple[ColorCuesDetector, DetectorResult]:
    detector = ColorCuesDetector(config)
    detector.setup("cpu")
    result = detector.predict([_input(config)])[0]
    assert isinstance(result, DetectorResult)
    return detector, result


def test_detector_takes_threshold_band_and_calibration_from_the_manifest(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "weights")
    _, raw = _judge(ColorCuesConfig(weights=str(checkpoint)))
    assert raw.threshold == 0.5  # no manifest yet: the configured default
    p = raw.fake_probability
    assert p is not None
    calibration = Calibration(a=1.0, b=0.5)
    calibrated = calibration.apply(p)
    band = (calibrated - 0.01, calibrated + 0.01)
    register(
        tmp_path / "weights" / "manifest.json",
        _entry(
            file="cc.pt",
            sha256=sha256_file(checkpoint),
            threshold=0.3,
            uncertain_band=band,
            calibration=calibration,
        ),
    )

    by_path, result = _judge(ColorCuesConfig(weights=str(checkpoint)))
    assert result.fake_probability == pytest.approx(calibrated)
    assert result.details["raw_probability"] == pytest.approx(p)
    assert result.threshold == 0.3
    assert result.label is Label.UNCERTAIN
    assert by_path.operating.source == "cc.pt"

    manifest = str(tmp_path / "weights" / "manifest.json")
    _, from_manifest = _judge(ColorCuesConfig(weights="manifest", manifest=manifest))
    assert from_manifest.label is Label.UNCERTAIN
    assert from_manifest.fake_probability == pytest.approx(calibrated)

    _, overridden = _judge(
        ColorCuesConfig(weights=str(checkpoint), threshold=0.99, uncertain_band=None)
    )
    assert overridden.threshold == 0.99
    assert overridden.label is Label.REAL


def test_manifest_weights_refuse_a_changed_file(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path)
    register(tmp_path / "manifest.json", _entry(file="cc.pt", sha256=SHA))
    detector = ColorCuesDetector(
        ColorCuesConfig(weights="manifest", manifest=str(tmp_path / "manifest.json"))
    )
    with pytest.raises(WeightsError, match="changed after"):
        detector.setup("cpu")
    assert checkpoint.exists()


def test_manifest_weights_without_a_manifest_fail_clearly(tmp_path: Path) -> None:
    detector = ColorCuesDetector(
        ColorCuesConfig(weights="manifest", manifest=str(tmp_path / "none.json"))
    )
    with pytest.raises(ManifestError, match="not found"):
        detector.setup("cpu")


def test_a_local_manifest_without_the_key_falls_back_to_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment's own weights/manifest.json (say, from `weights import` of a seed
    checkpoint) lists other detectors: it must not hide the shipped weights of this one."""
    register(tmp_path / "weights" / "manifest.json", _entry())  # color-cues only
    monkeypatch.chdir(tmp_path)
    assert find_manifest(None, KEY) == Path("weights") / "manifest.json"
    assert find_manifest(None, "face-cues-v1") == source_tree_manifest()
