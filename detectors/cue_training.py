"""Training ``face-cues-v1``: fit the logistic regression on the train split, calibrate on val,
measure on the held-out test split through the detector's own ``predict``, ship weights, model
card and manifest entry. Clips, groups, splits and the feature cache are ``detectors.training``'s,
so both trainable detectors split the same data the same way."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detectors.evaluation import binary_report
from detectors.face_cues import (
    CUES,
    KEY,
    CueModel,
    FaceCuesConfig,
    FaceCuesDetector,
    FaceCuesInput,
)
from detectors.manifest import register
from detectors.training import (
    GROUP_RULE,
    Clip,
    DatasetError,
    Features,
    ShipSettings,
    Split,
    Trainer,
    TrainJob,
    TrainParams,
    calibrate,
    card_data,
    card_header,
    card_results,
    data_summary,
    measure,
    predict_prepared,
    shipped_entry,
    split_clips,
    split_file,
    today,
    with_held_out,
    write_split_file,
)


@dataclass(frozen=True)
class FitParams:
    """The regression's settings: fixed in advance, not searched on any split."""

    l2: float = 3.0
    steps: int = 3000
    learning_rate: float = 0.1


def fit_logistic(cues: np.ndarray, labels: np.ndarray, params: FitParams) -> CueModel:
    """Standardise on these clips, then full-batch gradient descent on the L2-penalised log
    loss from zero: deterministic, no seed needed."""
    if len(np.unique(labels)) != 2:
        raise DatasetError("training needs clips of both labels with usable cues")
    mean = cues.mean(0)
    scale = cues.std(0)
    scale[scale < 1e-9] = 1.0  # a constant cue carries nothing; keep it harmless
    x = (cues - mean) / scale
    coef = np.zeros(x.shape[1])
    intercept = 0.0
    n = len(labels)
    for _ in range(params.steps):
        p = 1.0 / (1.0 + np.exp(-(x @ coef + intercept)))
        coef -= params.learning_rate * (x.T @ (p - labels) / n + params.l2 * coef / n)
        intercept -= params.learning_rate * float((p - labels).mean())
    return CueModel(mean, scale, coef, intercept)


def out_of_fold(
    clips: Sequence[Clip], features: Mapping[str, Features], params: FitParams
) -> list[tuple[str, float | None]]:
    """Leave one group out: each clip's (label, fake probability) from a regression fitted on
    every other group, so no clip is judged by a model that saw its person or source. The
    decision is the regression's own (FAKE at probability 0.5; no UNCERTAIN band); a clip
    without usable cues (no face) is ("ABSTAIN", None)."""
    rows = [
        (i, prepared.cues)
        for i, c in enumerate(clips)
        if isinstance(prepared := features[c.sha256].prepared, FaceCuesInput)
    ]
    if not rows:
        raise DatasetError("no clip has usable cues")
    usable = [i for i, _ in rows]
    cues = np.stack([x for _, x in rows])
    labels = np.array([clips[i].label for i in usable], dtype=np.float64)
    groups = np.array([clips[i].group for i in usable])
    scores = np.zeros(len(usable))
    for group in np.unique(groups):
        held = groups == group
        model = fit_logistic(cues[~held], labels[~held], params)
        scores[held] = model.logits(cues[held])
    result: list[tuple[str, float | None]] = [("ABSTAIN", None)] * len(clips)
    for i, score in zip(usable, scores, strict=True):
        result[i] = ("FAKE" if score >= 0 else "REAL", float(1.0 / (1.0 + np.exp(-score))))
    return result


