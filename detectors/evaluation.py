"""Metrics for binary detectors (FAKE = 1): ROC, AUC, EER, calibration, operating points, and
bootstrap confidence intervals that resample whole groups (people, sources), not clips.

ROC and AUC are scikit-learn's; the rest is numpy. No I/O. Scores are fake probabilities; a
clip is called FAKE at ``score >= t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detectors.manifest import Calibration

# Labels a detector or the fused verdict may give; only REAL and FAKE count as decisions.
DECIDED = ("REAL", "FAKE")


@dataclass(frozen=True)
class Roc:
    """ROC points in order of decreasing threshold; point ``i`` calls ``score >= thresholds[i]``
    FAKE. The first point (threshold +inf) calls nothing FAKE."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def _arrays(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> Any:
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-D and equal in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (REAL) or 1 (FAKE)")
    return y, s


def both_classes(labels: Sequence[int] | np.ndarray) -> bool:
    """Whether ``labels`` hold at least one REAL and one FAKE (AUC and EER need both)."""
    y = np.asarray(labels)
    return bool((y == 0).any() and (y == 1).any())


def roc_curve(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> Roc:
    """The ROC curve with one point per distinct score (tied scores move together)."""
    # Imported here: scikit-learn takes seconds to import, and only evaluation needs it.
    from sklearn.metrics import roc_curve as sk_roc_curve

    y, s = _arrays(labels, scores)
    if not both_classes(y):
        raise ValueError("ROC needs both labels")
    # Every distinct score kept (no dropped collinear points), so thresholds can be chosen
    # between any two of them.
    fpr, tpr, thresholds = sk_roc_curve(y, s, drop_intermediate=False)
    return Roc(fpr=fpr, tpr=tpr, thresholds=thresholds)


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: P(a random FAKE scores above a random REAL), ties count 1/2."""
    from sklearn.metrics import roc_auc_score

    y, s = _arrays(labels, scores)
    if not both_classes(y):
        raise ValueError("ROC needs both labels")
    return float(roc_auc_score(y, s))


def equal_error_rate(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> float:
    """The rate where false positives equal false negatives, linearly interpolated between the
    two ROC points that straddle it."""
    roc = roc_curve(labels, scores)
    fnr = 1.0 - roc.tpr
    gap = roc.fpr - fnr  # rises from -1 to +1 along the curve
    i = int(np.argmax(gap >= 0))
    if gap[i] == 0 or i == 0:
        return float(roc.fpr[i])
    w = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(roc.fpr[i - 1] + w * (roc.fpr[i] - roc.fpr[i - 1]))


def _between(roc: Roc, i: int, scores: np.ndarray) -> float:
    """A threshold that reproduces ROC point ``i`` with a margin on both sides: halfway between
    its score and the next lower distinct score, so it generalises better than a score itself."""
    t = float(roc.thresholds[i])
    if math.isinf(t):
        return float(np.nextafter(scores.max(), np.inf))
    lower = scores[scores < t]
    return t if lower.size == 0 else (t + float(lower.max())) / 2


def eer_threshold(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> float:
    """Operating threshold at the equal-error point: the ROC point minimising
    ``max(FPR, FNR)``, placed halfway to the next lower score."""
    y, s = _arrays(labels, scores)
    roc = roc_curve(y, s)
    worst = np.maximum(roc.fpr, 1.0 - roc.tpr)
    return _between(roc, int(np.argmin(worst)), s)


def fpr_threshold(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, target_fpr: float
) -> float:
    """Operating threshold with the highest recall whose false-positive rate is at most
    ``target_fpr``."""
    y, s = _arrays(labels, scores)
    roc = roc_curve(y, s)
    ok = np.flatnonzero(roc.fpr <= target_fpr)
    return _between(roc, int(ok[-1]), s)


def uncertain_band(
    scores: Sequence[float] | np.ndarray, threshold: float, fraction: float
) -> tuple[float, float] | None:
    """The interval around ``threshold`` that holds the ``fraction`` of ``scores`` nearest to it
    (so about that share of similar clips is answered UNCERTAIN); None for a zero fraction."""
    s = np.asarray(scores, dtype=np.float64)
    k = round(fraction * s.size)
    if k == 0:
        return None
    distance = float(np.sort(np.abs(s - threshold))[k - 1])
    return (max(0.0, threshold - distance), min(1.0, threshold + distance))


def expected_calibration_error(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, bins: int = 10
) -> float:
    """ECE over ``bins`` equal-width bins on [0, 1]: the share-weighted mean of
    ``|fraction FAKE - mean probability|`` per bin. Probability 1.0 falls in the last bin."""
    y, p = _arrays(labels, probs)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in np.unique(index):
        members = index == b
        total += members.sum() * abs(y[members].mean() - p[members].mean())
    return float(total / y.size)


def fit_platt(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, iterations: int = 100
) -> Calibration:
    """Platt scaling ``sigmoid(a * logit(p) + b)`` fitted by Newton's method with Platt's
    smoothed targets, which keep ``a`` finite on separable data. ``a`` is kept at or above 0:
    a detector that ranks backwards on validation data gets no signal, not an inverted one."""
    y, p = _arrays(labels, probs)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    x = _logit(p)
    a, b = 1.0, 0.0
    for _ in range(iterations):
        q = _sigmoid(a * x + b)
        grad = np.array([((q - target) * x).sum(), (q - target).sum()])
        w = q * (1 - q) + 1e-12
        hess = np.array([[(w * x * x).sum(), (w * x).sum()], [(w * x).sum(), w.sum()]])
        # A tiny ridge keeps the step defined when every logit is the same.
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        a, b = a - float(step[0]), b - float(step[1])
        if np.abs(step).max() < 1e-10:
            break
    if a < 0:
        a = 0.0
        b = float(_logit(np.array([target.mean()]))[0])
    return Calibration(a=a, b=b)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    result: np.ndarray = np.log(q / (1 - q))
    return result


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form never overflows, whatever the logit.
    result: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * x))
    return result


# --- reports with confidence intervals ---------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A metric on the whole set and its percentile bootstrap interval (None where undefined).
    ``resamples`` counts the resamples on which the metric was defined."""

    value: float | None
    low: float | None
    high: float | None
    resamples: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form, rounded to 4 places."""
        return {
            "value": _round(self.value),
            "ci95": [_round(self.low), _round(self.high)],
            "resamples": self.resamples,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


Metric = Callable[[np.ndarray], float | None]


def bootstrap(
    metric: Metric,
    n: int,
    groups: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> Estimate:
    """``metric(indices)`` on all ``n`` items and on ``resamples`` bootstrap resamples, with a 95%
    percentile interval. With ``groups``, whole groups are drawn with replacement, because clips
    of one person or source are not independent evidence."""
    everything = np.arange(n)
    value = metric(everything)
    if groups is None:
        clusters = [np.array([i]) for i in range(n)]
    else:
        if len(groups) != n:
            raise ValueError(f"{len(groups)} groups for {n} items")
        names = sorted(set(groups))
        clusters = [np.flatnonzero(np.asarray(groups) == g) for g in names]
    rng = np.random.default_rng(seed)
    samples: list[float] = []
    for _ in range(resamples):
        picked = rng.integers(0, len(clusters), len(clusters))
        result = metric(np.concatenate([clusters[i] for i in picked]))
        if result is not None:
            samples.append(result)
    if not samples:
        return Estimate(value, None, None, 0)
    low, high = np.percentile(samples, [2.5, 97.5])
    return Estimate(value, float(low), float(high), len(samples))


def binary_report(
    labels: Sequence[int],
    probs: Sequence[float | None],
    decisions: Sequence[str],
    groups: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric for one scorer on one set, with bootstrap intervals.

    ``probs`` may hold None (the scorer abstained); ``decisions`` are the scorer's labels
    (REAL, FAKE, UNCERTAIN, ABSTAIN). Ranking metrics (AUC, EER, ECE) use the clips with a
    probability; accuracy, precision and recall use the decided clips (REAL or FAKE);
    ``accuracy_all`` uses every clip, a clip not decided counting as wrong (an abstention is
    not a correct answer); the abstention rate is the share of clips not decided.
    """
    y = np.asarray(labels, dtype=np.int64)
    has_p = np.array([p is not None for p in probs])
    p = np.array([np.nan if v is None else v for v in probs], dtype=np.float64)
    said = np.array([1 if d == "FAKE" else 0 if d == "REAL" else -1 for d in decisions])
    if not (y.size == p.size == said.size):
        raise ValueError("labels, probs and decisions must have equal lengths")

    def scored(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = idx[has_p[idx]]
        return y[keep], p[keep]

    def auc(idx: np.ndarray) -> float | None:
        ys, ps = scored(idx)
        return roc_auc(ys, ps) if both_classes(ys) else None

    def eer(idx: np.ndarray) -> float | None:
        ys, ps = scored(idx)
        return equal_error_rate(ys, ps) if both_classes(ys) else None

    def ece(idx: np.ndarray) -> float | None:
        ys, ps = scored(idx)
        return expected_calibration_error(ys, ps) if ys.size else None

    def decided(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = idx[said[idx] >= 0]
        return y[keep], said[keep]

    def accuracy(idx: np.ndarray) -> float | None:
        ys, ss = decided(idx)
        return float((ys == ss).mean()) if ys.size else None

    def accuracy_all(idx: np.ndarray) -> float | None:
        return float((y[idx] == said[idx]).mean()) if idx.size else None

    def precision(idx: np.ndarray) -> float | None:
        ys, ss = decided(idx)
        called = ss == 1
        return float(ys[called].mean()) if called.any() else None

    def recall(idx: np.ndarray) -> float | None:
        ys, ss = decided(idx)
        fakes = ys == 1
        return float(ss[fakes].mean()) if fakes.any() else None

    def abstention(idx: np.ndarray) -> float | None:
        return float((said[idx] < 0).mean()) if idx.size else None

    metrics: dict[str, Metric] = {
        "auc": auc,
        "eer": eer,
        "accuracy": accuracy,
        "accuracy_all": accuracy_all,
        "precision": precision,
        "recall": recall,
        "ece": ece,
        "abstention_rate": abstention,
    }
    n = int(y.size)
    return {
        "n": n,
        "n_real": int((y == 0).sum()),
        "n_fake": int((y == 1).sum()),
        "n_scored": int(has_p.sum()),
        "n_decided": int((said >= 0).sum()),
        "n_uncertain": sum(d == "UNCERTAIN" for d in decisions),
        "n_abstained": sum(d not in ("REAL", "FAKE", "UNCERTAIN") for d in decisions),
        "metrics": {
            name: bootstrap(fn, n, groups, resamples, seed).as_dict()
            for name, fn in metrics.items()
        },
    }


def plot_report(report: dict[str, Any], path: Path) -> None:
    """ROC curves of every scorer of an ``eval`` report and, per scorer, the distribution of fake
    probabilities by true label, as one PNG."""
    # Imported here: matplotlib is only needed for this picture, and Agg needs no display.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["scorers"])
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        pairs = [
            (1 if c["label"] == "FAKE" else 0, _clip_probability(c, name)) for c in report["clips"]
        ]
        kept = [(y, p) for y, p in pairs if p is not None]
        series[name] = (np.array([y for y, _ in kept]), np.array([p for _, p in kept]))
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(5 * (1 + len(names)), 4.5))
    roc_ax = axes[0]
    roc_ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    for name, (y, p) in series.items():
        if both_classes(y):
            roc = roc_curve(y, p)
            auc = report["scorers"][name]["metrics"]["auc"]
            roc_ax.step(roc.fpr, roc.tpr, where="post", label=f"{name}: AUC {_ci_text(auc)}")
    roc_ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    roc_ax.legend(loc="lower right", fontsize=7)
    bins = np.linspace(0, 1, 21)
    for ax, (name, (y, p)) in zip(axes[1:], series.items(), strict=True):
        ax.hist(p[y == 0], bins=bins, alpha=0.6, label=f"REAL ({(y == 0).sum()})")
        ax.hist(p[y == 1], bins=bins, alpha=0.6, label=f"FAKE ({(y == 1).sum()})")
        ax.set(xlabel="fake probability", ylabel="clips", title=name)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report.get('data', '')}: {report.get('selection', '')}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clip_probability(clip: dict[str, Any], scorer: str) -> float | None:
    result = clip["results"].get(scorer) or (clip["fused"] if scorer.startswith("fused") else {})
    value = result.get("p", result.get("fake_probability"))
    return None if value is None else float(value)


def _ci_text(metric: dict[str, Any]) -> str:
    low, high = metric["ci95"]
    interval = "" if low is None else f" [{low:.2f}, {high:.2f}]"
    return f"{metric['value']:.3f}{interval}"
