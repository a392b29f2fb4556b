"""Leave-one-group-out evaluation of the candidate signals, alone and with face-cues-v1.

Everything fitted inside each outer fold (training groups only): median imputation with
missing-value flags, standardisation (clipped to +-5), logistic regression with C = 1/3 (the
product's L2 3.0, fixed in advance; no search), Platt calibration fitted on inner 5-fold
group-wise out-of-fold logits of the training groups, and for stacking the meta regression
fitted on those same inner out-of-fold logits. No feature selection. Metrics and intervals via
the product's detectors.evaluation.binary_report (bootstrap over groups, 1000 resamples, seed 0)
and per source via detectors.training.per_dataset, as processor/crossval.py does.

Run from the repository root (reads <work-dir>/cache, writes <work-dir>/results.json and prints
the table; RESAMPLES=n in the environment for a quick look):
    uv run python -m docs.research.signals.evaluate [--labels CSV] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import operator
import os
import time
import warnings

import numpy as np
from sklearn.model_selection import GroupKFold

from detectors.evaluation import binary_report
from detectors.training import LABELS, Clip, per_dataset
from docs.research.signals.features import all_features
from docs.research.signals.paths import P, add_args, apply

warnings.filterwarnings("ignore")
C = 1.0 / 3.0
RESAMPLES, SEED = int(os.environ.get("RESAMPLES", 1000)), 0


def parse_args(doc: str | None) -> argparse.Namespace:
    """The common command line of the evaluate*.py scripts (paths only)."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_args(ap)
    args = ap.parse_args()
    apply(args)
    return args


def rows_of_csv():
    with P.labels.open() as f:
        return list(csv.DictReader(f))


def load():
    rows = rows_of_csv()
    clips, blocks, timing = [], [], []
    if os.environ.get("PARTIAL"):
        rows = [r for r in rows if (P.cache / f"{r['sha256']}.npz").exists()]
    for r in rows:
        clips.append(
            Clip(
                path=P.labels.parent / r["file"],
                file=r["file"],
                label=LABELS[r["label"]],
                dataset=r["dataset"],
                sha256=r["sha256"],
                group=r["group"],
            )
        )
        d = np.load(P.cache / f"{r['sha256']}.npz")
        blocks.append(all_features(d))
        timing.append(d["timing"])
    return clips, blocks, np.array(timing)


def matrix(blocks, names):
    cols, X = [], []
    for b in blocks:
        row = []
        for n in names:
            _fn, v = b[n]
            row.append(v)
        X.append(np.concatenate(row))
    for n in names:
        cols += [f"{n}:{c}" for c in blocks[0][n][0]]
    return np.array(X, float), cols


class Model:
    """impute (train medians) + missing flags -> standardise (clip +-5) -> L2 logistic."""

    def fit(self, X, y):
        self.med = np.nanmedian(X, 0)
        self.med = np.where(np.isfinite(self.med), self.med, 0.0)
        self.flag_cols = np.where(np.isnan(X).any(0) & ~np.isnan(X).all(0))[0]
        Z = self._z(X, fit=True)
        self.lr = FastLR(C=C).fit(Z, y)
        return self

    def _z(self, X, fit=False):
        M = np.isnan(X)
        Xi = np.where(M, self.med, X)
        # one flag per block of columns that go missing together (per column, deduplicated)
        F = M[:, self.flag_cols].astype(float)
        Z = np.hstack([Xi, F])
        if fit:
            self.mu, self.sd = Z.mean(0), Z.std(0)
            self.sd[self.sd < 1e-9] = 1.0
        return np.clip((Z - self.mu) / self.sd, -5, 5)

    def logit(self, X):
        return self.lr.decision_function(self._z(X))


class FastLR:
    """L2 logistic regression by Newton's method: sum log loss + ||w||^2 / (2C), intercept
    unpenalised (sklearn's LogisticRegression objective), a few ms per fit."""

    def __init__(self, C=1.0, iters=25):
        self.C, self.iters = C, iters

    def fit(self, X, y):
        X = np.asarray(X, float)
        n, k = X.shape
        A = np.hstack([X, np.ones((n, 1))])
        w = np.zeros(k + 1)
        pen = np.full(k + 1, 1.0 / self.C)
        pen[-1] = 0.0
        for _ in range(self.iters):
            p = 1 / (1 + np.exp(-np.clip(A @ w, -30, 30)))
            g = A.T @ (p - y) + pen * w
            H = (A * (p * (1 - p))[:, None]).T @ A + np.diag(pen + 1e-9)
            step = np.linalg.solve(H, g)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        self.coef_ = w[None, :k]
        self.intercept_ = w[k:]
        return self

    def decision_function(self, X):
        return np.asarray(X, float) @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X):
        p = 1 / (1 + np.exp(-self.decision_function(X)))
        return np.column_stack([1 - p, p])


