"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors.evaluation import (
    binary_report,
    bootstrap,
    eer_threshold,
    equal_error_rate,
    expected_calibration_error,
    fit_platt,
    fpr_threshold,
    roc_auc,
    roc_curve,
    uncertain_band,
)

# Two REAL (0.1, 0.4) and two FAKE (0.35, 0.8): of the four (FAKE, REAL) pairs, three rank the
# FAKE higher -> AUC 3/4. At t = 0.4 one REAL and one FAKE are called FAKE, at t = 0.8 no REAL
# and one FAKE: FPR = FNR = 1/2 at t = 0.4 -> EER 1/2.
LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


def test_roc_points() -> None:
    roc = roc_curve(LABELS, SCORES)

    assert roc.thresholds[0] == math.inf
    assert list(roc.thresholds[1:]) == [0.8, 0.4, 0.35, 0.1]
    assert list(roc.fpr) == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert list(roc.tpr) == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_auc_by_hand() -> None:
    assert roc_auc(LABELS, SCORES) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.2, 0.9]) == 1.0
    assert roc_auc([0, 1], [0.9, 0.2]) == 0.0


def test_auc_counts_ties_as_half() -> None:
    # One (FAKE, REAL) pair tied, one ranked right: (0.5 + 1) / 2.
    assert roc_auc([0, 0, 1], [0.5, 0.2, 0.5]) == pytest.approx(0.75)
    assert roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


def test_auc_needs_both_labels() -> None:
    with pytest.raises(ValueError, match="both labels"):
        roc_auc([1, 1], [0.2, 0.3])


def test_eer_by_hand() -> None:
    assert equal_error_rate(LABELS, SCORES) == pytest.approx(0.5)
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0


def test_eer_interpolates_between_roc_points() -> None:
    # 4 REAL, 2 FAKE. Points (FPR, FNR): t=0.9 (0, 1/2), t=0.8 (1/4, 1/2), t=0.7 (1/4, 0).
    # FPR - FNR goes from -1/4 to +1/4 between the last two: halfway, EER = 1/4.
    labels = [1, 0, 1, 0, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]
    assert equal_error_rate(labels, scores) == pytest.approx(0.25)


def test_eer_threshold_is_halfway_to_the_next_score() -> None:
    # Minimising max(FPR, FNR): t = 0.8 (0, 0) on a separable set; halfway to 0.2 -> 0.5.
    assert eer_threshold([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.5)


def test_fpr_threshold_keeps_the_false_positive_rate() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.75, 0.6, 0.7, 0.8, 0.9]
    t = fpr_threshold(labels, scores, 0.0)
    assert t == pytest.approx((0.8 + 0.75) / 2)
    called = np.array(scores) >= t
    assert not called[:4].any()
    t25 = fpr_threshold(labels, scores, 0.25)
    assert t25 == pytest.approx((0.6 + 0.3) / 2)


def test_uncertain_band_holds_the_nearest_fraction() -> None:
    scores = [0.1, 0.45, 0.52, 0.6, 0.9]
    # Distances to 0.5: 0.4, 0.05, 0.02, 0.1, 0.4; the 2 nearest lie within 0.05.
    assert uncertain_band(scores, 0.5, 0.4) == pytest.approx((0.45, 0.55))
    assert uncertain_band(scores, 0.5, 0.0) is None


def test_ece_by_hand() -> None:
    # Bin [0.1, 0.2): p 0.1, 0.1, labels 0, 1 -> |0.5 - 0.1| = 0.4, weight 2/4.
    # Bin [0.9, 1.0]: p 0.9, 1.0, labels 1, 1 -> |1 - 0.95| = 0.05, weight 2/4.
    ece = expected_calibration_error([0, 1, 1, 1], [0.1, 0.1, 0.9, 1.0])
    assert ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.05)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_bootstrap_interval_of_a_constant_metric_is_a_point() -> None:
    est = bootstrap(lambda idx: 0.25, 10, resamples=50)
    assert (est.value, est.low, est.high, est.resamples) == (0.25, 0.25, 0.25, 50)


def test_bootstrap_mean_matches_its_sampling_distribution() -> None:
    values = np.r_[np.zeros(50), np.ones(50)]
    est = bootstrap(lambda idx: float(values[idx].mean()), 100, resamples=2000, seed=1)
    # The mean of 100 fair coins: standard error 0.05, so the 95% interval is about +- 0.1.
    assert est.value == 0.5
    assert est.low == pytest.approx(0.4, abs=0.03)
    assert est.high == pytest.approx(0.6, abs=0.03)


def test_bootstrap_is_seeded_and_skips_undefined_resamples() -> None:
    labels = np.array([0, 1])

    def auc(idx: np.ndarray) -> float | None:
        y = labels[idx]
        return roc_auc(y, y.astype(float)) if 0 < y.sum() < len(y) else None

    a = bootstrap(auc, 2, resamples=200, seed=3)
    b = bootstrap(auc, 2, resamples=200, seed=3)
    assert a == b
    # A resample of 2 clips holds both labels half the time.
    assert 60 < a.resamples < 140


def test_bootstrap_draws_whole_groups() -> None:
    # Two groups: every resample holds only whole groups, so the mean is 0, 0.5 or 1 exactly.
    values = np.array([0.0, 0.0, 1.0, 1.0])
    seen: set[float] = set()

    def mean(idx: np.ndarray) -> float:
        m = float(values[idx].mean())
        seen.add(m)
        return m

    bootstrap(mean, 4, groups=["a", "a", "b", "b"], resamples=100)
    assert seen <= {0.0, 0.5, 1.0}


def test_platt_is_monotone_and_finite_on_separable_data() -> None:
    cal = fit_platt([0, 0, 1, 1], [0.2, 0.3, 0.7, 0.8])
    assert 0 < cal.a < 50
    assert cal.apply(0.2) < cal.apply(0.5) < cal.apply(0.8)
    # Platt's smoothed targets: never fully certain.
    assert cal.apply(0.2) > 0.0
    assert cal.apply(0.8) < 1.0


def test_platt_gives_no_signal_to_a_backwards_ranking() -> None:
    cal = fit_platt([0, 0, 1, 1], [0.8, 0.7, 0.3, 0.2])
    assert cal.a == 0.0
    assert cal.apply(0.1) == pytest.approx(cal.apply(0.9))


def test_binary_report_counts_and_decisions() -> None:
    report = binary_report(
        labels=[0, 0, 1, 1, 1],
        probs=[0.1, 0.6, 0.9, 0.5, None],
        decisions=["REAL", "FAKE", "FAKE", "UNCERTAIN", "ABSTAIN"],
        resamples=20,
    )
    m = report["metrics"]
    assert (report["n"], report["n_scored"], report["n_decided"]) == (5, 4, 3)
    assert m["accuracy"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["precision"]["value"] == pytest.approx(1 / 2)
    assert m["recall"]["value"] == pytest.approx(1.0)
    assert m["abstention_rate"]["value"] == pytest.approx(2 / 5, abs=1e-4)
    # Scored: REAL 0.1, 0.6; FAKE 0.9, 0.5 -> pairs (0.9>0.1, 0.9>0.6, 0.5>0.1, 0.5<0.6): 3/4.
    assert m["auc"]["value"] == pytest.approx(0.75)
    low, high = m["auc"]["ci95"]
    assert low is not None
    assert high is not None
    assert low <= high
