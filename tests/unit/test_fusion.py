"""Fusion rules for the overall verdict, and their configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from processor.config import Config, FusionConfig
from processor.verdict import overall_verdict


@dataclass(frozen=True)
class R:
    detector: str
    label: str
    fake_probability: float | None
    details: dict[str, Any] = field(default_factory=dict)


MEAN = FusionConfig(rule="weighted_mean")


def test_default_is_any_fake() -> None:
    results = [R("a", "REAL", 0.2), R("b", "FAKE", 0.7), R("c", "UNCERTAIN", 0.5)]
    assert overall_verdict(results) == {
        "label": "FAKE",
        "fake_probability": 0.7,
        "rule": "any_fake",
    }
    assert overall_verdict([R("a", "REAL", 0.2), R("c", "UNCERTAIN", 0.5)])["label"] == "UNCERTAIN"
    assert overall_verdict([R("a", "REAL", 0.2), R("b", "REAL", 0.4)])["label"] == "REAL"


def test_abstaining_detectors_are_left_out() -> None:
    results = [R("a", "ABSTAIN", None), R("b", "REAL", 0.3)]
    assert overall_verdict(results)["label"] == "REAL"
    assert overall_verdict(results, MEAN)["fake_probability"] == pytest.approx(0.3)
    assert overall_verdict([R("a", "ABSTAIN", None)], MEAN) == {
        "label": "ABSTAIN",
        "fake_probability": None,
        "rule": "weighted_mean",
    }


def test_weighted_mean_uses_the_weights() -> None:
    fusion = FusionConfig(rule="weighted_mean", weights={"a": 3.0})
    results = [R("a", "REAL", 0.2), R("b", "FAKE", 0.9)]
    # (3 * 0.2 + 1 * 0.9) / 4 = 0.375: one confident FAKE is outvoted here, unlike any_fake.
    verdict = overall_verdict(results, fusion)
    assert verdict["fake_probability"] == pytest.approx(0.375)
    assert verdict["label"] == "REAL"
    assert overall_verdict(results)["label"] == "FAKE"


def test_weighted_mean_counts_uncertain_detectors_and_drops_zero_weights() -> None:
    fusion = FusionConfig(rule="weighted_mean", weights={"a": 0.0})
    results = [R("a", "FAKE", 1.0), R("b", "UNCERTAIN", 0.55), R("c", "REAL", 0.65)]
    verdict = overall_verdict(results, fusion)
    assert verdict["fake_probability"] == pytest.approx(0.6)
    assert verdict["label"] == "FAKE"
    only_zero = overall_verdict([R("a", "FAKE", 1.0)], fusion)
    assert only_zero["label"] == "ABSTAIN"


def test_weighted_mean_threshold_and_band() -> None:
    fusion = FusionConfig(rule="weighted_mean", threshold=0.7, uncertain_band=(0.4, 0.6))
    assert overall_verdict([R("a", "FAKE", 0.65)], fusion)["label"] == "REAL"
    assert overall_verdict([R("a", "FAKE", 0.5)], fusion)["label"] == "UNCERTAIN"
    assert overall_verdict([R("a", "FAKE", 0.7)], fusion)["label"] == "FAKE"


def test_fusion_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="negative"):
        FusionConfig(rule="weighted_mean", weights={"a": -1.0})
    with pytest.raises(ValidationError, match="uncertain_band"):
        FusionConfig(uncertain_band=(0.6, 0.4))
    with pytest.raises(ValidationError, match="rule"):
        FusionConfig.model_validate({"rule": "majority"})
    with pytest.raises(ValidationError, match=r"fusion\.weights names detectors"):
        Config.model_validate({"fusion": {"weights": {"nope": 1.0}}})


def test_config_default_keeps_any_fake() -> None:
    assert Config().fusion.rule == "any_fake"


def test_a_decisive_fake_decides_under_every_rule() -> None:
    declared = R("c2pa", "FAKE", 1.0, {"decisive": True, "message": "signed: generative AI"})
    confident_real = [R("a", "REAL", 0.01), R("b", "REAL", 0.02), R("c", "REAL", 0.0)]
    for fusion in (FusionConfig(), MEAN):
        verdict = overall_verdict([*confident_real, declared], fusion)
        assert verdict == {
            "label": "FAKE",
            "fake_probability": 1.0,
            "rule": fusion.rule,
            "decided_by": "c2pa",
            "reason": "signed: generative AI",
        }
    # Averaged like any score when not marked decisive.
    plain = R("c2pa", "FAKE", 1.0)
    assert overall_verdict([*confident_real, plain], MEAN)["label"] == "REAL"
    # A weight of 0 takes a detector out of weighted_mean, decisive or not.
    muted = FusionConfig(rule="weighted_mean", weights={"c2pa": 0.0})
    assert overall_verdict([*confident_real, declared], muted)["label"] == "REAL"
