"""Per-clip raw measurements for the signal study, cached as <work-dir>/cache/<sha256>.npz.

One decode per clip through the product's own path (detectors.frames.decode_sampled, the
daemon's default limits and max_side 1280, the first 48 consecutive frames, as face-cues-v1),
faces found by the product's FaceFinder (hog+blazeface, 640 px search, tracked), frames
measured at 960 px like face_cues.measure_frames. Stored:

- fc_cues: face-cues-v1's twelve cues, computed with the product's own _measure/cues_of
- boxes, dlib68: per frame (NaN where no face)
- mesh: mediapipe face_landmark.tflite 468 x 3 landmarks in analysis-frame pixels (two passes:
  ROI from the dlib box, then mediapipe's own ROI from the first pass's landmarks), and its
  face-presence score
- tex: per-frame texture numbers of the face (mesh face oval) vs a ring around it (corners of
  the frame masked out: watermarks/thumbnails)
- audio: 16 kHz mono samples over the run (empty when the clip has no audio)
- timings per stage

Run from the repository root (paths: see paths.py; the mesh model: README.md):
    uv run python -m docs.research.signals.extract [--workers 2] [--mesh-model PATH]
"""

from __future__ import annotations

import argparse
import csv
import os
import time
import traceback
from pathlib import Path

# One thread per worker process, set before numpy/OpenCV load their thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np

from docs.research.signals.paths import P, add_args, apply

cv2.setNumThreads(1)

RUN = 48
ANALYSIS_MAX_SIDE = 960
DECODE_MAX_SIDE = 1280
MESH_IN = 192

# fmt: off
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109]
# fmt: on

_state: dict = {}


def _init() -> None:
    from ai_edge_litert.interpreter import Interpreter

    from detectors.faces import FaceFinder

    finder = FaceFinder(640, 0, method="hog+blazeface")
    finder.load()
    if not P.mesh_model.is_file():
        raise FileNotFoundError(f"mesh model {P.mesh_model} missing: see README.md")
    it = Interpreter(model_path=str(P.mesh_model), num_threads=1)
    it.allocate_tensors()
    _state["finder"] = finder
    _state["mesh"] = it
    _state["mesh_in"] = it.get_input_details()[0]["index"]
    outs = it.get_output_details()
    _state["mesh_lm"] = next(o["index"] for o in outs if o["shape"][-1] == 1404)
    _state["mesh_sc"] = next(o["index"] for o in outs if o["shape"][-1] == 1)


def roi_matrix(cx: float, cy: float, side: float, angle: float) -> np.ndarray:
    """2x3 matrix mapping mesh-input pixels (u, v) to frame pixels."""
    c, s = np.cos(angle), np.sin(angle)
    k = side / MESH_IN
    # frame = centre + R @ ((u - 96) * k, (v - 96) * k)
    a = np.array([[c * k, -s * k], [s * k, c * k]])
    t = np.array([cx, cy]) - a @ np.array([MESH_IN / 2, MESH_IN / 2])
    return np.hstack([a, t[:, None]])