def cross_validate(
    clips: Sequence[Clip],
    features: Mapping[str, Features],
    params: FitParams,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """``out_of_fold``'s predictions of the usable clips pooled into one report: the pooled ROC
    AUC, with a bootstrap interval over groups, uses every usable clip once, a steadier
    estimate than one small test split. (Raw scores from different fits are pooled
    uncalibrated, so the pooled AUC is if anything pessimistic.)"""
    predictions = out_of_fold(clips, features, params)
    kept = [(c, p) for c, p in zip(clips, predictions, strict=True) if p[1] is not None]
    report = binary_report(
        [c.label for c, _ in kept],
        [p for _, (_, p) in kept],
        [label for _, (label, _) in kept],
        groups=[c.group for c, _ in kept],
        resamples=resamples,
        seed=seed,
    )
    return report | {
        "groups": len({c.group for c, _ in kept}),
        "unusable": len(clips) - len(kept),
    }


def train_and_ship(
    clips: Sequence[Clip],
    splits: Sequence[Split],
    features: Mapping[str, Features],
    config: FaceCuesConfig,
    params: FitParams,
    settings: ShipSettings,
    seed: int,
) -> dict[str, Any]:
    """The whole run; returns the report the model card shows."""
    by_split = split_clips(clips, splits)

    def usable(split: Split) -> tuple[np.ndarray, np.ndarray]:
        rows = [
            (prepared.cues, c.label)
            for c in by_split[split]
            if isinstance(prepared := features[c.sha256].prepared, FaceCuesInput)
        ]
        if not rows:
            raise DatasetError(f"no clip of the {split} split has usable cues")
        return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=np.float64)

    train_x, train_y = usable("train")
    model = fit_logistic(train_x, train_y, params)
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{KEY}.json"
    card = out / f"{KEY}.md"
    weights.write_text(json.dumps(model.to_json(), indent=1) + "\n")

    val_x, val_y = usable("val")
    val_raw = 1.0 / (1.0 + np.exp(-model.logits(val_x)))
    calibrated = calibrate(
        [int(v) for v in val_y], val_raw, settings.target_fpr, settings.uncertain_fraction
    )
    entry = shipped_entry(KEY, weights, calibrated, card, config.feature_settings())
    register(out / "manifest.json", entry)

    # Measured the way the daemon runs it: weights and operating point loaded from the
    # manifest by sha256, the cached prepared inputs through predict.
    detector = FaceCuesDetector(
        FaceCuesConfig.model_validate(config.feature_settings() | {"weights": str(weights)})
    )
    detector.setup("cpu")
    measured = measure(
        lambda items: predict_prepared(detector, items),
        by_split,
        features,
        settings.resamples,
        seed,
    )
    register(out / "manifest.json", with_held_out(entry, measured["test"]))

    report = {
        "detector": KEY,
        "checkpoint": weights.name,
        "card": card.name,
        "sha256": entry.sha256,
        "settings": settings,
        "params": params,
        "seed": seed,
        "model": model,
        "train_clips": len(train_y),
        "operating_point": calibrated,
        **data_summary(clips, by_split, features, FaceCuesInput),
        "measured": measured,
        "date": today(),
    }
    write_split_file(split_file(card), KEY, clips, splits, features, settings, seed)
    card.write_text(model_card(report))
    return report


def model_card(report: Mapping[str, Any]) -> str:
    """The model card (markdown) of a ``train_and_ship`` report."""
    settings: ShipSettings = report["settings"]
    params: FitParams = report["params"]
    model: CueModel = report["model"]
    coef_rows = "\n".join(
        f"| `{name}` | {m:.4g} | {s:.4g} | {c:+.3f} |"
        for name, m, s, c in zip(CUES, model.mean, model.scale, model.coef, strict=True)
    )
    data = card_data(
        report, "Clips without usable cues (left out of training; ABSTAIN in evaluation):"
    )
    return f"""{card_header(report)}

## What it is

Twelve cues of the face measured over the first frames of a clip (`detectors/face_cues.py`:
detail, colour seams, landmark motion, mouth motion, light), standardised and weighed by a
logistic regression. The weights file is JSON: per cue the training mean and scale and one
coefficient, plus an intercept. Every verdict lists each cue and its share of the logit.

| cue | mean | scale | coefficient |
|---|---|---|---|
{coef_rows}

Intercept {model.intercept:+.3f}. Fit: L2-penalised log loss (l2 {params.l2}), full-batch
gradient descent ({params.steps} steps, rate {params.learning_rate}) from zero on the
{report["train_clips"]} usable training clips; the settings were fixed before any split was
scored.

{data}

### Split rule

{GROUP_RULE} Seed {report["seed"]}; target fractions val {settings.val_fraction:.2f}, test
{settings.test_fraction:.2f} per label (the same split as color-cues-lstm-v1 with the same seed).

{card_results(report, report["seed"])}

## Limitations

- About a hundred clips from a few dozen sources: the interval is wide, and other splits of
  the same clips score lower (see docs/accuracy.md). A measured baseline, not a validated
  product.
- The cues read the first {FaceCuesConfig().run_frames} frames only; a clip whose face appears
  later is not judged (ABSTAIN, no_face).
- Cues of sharpness and motion also follow resolution and compression: a heavily recompressed
  real clip can look "repainted".
"""


class FaceCuesTrainer(Trainer):
    """face-cues-v1: the logistic regression over the cues, fitted in one step; it can also
    only measure, leaving one group out at a time."""

    cross_validates = True

    def command_options(self, params: TrainParams, l2: float) -> str:
        return f" --l2 {l2}"

    def train(self, job: TrainJob) -> dict[str, Any]:
        return train_and_ship(
            job.clips,
            job.splits,
            job.features,
            job.config,
            FitParams(l2=job.l2),
            job.settings,
            job.params.seed,
        )

    def cross_validate(self, job: TrainJob) -> dict[str, Any]:
        return cross_validate(
            job.clips, job.features, FitParams(l2=job.l2), job.settings.resamples, job.params.seed
        )
