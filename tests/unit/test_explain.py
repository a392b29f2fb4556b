"""Detectors explain their results in plain words; the verdict gathers those words."""

from __future__ import annotations

import datetime as dt

from detectors.base import DetectorResult, Label
from detectors.face_cues import FaceCuesDetector
from detectors.provenance import ProvenanceDetector
from processor.verdict import explanation
from storage.queue import StoredResult

HELD_OUT = {"roc_auc": 0.66, "roc_auc_ci95": [0.56, 0.81], "clips": 26, "report": "x.md"}


def cues(**shares: float) -> dict[str, dict[str, float]]:
    return {name: {"value": 0.0, "logit_share": share} for name, share in shares.items()}


def test_face_cues_names_its_strongest_cues_and_how_well_it_ranks() -> None:
    result = DetectorResult(
        Label.FAKE,
        0.78,
        0.54,
        details={
            "cues": cues(face_frame_sharpness=0.9, mouth_vs_eye_motion=0.5, luma_gap=-1.2),
            "operating_point": {"held_out": HELD_OUT},
        },
    )
    said = FaceCuesDetector.explain(result)
    assert "78%" in said
    assert (
        "What weighed most towards fake: how sharp the face is against the rest of the frame "
        "and how much the mouth moves against the eyes." in said
    )
    assert "about 7 times in 10" in said
    assert "brightness" not in said  # it pushed towards real


def test_provenance_says_what_the_credentials_declare() -> None:
    declared = DetectorResult(
        Label.FAKE,
        1.0,
        1.0,
        details={
            "reason": "declared_generative_ai",
            "message": "content credentials signed by test signer (valid) declare "
            "trainedAlgorithmicMedia",
        },
    )
    assert ProvenanceDetector.explain(declared).startswith("Content credentials signed by")
    none = DetectorResult(Label.ABSTAIN, None, 1.0, details={"reason": "no_manifest"})
    assert "says nothing either way" in ProvenanceDetector.explain(none)


def stored(detector: str, label: str, p: float | None, details: dict[str, object]) -> StoredResult:
    now = dt.datetime.now(dt.UTC)
    return StoredResult("j", detector, "1", "w", label, p, 0.5, [], dict(details), 0.1, None, now)


def test_the_verdict_explains_by_the_detectors_behind_it() -> None:
    results = [
        stored("face-cues-v1", "FAKE", 0.8, {"cues": cues(chroma_gap=1.0)}),
        stored("c2pa-provenance", "ABSTAIN", None, {"reason": "no_manifest"}),
    ]
    said = explanation({"label": "FAKE", "fake_probability": 0.8}, results)
    assert said.startswith("Likely manipulated. face-cues-v1 puts the chance")
    assert "C2PA" not in said  # an abstention did not make the verdict
    unknown = [stored("someone-elses", "REAL", 0.1, {})]
    assert explanation({"label": "REAL"}, unknown).startswith("No sign of manipulation found.")
