"""The leave-one-group-out report: its scorers, fusion of several detectors' out-of-fold votes,
abstentions, and the figures documents quote from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from detectors.training import Clip
from processor.config import FusionConfig
from processor.crossval import build_report, headline, held_out


def _clips() -> list[Clip]:
    rows = [
        (0, "film", "a"),
        (0, "film", "b"),
        (1, "swap", "a"),
        (1, "swap", "b"),
        (0, "mead", "c"),
    ]
    return [
        Clip(Path(f"/x/{i}.mp4"), f"{i}.mp4", label, dataset, f"{i:064x}", group=group)
        for i, (label, dataset, group) in enumerate(rows)
    ]


VOTES = {
    "a": [("REAL", 0.1), ("FAKE", 0.7), ("FAKE", 0.8), ("REAL", 0.4), ("ABSTAIN", None)],
    "b": [("REAL", 0.2), ("REAL", 0.3), ("REAL", 0.45), ("FAKE", 0.9), ("FAKE", 0.6)],
}


def test_fusion_of_out_of_fold_votes_is_a_scorer_and_abstentions_count_as_wrong() -> None:
    report = build_report(_clips(), VOTES, {"a": {}, "b": {}}, FusionConfig(), resamples=20, seed=0)
    assert list(report["scorers"]) == ["a", "b", "fused (any_fake)"]
    a = report["scorers"]["a"]
    assert (a["n"], a["n_scored"], a["n_decided"], a["n_abstained"]) == (5, 4, 4, 1)
    # a: right on clips 0 and 2 of its 4 decisions; the abstention is not right either.
    assert a["metrics"]["accuracy"]["value"] == pytest.approx(0.5)
    assert a["metrics"]["accuracy_all"]["value"] == pytest.approx(0.4)
    assert a["per_dataset"]["mead"]["accuracy_all"] == 0.0
    assert a["sources_below_half"] == ["mead"]
    # any_fake: FAKE when either says FAKE, with the higher probability.
    fused = [c["fused"] for c in report["clips"]]
    assert [f["label"] for f in fused] == ["REAL", "FAKE", "FAKE", "FAKE", "FAKE"]
    assert [f["fake_probability"] for f in fused] == [0.2, 0.7, 0.8, 0.9, 0.6]
    assert report["groups"] == 3
    assert report["fusion"]["rule"] == "any_fake"


def test_documents_quote_the_report_as_written(tmp_path: Path) -> None:
    report = build_report(_clips(), {"a": VOTES["a"]}, {"a": {}}, FusionConfig(), 20, 0)
    assert report["fusion"] is None
    auc = report["scorers"]["a"]["metrics"]["auc"]
    low, high = auc["ci95"]
    assert headline(report, "a") == f"ROC AUC {auc['value']:.2f} [{low:.2f}, {high:.2f}]"
    figure = held_out(
        report, "a", tmp_path / "docs" / "reports" / "a.json", tmp_path / "weights" / "m.json"
    )
    assert (figure.roc_auc, figure.clips) == (auc["value"], 4)
    assert figure.report == "../docs/reports/a.json"
