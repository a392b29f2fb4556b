"""Tables for the report from results.json, and the committed summary of the study.

Prints markdown: the table of every feature set, the nested selection, the controls, the
DeepFaceLive pair comparisons and, for each set named on the command line, its per-source
accuracy and coefficients. With ``--json PATH`` it also writes the summary that
docs/reports/signals-research.json holds (no per-clip scores; figures rounded to 3 places,
as the tables show them).

Run from the repository root (after evaluate*.py):
    uv run python -m docs.research.signals.summarize [--best "fc+av_long"] [--json PATH] [SET...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docs.research.signals.paths import P, add_args, apply

BEST = "fc+av_long"
# The study's target for a fused LOGO score (docs/accuracy.md).
TARGET = {"auc_at_least": 0.80, "auc_ci95_low_above": 0.70}
BATCHES = {
    1: "evaluate.py: fixed before any result was seen",
    2: "evaluate_extra.py: added after batch 1's results were seen",
    3: "evaluate_long.py: long-window features, added after batches 1-2 were seen",
    4: "evaluate_final.py: controls around the best set, after batches 1-3 were seen",
    5: "evaluate_pairs.py: the lead's pair comparisons, after batches 1-4 (nothing fitted)",
}
COMMANDS = [
    "uv run python -m docs.research.signals.extract --workers 2 --mesh-model MODEL",
    "uv run python -m docs.research.signals.extract_long --workers 2 --mesh-model MODEL",
    "uv run python -m docs.research.signals.evaluate",
    "uv run python -m docs.research.signals.evaluate_extra",
    "uv run python -m docs.research.signals.evaluate_long",
    "uv run python -m docs.research.signals.evaluate_final",
    "uv run python -m docs.research.signals.evaluate_pairs",
    "uv run python -m docs.research.signals.summarize --json docs/reports/signals-research.json",
]
MESH_MODEL = {
    "file": "mediapipe/modules/face_landmark/face_landmark.tflite",
    "from": "mediapipe==0.10.21 wheel (cp311 manylinux_2_28_x86_64)",
    "sha256": "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
    "licence": "Apache-2.0, mediapipe-0.10.21.dist-info/LICENSE in the wheel",
}


def r3(x: Any) -> Any:
    """Round a figure (or a list of figures) to 3 places; None and strings pass."""
    if isinstance(x, list | tuple):
        return [r3(v) for v in x]
    if isinstance(x, float):
        return round(x, 3)
    return x


def set_summary(v: dict[str, Any]) -> dict[str, Any]:
    batch = v.get("batch", 1)
    pair = v["family_auc"].get("DFL pairs swap>orig")
    return {
        "batch": batch,
        "fixed_before_results": batch == 1,
        "auc": r3(v["auc"]),
        "auc_ci95": r3(v["auc_ci95"]),
        "accuracy_calibrated": r3(v["acc_cal"]),
        "accuracy_calibrated_ci95": r3(v["acc_cal_ci95"]),
        "accuracy_raw": r3(v["acc_raw"]),
        "sources_below_half": v["n_sources_below_half_cal"],
        "sources": len(v["per_dataset_cal"]) if "per_dataset_cal" in v else None,
        "loso_auc": r3(v.get("loso_auc")),
        "dfl_pair_share_swap_above_original": r3(pair[0]) if pair else None,
        "dfl_pairs": pair[1] if pair else None,
        "family_auc": {k: r3(a) for k, (a, _n) in v["family_auc"].items() if "pairs" not in k},
        "seconds_per_clip": r3(v["seconds_per_clip"]),
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), no GPU"


def head() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summary(r: dict[str, Any], best: str, date: str, host: str) -> dict[str, Any]:
    d = r["_diagnostics"]
    sets = {k: set_summary(v) for k, v in r.items() if not k.startswith("_")}
    nested = d["nested_selection"]
    b = r[best]
    data = P.labels
    return {
        "schema": "drishtiksha.signals-research/1",
        "title": "New signals tried: face mesh, texture, audio-visual sync",
        "date": date,
        "machine": host,
        "data": str(data),
        "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        "clips": len(b["oof_raw_p"]),
        "groups": sum(nested["chosen_per_fold"].values()),
        "repository_head_when_summarized": head(),
        "method": (
            "features over the first 48 frames (face-cues-v1's run; the _long sets: up to "
            "300 frames, 10 s, at 640 px); "
            "leave one group out over every clip; per fold: median imputation with missing "
            "flags, standardisation, L2 logistic regression C=1/3 (fixed in advance), Platt "
            "calibration on inner 5-fold group-wise out-of-fold logits; AUC and accuracy "
            "intervals by bootstrap over groups (1000 resamples, seed 0); LOSO: leave one "
            "source out (sources linked through shared groups merged)"
        ),
        "target": TARGET,
        "target_reached": any(
            s["auc"] >= TARGET["auc_at_least"] and s["auc_ci95"][0] > TARGET["auc_ci95_low_above"]
            for s in sets.values()
        ),
        "batches": {str(k): v for k, v in BATCHES.items()},
        "mesh_model": MESH_MODEL,
        "commands": COMMANDS,
        "sets": sets,
        "best": {
            "set": best,
            "chosen": "after seeing results on the same clips (optimistic)",
            "coefficients_full_fit_standardised": b["coef_full_fit"],
            "sources_below_half": b["sources_below_half_cal"],
            "auc_by_C": {k: r3(a) for k, (a, _ci) in d["fc+av_long_C_sensitivity"].items()},
        },
        "nested_selection": {
            "what": (
                "inside each outer fold, the candidate set with the best inner 5-fold "
                "group-wise AUC on the training groups is chosen, fitted and applied"
            ),
            "candidates": 9,
            "auc": r3(nested["auc"]),
            "auc_ci95": r3(nested["auc_ci95"]),
            "accuracy_raw": r3(nested["acc_raw"]),
            "chosen_per_fold": nested["chosen_per_fold"],
            "clips_scored_unlike_best": nested.get("clips_scored_unlike_fc+av_long"),
        },
        "audio_present_by_label": d["audio_present_by_label"],
        "univariate_auc": {
            k: d["univariate_auc"][k][0]
            for k in (
                "fc:face_fraction",
                "av_long:audio_energy_sd(nan->0)",
                "mesh_dyn:jitter_all",
                "tex:boundary_grad",
            )
        },
        "dfl_pairs": d.get("dfl_pairs"),
        "seconds_per_clip_by_stage": d["seconds_per_clip_mean"]
        | {f"long_{k}": v for k, v in d["seconds_per_clip_long"].items()},
        "notes": {
            "dfl_pair_share": (
                "share of the matched DeepFaceLive pairs (original and swap halves of one "
                "demo) where the swap scores strictly above its original; ties count as not "
                "above (av and av_long: 0, every pair tied, the demos have no usable audio)"
            ),
            "seconds_per_clip": (
                "mean wall time per clip of the stages a set needs, measured with 2 worker "
                "processes on the shared machine above; the face finding and face-cues "
                "measurement (face_find+fc) dominate"
            ),
            "sources": "source datasets (labels.csv 'dataset'); below 0.5: calibrated accuracy",
        },
    }


def markdown(r: dict[str, Any], s: dict[str, Any], details: list[str]) -> str:
    out = [
        "| feature set | batch | LOGO ROC AUC [95% CI] | accuracy, calibrated in fold [95% CI] "
        "| sources below 0.5 | LOSO AUC | DFL pairs swap > original | s/clip |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, v in s["sets"].items():
        lo, hi = v["auc_ci95"]
        clo, chi = v["accuracy_calibrated_ci95"]
        loso = "-" if v["loso_auc"] is None else f"{v['loso_auc']:.3f}"
        pair = v["dfl_pair_share_swap_above_original"]
        fixed = "" if v["fixed_before_results"] else " (after)"
        out.append(
            f"| {k} | {v['batch']}{fixed} | {v['auc']:.3f} [{lo:.3f}, {hi:.3f}] "
            f"| {v['accuracy_calibrated']:.3f} [{clo:.3f}, {chi:.3f}] "
            f"| {v['sources_below_half']} of {v['sources']} | {loso} "
            f"| {'-' if pair is None else f'{pair:.3f}'} | {v['seconds_per_clip']:.2f} |"
        )
    n = s["nested_selection"]
    lo, hi = n["auc_ci95"]
    out += ["", f"Nested selection: AUC {n['auc']:.3f} [{lo:.3f}, {hi:.3f}]; chosen per fold:"]
    out.append(", ".join(f"{k} {c}" for k, c in n["chosen_per_fold"].items()))
    if s["dfl_pairs"]:
        out += [
            "",
            "| feature | pairs | swap lower | Wilcoxon p | pooled AUC |",
            "|---|---|---|---|---|",
        ]
        for k, v in s["dfl_pairs"].items():
            out.append(
                f"| {k} | {v['pairs']} | {v['swap_lower']} | {v['wilcoxon_p']} "
                f"| {v['pooled_auc_all_clips']:.3f} |"
            )
    for name in details:
        v = r[name]
        out += ["", f"### {name}", f"families (same pipeline both labels): {v['family_auc']}"]
        out += ["| source | label | n | right | acc | mean P(fake) |", "|---|---|---|---|---|---|"]
        for d, x in v["per_dataset_cal"].items():
            flag = " (below 0.5)" if x["accuracy_all"] < 0.5 else ""
            out.append(
                f"| {d} | {x['label']} | {x['n']} | {x['correct']} "
                f"| {x['accuracy_all']:.2f}{flag} | {x['mean_probability']:.2f} |"
            )
        if "coef_full_fit" in v:
            out.append("coefficients (full-data fit, standardised):")
            for c, w in sorted(v["coef_full_fit"].items(), key=lambda kv: -abs(kv[1])):
                out.append(f"  {w:+.3f} {c}")
        if "meta_coef" in v:
            out.append(f"meta: {v['meta_coef']}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_args(ap)
    ap.add_argument("sets", nargs="*", help="sets to detail (per source, coefficients)")
    ap.add_argument("--best", default=BEST, help="the set whose coefficients the JSON keeps")
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    ap.add_argument("--date", default=datetime.now(UTC).date().isoformat())
    ap.add_argument("--machine", default=None, help="where the study ran (default: this host)")
    args = ap.parse_args()
    apply(args)
    r = json.loads(P.results.read_text())
    s = summary(r, args.best, args.date, args.machine or machine())
    print(markdown(r, s, args.sets))
    if args.json is not None:
        args.json.write_text(json.dumps(s, indent=1) + "\n")


if __name__ == "__main__":
    main()
