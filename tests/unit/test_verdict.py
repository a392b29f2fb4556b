"""The warning a verdict carries about the weights behind it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from processor.verdict import weights_warning
from storage.queue import StoredResult


def stored(detector: str, weights: str, held_out: dict[str, Any] | None = None) -> StoredResult:
    details = {"operating_point": {"held_out": held_out}} if held_out is not None else {}
    return StoredResult(
        job_id="j",
        detector=detector,
        version="1",
        weights_id=weights,
        label="REAL",
        fake_probability=0.2,
        threshold=0.5,
        frame_scores=[],
        details=details,
        elapsed_s=0.1,
        cached_from_job=None,
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )


def test_measured_weights_whose_interval_clears_chance_need_no_warning() -> None:
    strong = {"roc_auc": 0.83, "roc_auc_ci95": [0.67, 0.94], "clips": 26, "report": "x.md"}
    assert weights_warning([stored("a", "ab" * 32, strong), stored("b", "cd" * 32)]) is None


def test_dummy_and_weak_weights_are_named() -> None:
    weak = {"roc_auc": 0.607, "roc_auc_ci95": [0.422, 0.798], "clips": 26, "report": "x.md"}
    warning = weights_warning([stored("a", "dummy"), stored("b", "ab" * 32, weak)])
    assert warning is not None
    assert "weights: dummy for a" in warning
    assert "b measured ROC AUC 0.61 [0.42, 0.80] on 26 held-out clips" in warning
    assert "chance" in warning