def inner_oof(X, y, g, fit_fn, k=5):
    """Out-of-fold logits over the training groups (GroupKFold k)."""
    out = np.zeros(len(y))
    for tr, te in GroupKFold(n_splits=min(k, len(np.unique(g)))).split(X, y, g):
        if len(np.unique(y[tr])) < 2:
            out[te] = 0.0
            continue
        out[te] = fit_fn(X[tr], y[tr]).logit(X[te])
    return out


def platt(s, y):
    return FastLR(C=1e4).fit(s[:, None], y)


def logo_single(X, y, groups, outer=None):
    """Concatenated-feature model: raw logits, calibrated probabilities (Platt inside the fold)."""
    outer = groups if outer is None else outer
    raw = np.zeros(len(y))
    cal = np.zeros(len(y))
    for grp in np.unique(outer):
        te = outer == grp
        tr = ~te
        m = Model().fit(X[tr], y[tr])
        raw[te] = m.logit(X[te])
        oof = inner_oof(X[tr], y[tr], groups[tr], lambda a, b: Model().fit(a, b))
        cal[te] = platt(oof, y[tr]).predict_proba(raw[te][:, None])[:, 1]
    return raw, cal


def logo_forest(X, y, groups):
    """Random forest, parameters fixed in advance (300 trees, min leaf 3, sqrt features,
    seed 0), on train-median-imputed features; decision at its probability 0.5."""
    from sklearn.ensemble import RandomForestClassifier

    p = np.zeros(len(y))
    for grp in np.unique(groups):
        te = groups == grp
        tr = ~te
        med = np.nanmedian(X[tr], 0)
        med = np.where(np.isfinite(med), med, 0.0)
        Xtr, Xte = np.where(np.isnan(X[tr]), med, X[tr]), np.where(np.isnan(X[te]), med, X[te])
        rf = RandomForestClassifier(
            n_estimators=300, min_samples_leaf=3, max_features="sqrt", random_state=0, n_jobs=2
        ).fit(Xtr, y[tr])
        p[te] = rf.predict_proba(Xte)[:, 1]
    return p


def logo_stack(Xs, y, groups, outer=None):
    """Stacking: one model per feature block, a logistic regression over their inner
    out-of-fold logits (itself the calibration)."""
    outer = groups if outer is None else outer
    p = np.zeros(len(y))
    for grp in np.unique(outer):
        te = outer == grp
        tr = ~te
        oofs, tests = [], []
        for X in Xs:
            oofs.append(inner_oof(X[tr], y[tr], groups[tr], lambda a, b: Model().fit(a, b)))
            tests.append(Model().fit(X[tr], y[tr]).logit(X[te]))
        meta = FastLR(C=1.0).fit(np.column_stack(oofs), y[tr])
        p[te] = meta.predict_proba(np.column_stack(tests))[:, 1]
    return p


def sig(x):
    return 1 / (1 + np.exp(-x))


def report(clips, probs, decisions):
    y = [c.label for c in clips]
    g = [c.group for c in clips]
    rep = binary_report(y, list(probs), list(decisions), g, RESAMPLES, SEED)
    src = per_dataset(clips, list(zip(decisions, [float(p) for p in probs], strict=False)))
    rep["per_dataset"] = src
    rep["sources_below_half"] = sorted(d for d, r in src.items() if r["accuracy_all"] < 0.5)
    return rep


FAMILIES = {  # same footage pipeline on both sides: separates manipulation from look
    "DeepFaceLive halves": (
        "DeepFaceLive-demo-original (left panel of side-by-side demo)",
        "DeepFaceLive-faceswap (right panel of side-by-side demo)",
    ),
    "Celeb-DF": ("Celeb-DF-v2-real", "Celeb-DF-v2-synthesis"),
    "Wav2Lip": ("Wav2Lip-input", "Wav2Lip-generated"),
    "EDTalk": ("EDTalk-driving-source", "EDTalk-generated"),
    "HyperLips": ("HyperLips-test-input", "HyperLips-generated"),
}


def family_auc(clips, p):
    from sklearn.metrics import roc_auc_score

    out = {}
    for name, (real, fake) in FAMILIES.items():
        idx = [i for i, c in enumerate(clips) if c.dataset in (real, fake)]
        ys = [clips[i].label for i in idx]
        if len(set(ys)) == 2:
            out[name] = (round(float(roc_auc_score(ys, [p[i] for i in idx])), 3), len(idx))
    # DeepFaceLive pairs: swap half scored above its own original half
    by = {}
    for i, c in enumerate(clips):
        if c.dataset in FAMILIES["DeepFaceLive halves"]:
            by.setdefault(c.group, {})[c.label] = p[i]
    pairs = [v for v in by.values() if 0 in v and 1 in v]
    out["DFL pairs swap>orig"] = (
        round(float(np.mean([v[1] > v[0] for v in pairs])), 3),
        len(pairs),
    )
    return out


