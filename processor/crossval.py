"""``drishtiksha eval --cross-validate``: the headline figure, leave one group out over a whole
labels CSV.

Every clip is judged by its detector's training recipe refitted on all the other groups (people,
sources), so no clip is judged by a model that saw its person or source, and every clip counts
once: a steadier figure than one small held-out split, and not one a lucky split can flatter.
The out-of-fold votes are scored as ``eval`` scores a detector (AUC, EER, accuracy,
abstentions, each with a bootstrap interval over groups, and per source dataset) and, when
several detectors take part, fused by the configured rule. The report is what README,
docs/accuracy.md and the weights manifest quote (``headline``, ``held_out``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectors.evaluation import binary_report
from detectors.manifest import HeldOut, read_manifest, register
from detectors.training import LABEL_NAMES, Clip, Features, per_dataset
from processor.config import FusionConfig
from processor.verdict import DetectorVote, overall_verdict

SCHEMA = "drishtiksha.eval/1"
METHOD = "leave one group out"

Predictions = list[tuple[str, float | None]]


@dataclass(frozen=True)
class Recipe:
    """How one detector is refitted per fold, and what its out-of-fold decision is."""

    describe: str
    out_of_fold: Callable[[Sequence[Clip], Mapping[str, Features]], Predictions]


def recipes() -> dict[str, Recipe]:
    """The detectors whose training is cheap enough to run once per group, by key."""
    from detectors import cue_training
    from detectors.face_cues import KEY as FACE_KEY

    params = cue_training.FitParams()
    return {
        FACE_KEY: Recipe(
            describe=f"the logistic regression refitted on every other group (l2 {params.l2}, "
            f"{params.steps} steps); FAKE at its probability 0.5, no UNCERTAIN band; a clip "
            "without usable cues (no face) is ABSTAIN",
            out_of_fold=lambda clips, features: cue_training.out_of_fold(clips, features, params),
        )
    }


def build_report(
    clips: Sequence[Clip],
    votes: Mapping[str, Predictions],
    detectors: Mapping[str, Mapping[str, Any]],
    fusion: FusionConfig,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """The report of out-of-fold ``votes`` (per detector key, one per clip): every metric with
    its interval, per source dataset, the sources where fewer than half the clips were judged
    right, and every clip's votes. With more than one detector, their fusion is a scorer too."""
    scored: dict[str, Predictions] = {key: list(preds) for key, preds in votes.items()}
    fused: list[dict[str, Any] | None] = [None] * len(clips)
    if len(votes) > 1:
        fused = [
            overall_verdict([DetectorVote(k, *votes[k][i]) for k in votes], fusion)
            for i in range(len(clips))
        ]
        scored[f"fused ({fusion.rule})"] = [
            (f["label"], f["fake_probability"]) for f in fused if f is not None
        ]
    labels = [c.label for c in clips]
    groups = [c.group for c in clips]
    scorers: dict[str, Any] = {}
    for name, preds in scored.items():
        sources = per_dataset(clips, preds)
        scorers[name] = binary_report(
            labels, [p for _, p in preds], [lab for lab, _ in preds], groups, resamples, seed
        ) | {
            "per_dataset": sources,
            "sources_below_half": sorted(d for d, r in sources.items() if r["accuracy_all"] < 0.5),
        }
    return {
        "schema": SCHEMA,
        "method": METHOD,
        "selection": f"every clip, {METHOD} ({len(set(groups))} groups)",
        "groups": len(set(groups)),
        "bootstrap": {"resamples": resamples, "seed": seed, "unit": "group"},
        "detectors": {key: dict(info) for key, info in detectors.items()},
        "fusion": fusion.model_dump(mode="json") if len(votes) > 1 else None,
        "scorers": scorers,
        "clips": [
            {
                "file": c.file,
                "sha256": c.sha256,
                "label": LABEL_NAMES[c.label],
                "dataset": c.dataset,
                "group": c.group,
                "results": {k: {"label": votes[k][i][0], "p": votes[k][i][1]} for k in votes},
                "fused": fused[i],
            }
            for i, c in enumerate(clips)
        ],
    }


def headline(report: Mapping[str, Any], scorer: str) -> str:
    """How documents quote a scorer's AUC: ``ROC AUC 0.62 [0.54, 0.70]``."""
    auc = report["scorers"][scorer]["metrics"]["auc"]
    low, high = auc["ci95"]
    return f"ROC AUC {auc['value']:.2f} [{low:.2f}, {high:.2f}]"


def held_out(report: Mapping[str, Any], scorer: str, report_path: Path, manifest: Path) -> HeldOut:
    """A manifest entry's ``held_out`` from the report: the AUC, its interval, the clips it was
    measured on, and the report's path relative to the manifest's folder."""
    sc = report["scorers"][scorer]
    auc = sc["metrics"]["auc"]
    low, high = auc["ci95"]
    if auc["value"] is None or low is None or high is None:
        raise ValueError(f"{scorer}: the report has no AUC interval to record")
    return HeldOut(
        roc_auc=auc["value"],
        roc_auc_ci95=(low, high),
        clips=sc["n_scored"],
        report=os.path.relpath(report_path.resolve(), manifest.parent.resolve()),
    )


def record_held_out(manifest: Path, report: Mapping[str, Any], report_path: Path) -> list[str]:
    """Set ``held_out`` of each cross-validated detector's default entry in ``manifest`` from
    the report; returns the detectors updated."""
    updated = []
    for key in report["detectors"]:
        entry = read_manifest(manifest).default_entry(key)
        figure = held_out(report, key, report_path, manifest)
        register(manifest, entry.model_copy(update={"held_out": figure}))
        updated.append(key)
    return updated


def markdown_summary(report: Mapping[str, Any], scorer: str) -> str:
    """The report's figures for one scorer as docs/accuracy.md shows them: the metrics with
    their intervals, then per source dataset (every row of the report, none chosen)."""
    from detectors.training import metrics_table

    sc = report["scorers"][scorer]
    lines = [
        f"`{scorer}`, {report['selection']}: {sc['n']} clips ({sc['n_real']} REAL, "
        f"{sc['n_fake']} FAKE), {sc['n_scored']} with a probability, {sc['n_abstained']} "
        f"abstained (ABSTAIN: no usable face), {sc['n_uncertain']} UNCERTAIN.",
        "",
        metrics_table(sc),
        "",
        "| source dataset | label | clips | decided | right | accuracy (every clip) "
        "| mean P(fake) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in sc["per_dataset"].items():
        mean = "-" if r["mean_probability"] is None else f"{r['mean_probability']:.2f}"
        below = " (below 0.5)" if r["accuracy_all"] < 0.5 else ""
        lines.append(
            f"| {name} | {r['label']} | {r['n']} | {r['decided']} | {r['correct']} | "
            f"{r['accuracy_all']:.2f}{below} | {mean} |"
        )
    return "\n".join(lines)
