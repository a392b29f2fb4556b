"""Batch 3: the long-window mesh (up to 10 s) and audio-visual features from extract_long.py,
alone and with face-cues-v1. Same fold procedure as evaluate.py; merges into results.json.

Run from the repository root (after the previous batches):
    uv run python -m docs.research.signals.evaluate_long [--labels CSV] [--work-dir DIR]
"""

import functools
import json
import operator

import numpy as np

from docs.research.signals import evaluate as E
from docs.research.signals import features as F
from docs.research.signals.paths import P


def main():
    E.parse_args(__doc__)
    clips, blocks, timing = E.load()
    y = np.array([c.label for c in clips])
    groups = np.array([c.group for c in clips])
    datasets = np.array([c.dataset for c in clips])
    rows = E.rows_of_csv()
    ml, al, bl, tl = [], [], [], []
    for r in rows:
        d = np.load(P.cache_long / f"{r['sha256']}.npz")
        v = F.long_view(d)
        ml.append(F.mesh_features(v)[1])
        al.append(F.av_features(v)[1])
        bl.append(F.blink_features(v)[1])
        tl.append(d["timing"])
    tl = np.array(tl).mean(0)
    X = {n: E.matrix(blocks, [n]) for n in ["fc", "mesh_dyn", "tex", "av"]}
    X["tex_face_only"] = (X["tex"][0][:, [0, 5, 7, 9]], [X["tex"][1][i] for i in (0, 5, 7, 9)])
    X["mesh_long"] = (
        np.hstack([np.array(ml), np.array(bl)[:, :2]]),
        [f"mesh_long:{c}" for c in F.MESH_DYN + F.BLINK[:2]],
    )
    X["av_long"] = (np.nan_to_num(np.array(al), nan=0.0), [f"av_long:{c}(nan->0)" for c in F.AV])

    def cat(*names):
        return (
            np.hstack([X[n][0] for n in names]),
            functools.reduce(operator.iadd, (X[n][1] for n in names), []),
        )

    secs = timing.mean(0)
    base = secs[0] + secs[1]
    long_cost = tl.sum()
    sets = {
        "mesh_long": (cat("mesh_long"), long_cost),
        "av_long": (cat("av_long"), long_cost),
        "fc+av_long": (cat("fc", "av_long"), base + long_cost),
        "fc+mesh_long+av_long": (cat("fc", "mesh_long", "av_long"), base + long_cost),
        "fc+mesh_long+tex_face_only+av_long": (
            cat("fc", "mesh_long", "tex_face_only", "av_long"),
            base + secs[2] + secs[3] + long_cost,
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
        r["batch"] = 3
        res[name] = r
        print(E.line(name, r), flush=True)
    from sklearn.metrics import roc_auc_score

    for name in ("mesh_long", "av_long"):
        Xm, cols = X[name]
        for j, c in enumerate(cols):
            ok = np.isfinite(Xm[:, j])
            if len(set(y[ok])) == 2:
                res["_diagnostics"]["univariate_auc"][c] = (
                    round(float(roc_auc_score(y[ok], Xm[ok, j])), 3),
                    int(ok.sum()),
                )
    res["_diagnostics"]["seconds_per_clip_long"] = dict(
        zip(["decode640x300", "mesh_track", "audio"], tl.round(3).tolist(), strict=False)
    )
    P.results.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