def main():
    parse_args(__doc__)
    t0 = time.time()
    clips, blocks, timing = load()
    y = np.array([c.label for c in clips])
    groups = np.array([c.group for c in clips])
    datasets = np.array([c.dataset for c in clips])
    X = {}
    for name in ["fc", "mesh_dyn", "mesh_static", "tex", "av", "has_audio"]:
        X[name] = matrix(blocks, [name])
    tex_names = X["tex"][1]
    face_only = [
        i
        for i, c in enumerate(tex_names)
        if c.split(":")[1] in ("face_hf_mf", "face_noise", "face_hf_mf_sd", "face_lapvar_rel")
    ]
    X["tex_face_only"] = (X["tex"][0][:, face_only], [tex_names[i] for i in face_only])

    def cat(*names):
        return (
            np.hstack([X[n][0] for n in names]),
            functools.reduce(operator.iadd, (X[n][1] for n in names), []),
        )

    sets = {
        "fc (face-cues-v1 cues)": cat("fc"),
        "mesh_dyn": cat("mesh_dyn"),
        "mesh_static": cat("mesh_static"),
        "tex": cat("tex"),
        "tex_face_only": cat("tex_face_only"),
        "av": cat("av"),
        "fc+mesh_dyn": cat("fc", "mesh_dyn"),
        "fc+tex": cat("fc", "tex"),
        "fc+av": cat("fc", "av"),
        "fc+mesh_dyn+tex": cat("fc", "mesh_dyn", "tex"),
        "fc+mesh_dyn+tex+av": cat("fc", "mesh_dyn", "tex", "av"),
        "fc+mesh_dyn+tex_face_only+av": cat("fc", "mesh_dyn", "tex_face_only", "av"),
        "all incl. mesh_static": cat("fc", "mesh_dyn", "mesh_static", "tex", "av"),
    }
    stacks = {
        "stack[fc, mesh_dyn, tex, av]": ["fc", "mesh_dyn", "tex", "av"],
        "stack[fc, mesh_dyn, tex]": ["fc", "mesh_dyn", "tex"],
    }
    secs = timing.mean(0)  # decode, face(+fc), mesh, tex, audio

    def set_cost(name):
        parts = name.replace("stack[", "").replace("]", "").replace(", ", "+").split("+")
        parts = [p.split(" ")[0] for p in parts]
        if name.startswith("all"):
            parts = ["fc", "mesh_dyn", "tex", "av"]
        total = secs[0] + secs[1]  # decode + face finding (+ the fc cues, measured with it)
        if any(p in ("mesh_dyn", "mesh_static", "tex", "tex_face_only", "av") for p in parts):
            total += secs[2]
        if any(p.startswith("tex") for p in parts):
            total += secs[3]
        if "av" in parts:
            total += secs[4]
        return total

    results = {}
    merged = merged_components(groups, datasets)
    for name, (Xm, cols) in sets.items():
        raw, cal = logo_single(Xm, y, groups)
        p_raw = sig(raw)
        rep_raw = report(clips, p_raw, ["FAKE" if r >= 0 else "REAL" for r in raw])
        rep_cal = report(clips, cal, ["FAKE" if q >= 0.5 else "REAL" for q in cal])
        raw_lo, _ = logo_single(Xm, y, groups, outer=merged) if name in LOSO_SETS else (None, None)
        full = Model().fit(Xm, y)
        coefs = dict(
            zip(
                cols + [f"missing:{cols[i]}" for i in full.flag_cols],
                full.lr.coef_[0].round(3).tolist(),
                strict=False,
            )
        )
        results[name] = summarize(name, rep_raw, rep_cal, clips, p_raw, raw_lo, y, set_cost(name))
        results[name]["coef_full_fit"] = coefs
        results[name]["oof_raw_p"] = p_raw.round(4).tolist()
        results[name]["oof_cal_p"] = np.round(cal, 4).tolist()
        print(line(name, results[name]), flush=True)
    for name, parts in stacks.items():
        p = logo_stack([X[n][0] for n in parts], y, groups)
        rep = report(clips, p, ["FAKE" if q >= 0.5 else "REAL" for q in p])
        p_lo = logo_stack([X[n][0] for n in parts], y, groups, outer=merged)
        results[name] = summarize(name, rep, rep, clips, p, None, y, set_cost(name))
        from sklearn.metrics import roc_auc_score

        results[name]["loso_auc"] = round(float(roc_auc_score(y, p_lo)), 3)
        results[name]["oof_p"] = p.round(4).tolist()
        # meta weights on the full data (inner OOF over all groups)
        oofs = [inner_oof(X[n][0], y, groups, lambda a, b: Model().fit(a, b)) for n in parts]
        meta = FastLR(C=1.0).fit(np.column_stack(oofs), y)
        results[name]["meta_coef"] = dict(zip(parts, meta.coef_[0].round(3).tolist(), strict=False))
        print(line(name, results[name]), flush=True)
    for name in ["fc", "fc+mesh_dyn+tex+av"]:
        Xm, cols = sets[name if name != "fc" else "fc (face-cues-v1 cues)"]
        p = logo_forest(Xm, y, groups)
        rep = report(clips, p, ["FAKE" if q >= 0.5 else "REAL" for q in p])
        key = f"random forest [{name}]"
        results[key] = summarize(key, rep, rep, clips, p, None, y, set_cost(name))
        results[key]["oof_p"] = p.round(4).tolist()
        print(line(key, results[key]), flush=True)
    # univariate diagnostics: pooled AUC of each raw feature (no fitting; sign = direction)
    from sklearn.metrics import roc_auc_score

    uni = {}
    for n in ["fc", "mesh_dyn", "mesh_static", "tex", "av"]:
        Xm, cols = X[n]
        for j, c in enumerate(cols):
            ok = np.isfinite(Xm[:, j])
            if ok.sum() > 20 and len(set(y[ok])) == 2:
                uni[c] = (round(float(roc_auc_score(y[ok], Xm[ok, j])), 3), int(ok.sum()))
    has_audio = X["has_audio"][0][:, 0]
    audio_by_label = {
        lab: (int(has_audio[y == k].sum()), int((y == k).sum())) for lab, k in LABELS.items()
    }
    av_ok = np.isfinite(X["av"][0][:, 0])
    results["_diagnostics"] = {
        "univariate_auc": uni,
        "audio_present_by_label": audio_by_label,
        "av_measured_by_label": {lab: int(av_ok[y == k].sum()) for lab, k in LABELS.items()},
        "seconds_per_clip_mean": dict(
            zip(
                ["decode", "face_find+fc", "mesh", "tex", "audio"],
                secs.round(3).tolist(),
                strict=False,
            )
        ),
        "merged_components_for_loso": len(np.unique(merged)),
        "elapsed_s": round(time.time() - t0, 1),
    }
    P.results.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["_diagnostics"], indent=1))