def run_mesh(rgb: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    crop = cv2.warpAffine(
        rgb,
        m,
        (MESH_IN, MESH_IN),
        flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
    )
    x = (crop.astype(np.float32) / 255.0)[None]
    it = _state["mesh"]
    it.set_tensor(_state["mesh_in"], x)
    it.invoke()
    lm = it.get_tensor(_state["mesh_lm"]).reshape(468, 3).copy()
    score = float(it.get_tensor(_state["mesh_sc"]).reshape(-1)[0])
    xy = lm[:, :2] @ m[:, :2].T + m[:, 2]
    z = lm[:, 2] * (m[0, 0] ** 2 + m[1, 0] ** 2) ** 0.5
    return np.hstack([xy, z[:, None]]), score, crop


def mesh_for(rgb: np.ndarray, box, dlib68: np.ndarray):
    left, top, right, bottom = box
    eye_l, eye_r = dlib68[36:42].mean(0), dlib68[42:48].mean(0)
    angle = float(np.arctan2(eye_r[1] - eye_l[1], eye_r[0] - eye_l[0]))
    cx, cy = (left + right) / 2, (top + bottom) / 2
    side = 1.6 * max(right - left, bottom - top)
    lm, score, _ = run_mesh(rgb, roi_matrix(cx, cy, side, angle))
    # mediapipe's landmarks-to-ROI: rotation from 33 -> 263, box of all landmarks, x1.5, square
    p33, p263 = lm[33, :2], lm[263, :2]
    angle = float(np.arctan2(p263[1] - p33[1], p263[0] - p33[0]))
    c, s = np.cos(-angle), np.sin(-angle)
    pts = lm[:, :2]
    ctr0 = pts.mean(0)
    rot = (pts - ctr0) @ np.array([[c, s], [-s, c]])  # rotate by -angle
    lo, hi = rot.min(0), rot.max(0)
    mid = (lo + hi) / 2
    ctr = ctr0 + mid @ np.array([[c, -s], [s, c]])
    side = 1.5 * float(max(hi - lo))
    lm2, score2, crop2 = run_mesh(rgb, roi_matrix(ctr[0], ctr[1], side, angle))
    return lm2, score2, score, crop2


def _blur(g: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(g, (0, 0), sigma)


def texture(gray: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Texture of the face (inside the mesh's face oval, eroded) against a ring around it,
    on a region around the face; frame corners (bottom-left/right, top-left/right 25%) masked
    out of the ring so overlays there count for nothing."""
    H, W = gray.shape
    oval = lm[FACE_OVAL, :2]
    x0, y0 = oval.min(0)
    x1, y1 = oval.max(0)
    fw, fh = x1 - x0, y1 - y0
    iod = float(np.linalg.norm(lm[33, :2] - lm[263, :2])) + 1e-6
    pad = 0.5 * max(fw, fh)
    rx0, ry0 = int(max(0, x0 - pad)), int(max(0, y0 - pad))
    rx1, ry1 = int(min(W, x1 + pad)), int(min(H, y1 + pad))
    if rx1 - rx0 < 16 or ry1 - ry0 < 16:
        return np.full(12, np.nan)
    g = gray[ry0:ry1, rx0:rx1].astype(np.float32)
    h, w = g.shape
    poly = np.round(oval - [rx0, ry0]).astype(np.int32)
    face = np.zeros((h, w), np.uint8)
    cv2.fillPoly(face, [poly], 1)
    k_in = max(3, int(0.08 * iod) | 1)
    inner = cv2.erode(face, np.ones((k_in, k_in), np.uint8)) > 0
    k_out = max(3, int(0.6 * iod) | 1)
    outer = cv2.dilate(face, np.ones((k_out, k_out), np.uint8)) > 0
    k_gap = max(3, int(0.1 * iod) | 1)
    near = cv2.dilate(face, np.ones((k_gap, k_gap), np.uint8)) > 0
    ring = outer & ~near
    # frame-corner mask (in frame coordinates)
    yy, xx = np.mgrid[ry0:ry1, rx0:rx1]
    corner = ((xx < 0.25 * W) | (xx > 0.75 * W)) & ((yy < 0.25 * H) | (yy > 0.75 * H))
    ring &= ~corner
    band = np.zeros((h, w), np.uint8)
    cv2.polylines(band, [poly], True, 1, thickness=max(2, int(0.06 * iod)))
    band = (band > 0) & ~corner
    hf = g - _blur(g, 1.0)
    mf = _blur(g, 1.0) - _blur(g, 3.0)
    lap = cv2.Laplacian(g, cv2.CV_32F)
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    nz = np.abs(cv2.filter2D(g, -1, k))
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1)
    gm = np.hypot(gx, gy)

    def stats(mask: np.ndarray) -> list[float]:
        if mask.sum() < 30:
            return [np.nan] * 4
        return [
            float((hf[mask] ** 2).mean() + 1e-3),
            float((mf[mask] ** 2).mean() + 1e-3),
            float(lap[mask].var() + 1e-3),
            float(np.sqrt(np.pi / 2) * nz[mask].mean() / 6 + 1e-3),
        ]

    fs, rs = stats(inner), stats(ring)
    bg = float(gm[band].mean()) if band.sum() > 10 else np.nan
    ig = float(gm[inner].mean()) if inner.sum() > 10 else np.nan
    rg = float(gm[ring].mean()) if ring.sum() > 10 else np.nan
    return np.array(fs + rs + [bg, ig, rg, float(ring.sum() / max(1, inner.sum()))])


def audio_of(path: Path, t0: float, t1: float) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                return np.zeros(0, np.float32)
            st = c.streams.audio[0]
            res = av.AudioResampler(format="flt", layout="mono", rate=16000)
            chunks = []
            start = None
            for frame in c.decode(st):
                if frame.time is not None and frame.time > t1 + 0.5:
                    break
                if start is None:
                    start = frame.time or 0.0
                for f in res.resample(frame):
                    chunks.append(f.to_ndarray().reshape(-1))
            if not chunks:
                return np.zeros(0, np.float32)
            a = np.concatenate(chunks).astype(np.float32)
            # samples from the stream's first audio frame; pad/cut to [0, t1 + 0.5]
            off = round((start or 0.0) * 16000)
            if off > 0:
                a = np.concatenate([np.zeros(off, np.float32), a])
            return a[: int((t1 + 0.5) * 16000)]
    except Exception:
        return np.full(1, np.nan, np.float32)


def process(row: dict) -> tuple[str, str]:
    sha = row["sha256"]
    out = P.cache / f"{sha}.npz"
    if out.exists():
        return sha, "cached"
    try:
        if not _state:
            _init()
        from detectors.face_cues import FaceCuesInput, _measure, cues_of
        from detectors.frames import DecodeLimits, decode_sampled

        limits = DecodeLimits(4 * 1024**3, 3600.0, 3840 * 2160, 200_000)
        path = P.labels.parent / row["file"]
        t = {}
        s = time.perf_counter()
        frames = decode_sampled(path, 0, limits, DECODE_MAX_SIDE, RUN)
        t["decode"] = time.perf_counter() - s
        n = len(frames.run)
        boxes = np.full((n, 4), np.nan)
        d68 = np.full((n, 68, 2), np.nan)
        mesh = np.full((n, 468, 3), np.nan)
        msc = np.full((n, 2), np.nan)
        tex = np.full((n, 12), np.nan)
        crops = np.zeros((n, 96, 96, 3), np.uint8)
        measured = []
        t_face = t_mesh = t_tex = 0.0
        track = _state["finder"].track()
        shape = None
        for i, rgb in enumerate(frames.run):
            s = time.perf_counter()
            rows, cols = rgb.shape[:2]
            scale = min(1.0, ANALYSIS_MAX_SIDE / max(rows, cols))
            if scale < 1.0:
                rgb = cv2.resize(
                    rgb,
                    (max(1, round(cols * scale)), max(1, round(rows * scale))),
                    interpolation=cv2.INTER_AREA,
                )
            shape = rgb.shape
            face = track.find(rgb)
            measured.append(_measure(rgb, face) if face is not None else None)
            t_face += time.perf_counter() - s
            if face is None:
                continue
            boxes[i] = face.box
            d68[i] = face.landmarks
            s = time.perf_counter()
            lm, sc2, sc1, crop = mesh_for(rgb, face.box, face.landmarks.astype(np.float64))
            mesh[i], msc[i] = lm, (sc1, sc2)
            crops[i] = cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA)
            t_mesh += time.perf_counter() - s
            s = time.perf_counter()
            tex[i] = texture(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), lm)
            t_tex += time.perf_counter() - s
        t.update(face=t_face, mesh=t_mesh, tex=t_tex)
        found = cues_of(measured)
        fc = found.cues if isinstance(found, FaceCuesInput) else np.full(12, np.nan)
        nfaces = sum(m is not None for m in measured)
        s = time.perf_counter()
        ts = np.array(frames.run_timestamps, dtype=np.float64)
        audio = audio_of(path, float(ts[0]) if n else 0.0, float(ts[-1]) if n else 0.0)
        t["audio"] = time.perf_counter() - s
        np.savez_compressed(
            out,
            fc_cues=fc,
            nfaces=nfaces,
            boxes=boxes,
            dlib68=d68,
            mesh=mesh.astype(np.float32),
            mesh_score=msc,
            tex=tex,
            crops=crops,
            ts=ts,
            audio=audio,
            frame_shape=np.array(shape if shape is not None else (0, 0, 3)),
            fps=float(frames.info.fps) if getattr(frames.info, "fps", None) else np.nan,
            timing=np.array([t["decode"], t["face"], t["mesh"], t["tex"], t["audio"]]),
        )
        return sha, f"ok {n} frames {nfaces} faces " + " ".join(
            f"{k}={v:.2f}" for k, v in t.items()
        )
    except Exception:
        return sha, "ERROR " + traceback.format_exc()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0)
    add_args(ap, mesh_model=True)
    args = ap.parse_args()
    apply(args)
    P.cache.mkdir(parents=True, exist_ok=True)
    with P.labels.open() as f:
        rows = list(csv.DictReader(f))
    if args.limit:
        rows = rows[: args.limit]
    start = time.time()
    if args.workers <= 1:
        results = map(process, rows)
    else:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(args.workers)
        results = pool.imap_unordered(process, rows)
    for k, (sha, msg) in enumerate(results, 1):
        print(f"[{k}/{len(rows)} {time.time() - start:.0f}s] {sha[:12]} {msg}", flush=True)


if __name__ == "__main__":
    main()
