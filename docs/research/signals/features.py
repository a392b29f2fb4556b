"""Per-clip feature vectors from the raw measurements extract.py cached.

Every function takes the loaded npz and returns (names, values); NaN where a feature cannot be
measured (no face / no audio): evaluate.py imputes inside each fold and adds missing flags.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6
# fmt: off
# mediapipe 468-point mesh indices
LIPS_INNER_TOP, LIPS_INNER_BOTTOM = 13, 14
MOUTH_L, MOUTH_R = 61, 291
EYE_L_OUT, EYE_L_IN, EYE_R_IN, EYE_R_OUT = 33, 133, 362, 263
EYE_L_TOP, EYE_L_BOT, EYE_R_TOP, EYE_R_BOT = 159, 145, 386, 374
NOSE_TIP, CHIN, FOREHEAD = 1, 152, 10
CHEEK_L, CHEEK_R = 234, 454
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109]
LIPS = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270,
        409, 78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311,
        310, 415]
LEFT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
RIGHT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
EYES = LEFT_EYE + RIGHT_EYE
NOSE = [1, 2, 4, 5, 6, 19, 94, 168, 195, 197]
# left/right mirror pairs (subject's right is image-left)
PAIRS = [(33, 263), (133, 362), (61, 291), (234, 454), (70, 300), (159, 386), (145, 374),
         (172, 397), (58, 288), (50, 280), (127, 356), (93, 323)]
# fmt: on


def _valid_mesh(d) -> tuple[np.ndarray, np.ndarray]:
    mesh = d["mesh"].astype(np.float64)
    ok = np.isfinite(mesh).all(axis=(1, 2))
    sc = d["mesh_score"][:, 1]
    ok &= np.nan_to_num(sc, nan=-99) > 0  # face-presence logit
    return mesh, ok


def canonical(mesh: np.ndarray) -> np.ndarray:
    """Each frame's 2-D landmarks centred, rotated so the eye line is horizontal, in
    inter-ocular units (removes in-plane head motion and scale)."""
    p = mesh[:, :, :2]
    a, b = p[:, EYE_L_OUT], p[:, EYE_R_OUT]
    v = b - a
    iod = np.linalg.norm(v, axis=1) + EPS
    ang = np.arctan2(v[:, 1], v[:, 0])
    c, s = np.cos(-ang), np.sin(-ang)
    ctr = p.mean(1, keepdims=True)
    q = p - ctr
    x = q[..., 0] * c[:, None] - q[..., 1] * s[:, None]
    y = q[..., 0] * s[:, None] + q[..., 1] * c[:, None]
    return np.stack([x, y], -1) / iod[:, None, None]


def _interp(series: np.ndarray, ok: np.ndarray) -> np.ndarray:
    idx = np.arange(len(ok))
    return np.interp(idx, idx[ok], series[ok])


def _smooth(x: np.ndarray, k: int = 5) -> np.ndarray:
    """Centred moving average along axis 0 (edge-padded)."""
    pad = k // 2
    xp = np.concatenate([np.repeat(x[:1], pad, 0), x, np.repeat(x[-1:], pad, 0)], 0)
    cs = np.cumsum(np.concatenate([np.zeros_like(x[:1]), xp], 0), 0)
    return (cs[k:] - cs[:-k]) / k


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 4 or a.std() < EPS or b.std() < EPS:
        return np.nan
    return float(np.corrcoef(a, b)[0, 1])


MESH_DYN = [
    "mouth_open_mean",
    "mouth_open_sd",
    "mouth_open_vel_sd",
    "mouth_open_range",
    "jaw_mouth_corr",
    "eye_open_mean",
    "eye_open_sd",
    "blink_depth",
    "eye_lr_corr",
    "eye_asym",
    "asym_sd",
    "jitter_all",
    "jitter_mouth_vs_oval",
    "jitter_eyes_vs_oval",
    "jitter_per_speed",
    "motion_mouth_vs_oval",
    "motion_eyes_vs_oval",
    "head_jitter",
    "mesh_conf_mean",
    "mesh_conf_min",
]
MESH_STATIC = ["face_aspect", "nose_len", "mouth_width", "eye_width", "asym_mean", "depth_nose"]


def mouth_series(d) -> tuple[np.ndarray, np.ndarray]:
    mesh, ok = _valid_mesh(d)
    if ok.sum() < 3:
        return np.full(len(ok), np.nan), ok
    q = canonical(mesh)
    mo = np.linalg.norm(q[:, LIPS_INNER_TOP] - q[:, LIPS_INNER_BOTTOM], axis=1)
    mw = np.linalg.norm(q[:, MOUTH_L] - q[:, MOUTH_R], axis=1) + EPS
    return mo / mw, ok


def mesh_features(d) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    mesh, ok = _valid_mesh(d)
    nan_dyn, nan_st = np.full(len(MESH_DYN), np.nan), np.full(len(MESH_STATIC), np.nan)
    if ok.sum() < 8:
        return MESH_DYN, nan_dyn, MESH_STATIC, nan_st
    # the longest run of consecutive valid frames would be cleanest; interpolate short gaps
    q_all = canonical(np.where(ok[:, None, None], mesh, 0.0))
    idx = np.where(ok)[0]
    q = q_all[idx[0] : idx[-1] + 1]
    okr = ok[idx[0] : idx[-1] + 1]
    if not okr.all():
        for j in range(q.shape[1]):
            for k in range(2):
                q[:, j, k] = _interp(q[:, j, k], okr)
    raw = mesh[idx[0] : idx[-1] + 1, :, :2].copy()
    if not okr.all():
        for j in (EYE_L_OUT, EYE_R_OUT, NOSE_TIP):
            for k in range(2):
                raw[:, j, k] = _interp(raw[:, j, k], okr)
    mo = np.linalg.norm(q[:, LIPS_INNER_TOP] - q[:, LIPS_INNER_BOTTOM], axis=1)
    mw = np.linalg.norm(q[:, MOUTH_L] - q[:, MOUTH_R], axis=1) + EPS
    mar = mo / mw
    jaw = np.linalg.norm(q[:, CHIN] - q[:, NOSE_TIP], axis=1)
    el = np.linalg.norm(q[:, EYE_L_TOP] - q[:, EYE_L_BOT], axis=1) / (
        np.linalg.norm(q[:, EYE_L_OUT] - q[:, EYE_L_IN], axis=1) + EPS
    )
    er = np.linalg.norm(q[:, EYE_R_TOP] - q[:, EYE_R_BOT], axis=1) / (
        np.linalg.norm(q[:, EYE_R_OUT] - q[:, EYE_R_IN], axis=1) + EPS
    )
    eo = (el + er) / 2
    mid = q[:, [NOSE_TIP, CHIN, 168, FOREHEAD], 0].mean(1)
    asym = np.mean(
        [
            np.abs((q[:, a, 0] - mid) + (q[:, b, 0] - mid)) + np.abs(q[:, a, 1] - q[:, b, 1])
            for a, b in PAIRS
        ],
        axis=0,
    )
    res = q - _smooth(q, 5)
    jit = np.abs(res).mean(axis=2)  # (T, 468)
    j_all = float(np.median(jit.mean(1)))
    j_m, j_e, j_o = (float(np.median(jit[:, r].mean(1))) for r in (LIPS, EYES, FACE_OVAL))
    vel = np.abs(np.diff(q, axis=0)).mean(axis=2)
    v_all = float(np.median(vel.mean(1)))
    v_m, v_e, v_o = (float(np.median(vel[:, r].mean(1))) for r in (LIPS, EYES, FACE_OVAL))
    # head (rigid) jitter: nose tip in frame pixels over inter-ocular distance
    iod = np.linalg.norm(raw[:, EYE_L_OUT] - raw[:, EYE_R_OUT], axis=1) + EPS
    nose = raw[:, NOSE_TIP] / np.median(iod)
    hj = float(np.median(np.abs(nose - _smooth(nose, 5)).mean(1)))
    sc = d["mesh_score"][:, 1][ok]
    dyn = np.array(
        [
            float(np.mean(mar)),
            float(np.std(mar)),
            float(np.std(np.diff(mar))),
            float(np.percentile(mar, 95) - np.percentile(mar, 5)),
            _corr(np.diff(jaw), np.diff(mo)),
            float(np.mean(eo)),
            float(np.std(eo)),
            float((np.median(eo) - eo.min()) / (np.median(eo) + EPS)),
            _corr(np.diff(el), np.diff(er)),
            float(np.mean(np.abs(el - er) / (el + er + EPS))),
            float(np.std(asym)),
            np.log(j_all + EPS),
            np.log((j_m + EPS) / (j_o + EPS)),
            np.log((j_e + EPS) / (j_o + EPS)),
            np.log((j_all + EPS) / (v_all + EPS)),
            np.log((v_m + 1e-4) / (v_o + 1e-4)),
            np.log((v_e + 1e-4) / (v_o + 1e-4)),
            np.log(hj + EPS),
            float(np.mean(sc)),
            float(np.min(sc)),
        ]
    )
    zz = mesh[ok][:, :, 2]
    iod_all = np.linalg.norm(mesh[ok][:, EYE_L_OUT, :2] - mesh[ok][:, EYE_R_OUT, :2], axis=1) + EPS
    static = np.array(
        [
            float(
                np.median(
                    np.linalg.norm(q[:, CHEEK_L] - q[:, CHEEK_R], axis=1)
                    / (np.linalg.norm(q[:, FOREHEAD] - q[:, CHIN], axis=1) + EPS)
                )
            ),
            float(np.median(np.linalg.norm(q[:, 168] - q[:, NOSE_TIP], axis=1))),
            float(np.median(mw)),
            float(np.median(np.linalg.norm(q[:, EYE_L_OUT] - q[:, EYE_L_IN], axis=1))),
            float(np.mean(asym)),
            float(np.median((zz[:, NOSE_TIP] - zz[:, FACE_OVAL].mean(1)) / iod_all)),
        ]
    )
    return MESH_DYN, dyn, MESH_STATIC, static


TEX = [
    "face_hf_mf",
    "ring_hf_mf",
    "hf_mf_mismatch",
    "lapvar_face_ring",
    "noise_face_ring",
    "face_noise",
    "boundary_grad",
    "face_hf_mf_sd",
    "noise_ratio_sd",
    "face_lapvar_rel",
]
TEX_FACE_ONLY = ["face_hf_mf", "face_noise", "face_hf_mf_sd", "face_lapvar_rel"]


def tex_features(d) -> tuple[list[str], np.ndarray]:
    t = d["tex"]
    ok = np.isfinite(t[:, :8]).all(1)
    if ok.sum() < 3:
        return TEX, np.full(len(TEX), np.nan)
    t = t[ok]
    fhf, fmf, flv, fnz, rhf, rmf, rlv, rnz, bg, ig, rg, _ = t.T
    face_ratio = np.log(fhf / fmf)
    ring_ratio = np.log(rhf / rmf)
    noise_ratio = np.log(fnz / rnz)
    with np.errstate(invalid="ignore", divide="ignore"):
        bnd = np.log(bg / np.sqrt(ig * rg))
    return TEX, np.array(
        [
            float(np.median(face_ratio)),
            float(np.median(ring_ratio)),
            float(np.median(face_ratio - ring_ratio)),
            float(np.median(np.log(flv / rlv))),
            float(np.median(noise_ratio)),
            float(np.median(np.log(fnz))),
            float(np.nanmedian(bnd)) if np.isfinite(bnd).any() else np.nan,
            float(np.std(face_ratio)),
            float(np.std(noise_ratio)),
            float(np.median(np.log(flv / (fmf + EPS)))),
        ]
    )


AV = ["av_corr0", "av_corr_best", "av_lag_abs", "av_dcorr0", "audio_energy_sd"]


def av_features(d) -> tuple[list[str], np.ndarray, float]:
    """Speech-energy envelope at each frame time against the mouth opening; NaN (abstain)
    without audio, with silent audio, or with too few faces. Returns also has_audio."""
    a = d["audio"]
    nan = np.full(len(AV), np.nan)
    if a.size < 1600 or not np.isfinite(a).all():
        return AV, nan, 0.0
    ts = d["ts"]
    mar, ok = mouth_series(d)
    if ok.sum() < 12:
        return AV, nan, 1.0
    mar = _interp(mar, ok)
    fps = 1.0 / np.median(np.diff(ts)) if len(ts) > 1 else 25.0
    win = int(16000 / fps)
    env = []
    for t in ts:
        c = int(t * 16000)
        seg = a[max(0, c - win) : c + win]
        env.append(np.log(np.sqrt(np.mean(seg**2)) + 1e-5) if seg.size else np.nan)
    env = np.array(env)
    if not np.isfinite(env).all() or env.std() < 0.05 or np.max(env) < np.log(1e-3):
        return AV, nan, 1.0
    best, best_lag = -2.0, 0
    for lag in range(-4, 5):
        c = _corr(mar[lag:], env[: len(env) - lag]) if lag >= 0 else _corr(mar[:lag], env[-lag:])
        if np.isfinite(c) and c > best:
            best, best_lag = c, lag
    return (
        AV,
        np.array(
            [
                _corr(mar, env),
                best if best > -2 else np.nan,
                float(abs(best_lag)),
                _corr(np.diff(mar), np.diff(env)),
                float(env.std()),
            ]
        ),
        1.0,
    )


FC = [
    "mouth_eye_sharpness",
    "mouth_eye_sharpness_sd",
    "face_frame_sharpness",
    "chroma_gap",
    "chroma_gap_sd",
    "luma_gap",
    "landmark_jerk",
    "landmark_jerk_ratio",
    "mouth_vs_eye_motion",
    "mouth_vs_inner_motion",
    "light_following",
    "face_fraction",
]


def all_features(d) -> dict[str, tuple[list[str], np.ndarray]]:
    dn, dv, sn, sv = mesh_features(d)
    tn, tv = tex_features(d)
    an, av, has_audio = av_features(d)
    return {
        "fc": (FC, np.asarray(d["fc_cues"], float)),
        "mesh_dyn": (dn, dv),
        "mesh_static": (sn, sv),
        "tex": (tn, tv),
        "av": (an, av),
        "has_audio": (["has_audio"], np.array([has_audio])),
    }


CROP_T = [
    "crop_flicker",
    "crop_hf_temporal_corr",
    "crop_hf_energy_sd",
    "crop_mouth_flicker_vs_face",
]


def crop_temporal_features(d) -> tuple[list[str], np.ndarray]:
    """Face-crop-only temporal texture: the 96 x 96 crops of the mesh's own ROI (rotation and
    scale follow the landmarks, so the face stays put). Flicker: second temporal difference
    against the first (a temporally smooth video has little); correlation of consecutive
    frames' high-frequency detail (fixed skin texture repeats; re-synthesised detail may not);
    spread of high-frequency energy; mouth flicker against the whole face."""
    import cv2

    _mesh, ok = _valid_mesh(d)
    crops = d["crops"]
    idx = np.where(ok)[0]
    # consecutive valid triples only
    trip = [i for i in idx if i - 1 in set(idx) and i + 1 in set(idx)]
    if len(trip) < 5:
        return CROP_T, np.full(len(CROP_T), np.nan)
    g = np.stack([cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in crops]).astype(np.float32)
    inner = (slice(24, 72), slice(24, 72))
    mouth = (slice(58, 80), slice(30, 66))
    hf = np.stack([x - cv2.GaussianBlur(x, (0, 0), 1.0) for x in g])
    d2 = np.array([np.abs(g[i] - (g[i - 1] + g[i + 1]) / 2)[inner].mean() for i in trip])
    d1 = np.array([np.abs(g[i] - g[i - 1])[inner].mean() for i in trip])
    d2m = np.array([np.abs(g[i] - (g[i - 1] + g[i + 1]) / 2)[mouth].mean() for i in trip])
    cc = [_corr(hf[i - 1][inner].ravel(), hf[i][inner].ravel()) for i in trip]
    e = np.array([(hf[i][inner] ** 2).mean() for i in idx])
    return CROP_T, np.array(
        [
            float(np.log((np.median(d2) + 1e-3) / (np.median(d1) + 1e-3))),
            float(np.nanmedian(cc)),
            float(np.std(np.log(e + 1e-3))),
            float(np.log((np.median(d2m) + 1e-3) / (np.median(d2) + 1e-3))),
        ]
    )


class _Long(dict):
    """A cache_long npz presented with the keys mesh_features/av_features read."""


def long_view(d) -> _Long:
    v = _Long()
    v["mesh"] = d["mesh"]
    sc = np.asarray(d["score"], float)
    v["mesh_score"] = np.column_stack([sc, sc])
    v["ts"] = d["ts"]
    v["audio"] = d["audio"]
    return v


BLINK = ["blink_rate", "blink_frac_frames", "long_window_s"]


def blink_features(v) -> tuple[list[str], np.ndarray]:
    mesh, ok = _valid_mesh(v)
    ts = v["ts"]
    if ok.sum() < 30:
        return BLINK, np.full(len(BLINK), np.nan)
    q = canonical(np.where(ok[:, None, None], mesh, 0.0))
    el = np.linalg.norm(q[:, EYE_L_TOP] - q[:, EYE_L_BOT], axis=1) / (
        np.linalg.norm(q[:, EYE_L_OUT] - q[:, EYE_L_IN], axis=1) + EPS
    )
    er = np.linalg.norm(q[:, EYE_R_TOP] - q[:, EYE_R_BOT], axis=1) / (
        np.linalg.norm(q[:, EYE_R_OUT] - q[:, EYE_R_IN], axis=1) + EPS
    )
    eo = np.where(ok, (el + er) / 2, np.nan)
    med = np.nanmedian(eo)
    closed = np.nan_to_num(eo < 0.6 * med, nan=False)
    events = int(np.sum(closed[1:] & ~closed[:-1]) + closed[0])
    span = float(ts[ok][-1] - ts[ok][0]) + 1e-3
    return BLINK, np.array([events / span, float(closed[ok].mean()), span])
