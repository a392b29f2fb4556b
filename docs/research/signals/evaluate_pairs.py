"""Batch 5 (written after batches 1-4, when the study was turned into this record): the
figures behind the one lead, the matched DeepFaceLive pairs. Each DeepFaceLive side-by-side
demo gives two clips of one group: the original (left panel, REAL) and the swap (right panel,
FAKE), same footage, same encoder. Within each of those pairs, compare two batch-1 features
(nothing fitted): mesh_dyn:jitter_all (median frame-to-frame residual of the canonical mesh
landmarks against their 5-frame moving average) and tex:boundary_grad (gradient magnitude on
the face-oval band against the face inside and the ring outside). Count the pairs where the
swap's value is lower and take the two-sided Wilcoxon signed-rank p over the pairs; beside
them, the feature's pooled univariate ROC AUC over all clips (from batch 1's diagnostics).
Merges into results.json under _diagnostics.dfl_pairs.

Run from the repository root (after evaluate.py):
    uv run python -m docs.research.signals.evaluate_pairs [--labels CSV] [--work-dir DIR]
"""

import json

import numpy as np
from scipy.stats import wilcoxon

from docs.research.signals import evaluate as E
from docs.research.signals.paths import P

FEATURES = (("mesh_dyn", "jitter_all"), ("tex", "boundary_grad"))


def main():
    E.parse_args(__doc__)
    clips, blocks, _timing = E.load()
    res = json.loads(P.results.read_text())
    original, swap = E.FAMILIES["DeepFaceLive halves"]
    out = {}
    for block, name in FEATURES:
        Xm, cols = E.matrix(blocks, [block])
        v = Xm[:, cols.index(f"{block}:{name}")]
        by_group = {}
        for i, c in enumerate(clips):
            if c.dataset in (original, swap):
                by_group.setdefault(c.group, {})[c.label] = v[i]
        pairs = [(p[1], p[0]) for p in by_group.values() if 0 in p and 1 in p]
        fake, real = np.array(pairs, float).T
        key = f"{block}:{name}"
        out[key] = {
            "pairs": len(pairs),
            "swap_lower": int((fake < real).sum()),
            "wilcoxon_p": float(f"{wilcoxon(fake, real).pvalue:.2g}"),
            "pooled_auc_all_clips": res["_diagnostics"]["univariate_auc"][key][0],
        }
        print(key, out[key], flush=True)
    res["_diagnostics"]["dfl_pairs"] = out
    P.results.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
