"""Second batch of sets (added after the first batch's results were seen: they are listed in
the report as such). Same fold procedure as evaluate.py; merges into results.json.

Run from the repository root (after the previous batches):
    uv run python -m docs.research.signals.evaluate_extra [--labels CSV] [--work-dir DIR]
"""

import functools
import json
import operator

import numpy as np

from docs.research.signals import evaluate as E
from docs.research.signals.features import CROP_T, crop_temporal_features
from docs.research.signals.paths import P


def main():
    E.parse_args(__doc__)
    clips, blocks, timing = E.load()
    y = np.array([c.label for c in clips])
    groups = np.array([c.group for c in clips])
    datasets = np.array([c.dataset for c in clips])
    rows = E.rows_of_csv()
    ct = np.array(
        [crop_temporal_features(np.load(P.cache / f"{r['sha256']}.npz"))[1] for r in rows]
    )
    X = {n: E.matrix(blocks, [n]) for n in ["fc", "mesh_dyn", "tex", "av", "has_audio"]}
    X["crop_t"] = (ct, [f"crop_t:{c}" for c in CROP_T])
    # av without its missing flags: NaN -> 0 correlation (no evidence), plus nothing else
    av0 = np.nan_to_num(X["av"][0], nan=0.0)
    X["av_noflag"] = (av0, [c + "(nan->0)" for c in X["av"][1]])

    def cat(*names):
        return (
            np.hstack([X[n][0] for n in names]),
            functools.reduce(operator.iadd, (X[n][1] for n in names), []),
        )

    secs = timing.mean(0)
    sets = {
        "crop_t": (cat("crop_t"), secs[0] + secs[1] + secs[2] + 0.05),
        "fc+has_audio (control)": (cat("fc", "has_audio"), secs[0] + secs[1] + secs[4]),
        "fc+av_noflag": (cat("fc", "av_noflag"), secs[0] + secs[1] + secs[2] + secs[4]),
        "fc+crop_t": (cat("fc", "crop_t"), secs[0] + secs[1] + secs[2] + 0.05),
        "fc+mesh_dyn+av": (cat("fc", "mesh_dyn", "av"), secs[0] + secs[1] + secs[2] + secs[4]),
        "fc+mesh_dyn+tex+av+crop_t": (
            cat("fc", "mesh_dyn", "tex", "av", "crop_t"),
            secs.sum() + 0.05,
        ),
    }
    merged = E.merged_components(groups, datasets)
    res = json.loads(P.results.read_text())
    for name, ((Xm, cols), cost) in sets.items():
        raw, cal = E.logo_single(Xm, y, groups)
        p_raw = E.sig(raw)
        rep_raw = E.report(clips, p_raw, ["FAKE" if r >= 0 else "REAL" for r in raw])
        rep_cal = E.report(clips, cal, ["FAKE" if q >= 0.5 else "REAL" for q in cal])
        raw_lo, _ = E.logo_single(Xm, y, groups, outer=merged)
        full = E.Model().fit(Xm, y)
        r = E.summarize(name, rep_raw, rep_cal, clips, p_raw, raw_lo, y, cost)
        r["coef_full_fit"] = dict(
            zip(
                cols + [f"missing:{cols[i]}" for i in full.flag_cols],
                full.lr.coef_[0].round(3).tolist(),
                strict=False,
            )
        )
        r["oof_raw_p"] = p_raw.round(4).tolist()
        r["oof_cal_p"] = np.round(cal, 4).tolist()
        r["batch"] = 2
        res[name] = r
        print(E.line(name, r), flush=True)
    from sklearn.metrics import roc_auc_score

    for j, c in enumerate(X["crop_t"][1]):
        ok = np.isfinite(ct[:, j])
        res["_diagnostics"]["univariate_auc"][c] = (
            round(float(roc_auc_score(y[ok], ct[ok, j])), 3),
            int(ok.sum()),
        )
    P.results.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
