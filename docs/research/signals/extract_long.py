"""Batch 3 (added after batches 1-2 showed the audio-visual cue helping and the 48-frame window
(~2 s) being short for blinks and lip-audio sync): the face mesh tracked over the first
LONG frames (up to 10 s), mediapipe-style (ROI from the previous frame's landmarks; BlazeFace,
the product's finder, to start and to re-acquire), and the audio over the same span. Frames
decoded by the product's decode_sampled at max side 640 (memory: 300 frames per clip).
Cached as <work-dir>/cache_long/<sha256>.npz.

Run from the repository root (paths: see paths.py; the mesh model: README.md):
    uv run python -m docs.research.signals.extract_long [--workers 2] [--mesh-model PATH]
"""

from __future__ import annotations

import argparse
import csv
import time
import traceback

import cv2
import numpy as np

from docs.research.signals import extract as X
from docs.research.signals.paths import P, add_args, apply

cv2.setNumThreads(1)
LONG = 300


def roi_from_landmarks(lm):
    p33, p263 = lm[33, :2], lm[263, :2]
    angle = float(np.arctan2(p263[1] - p33[1], p263[0] - p33[0]))
    c, s = np.cos(-angle), np.sin(-angle)
    pts = lm[:, :2]
    ctr0 = pts.mean(0)
    rot = (pts - ctr0) @ np.array([[c, s], [-s, c]])
    lo, hi = rot.min(0), rot.max(0)
    mid = (lo + hi) / 2
    ctr = ctr0 + mid @ np.array([[c, -s], [s, c]])
    return X.roi_matrix(ctr[0], ctr[1], 1.5 * float(max(hi - lo)), angle)


def process(row):
    sha = row["sha256"]
    out = P.cache_long / f"{sha}.npz"
    if out.exists():
        return sha, "cached"
    try:
        if not X._state:
            X._init()
        from detectors.frames import DecodeLimits, decode_sampled

        limits = DecodeLimits(4 * 1024**3, 3600.0, 3840 * 2160, 200_000)
        path = P.labels.parent / row["file"]
        s0 = time.perf_counter()
        frames = decode_sampled(path, 0, limits, 640, LONG)
        t_dec = time.perf_counter() - s0
        s0 = time.perf_counter()
        n = len(frames.run)
        mesh = np.full((n, 468, 3), np.nan, np.float32)
        score = np.full(n, np.nan)
        finder = X._state["finder"]
        m = None
        reacquire = 0
        for i, rgb in enumerate(frames.run):
            if m is None:
                if reacquire > 0:  # wait a few frames between searches when lost
                    reacquire -= 1
                    continue
                box = finder._blazeface_box(np.ascontiguousarray(rgb), None)
                if box is None:
                    reacquire = 4
                    continue
                left, top, right, bottom = box
                side = 1.6 * max(right - left, bottom - top)
                start = X.roi_matrix((left + right) / 2, (top + bottom) / 2, side, 0.0)
                lm, sc, _ = X.run_mesh(rgb, start)
                m = roi_from_landmarks(lm)
            lm, sc, _ = X.run_mesh(rgb, m)
            if sc < 0:
                m = None
                continue
            mesh[i], score[i] = lm, sc
            m = roi_from_landmarks(lm)
        t_mesh = time.perf_counter() - s0
        ts = np.array(frames.run_timestamps, dtype=np.float64)
        s0 = time.perf_counter()
        audio = X.audio_of(path, float(ts[0]) if n else 0.0, float(ts[-1]) if n else 0.0)
        t_aud = time.perf_counter() - s0
        np.savez_compressed(
            out, mesh=mesh, score=score, ts=ts, audio=audio, timing=np.array([t_dec, t_mesh, t_aud])
        )
        return (
            sha,
            f"ok {n} frames {int(np.isfinite(score).sum())} meshes "
            f"dec={t_dec:.2f} mesh={t_mesh:.2f} aud={t_aud:.2f}",
        )
    except Exception:
        return sha, "ERROR " + traceback.format_exc()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0)
    add_args(ap, mesh_model=True)
    args = ap.parse_args()
    apply(args)
    P.cache_long.mkdir(parents=True, exist_ok=True)
    with P.labels.open() as f:
        rows = list(csv.DictReader(f))
    if args.limit:
        rows = rows[: args.limit]
    start = time.time()
    if args.workers <= 1:
        it = map(process, rows)
    else:
        import multiprocessing as mp

        it = mp.get_context("fork").Pool(args.workers).imap_unordered(process, rows)
    for k, (sha, msg) in enumerate(it, 1):
        print(f"[{k}/{len(rows)} {time.time() - start:.0f}s] {sha[:12]} {msg}", flush=True)


if __name__ == "__main__":
    main()