LOSO_SETS = {
    "fc (face-cues-v1 cues)",
    "mesh_dyn",
    "mesh_static",
    "tex",
    "tex_face_only",
    "av",
    "fc+mesh_dyn+tex",
    "fc+mesh_dyn+tex+av",
    "fc+mesh_dyn+tex_face_only+av",
}


def merged_components(groups, datasets):
    """Leave-one-SOURCE-out folds: connected components of clips linked by sharing a group or
    a source dataset (so a held-out source also takes its people with it)."""
    parent = {}

    def find(a):
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for g, d in zip(groups, datasets, strict=False):
        parent[find("g:" + g)] = find("d:" + d)
    return np.array([find("g:" + g) for g in groups])


def summarize(name, rep_raw, rep_cal, clips, p, raw_lo, y, secs):
    from sklearn.metrics import roc_auc_score

    m, mc = rep_raw["metrics"], rep_cal["metrics"]
    out = {
        "auc": m["auc"]["value"],
        "auc_ci95": m["auc"]["ci95"],
        "acc_raw": m["accuracy_all"]["value"],
        "acc_raw_ci95": m["accuracy_all"]["ci95"],
        "acc_cal": mc["accuracy_all"]["value"],
        "acc_cal_ci95": mc["accuracy_all"]["ci95"],
        "sources_below_half_cal": rep_cal["sources_below_half"],
        "n_sources_below_half_cal": len(rep_cal["sources_below_half"]),
        "n_sources_below_half_raw": len(rep_raw["sources_below_half"]),
        "per_dataset_cal": rep_cal["per_dataset"],
        "family_auc": family_auc(clips, p),
        "seconds_per_clip": round(float(secs), 2),
    }
    if raw_lo is not None:
        out["loso_auc"] = round(float(roc_auc_score(y, raw_lo)), 3)
    return out


def line(name, r):
    lo, hi = r["auc_ci95"]
    fam = ", ".join(f"{k} {v[0]:.2f}" for k, v in r["family_auc"].items())
    return (
        f"{name:34s} AUC {r['auc']:.3f} [{lo:.3f}, {hi:.3f}]  acc_raw {r['acc_raw']:.3f} "
        f"acc_cal {r['acc_cal']:.3f}  below½ {r['n_sources_below_half_cal']}  "
        f"LOSO {r.get('loso_auc', '-')}  | {fam}"
    )


if __name__ == "__main__":
    main()
