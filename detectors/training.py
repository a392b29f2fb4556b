"""Training the color-cues head from labelled videos.

Data comes from a CSV (``file,label[,dataset,origin_repo,sha256,group]``, paths relative to the
CSV) or a folder with ``real/`` and ``fake/``. Clips are grouped so that one person or one source
never sits on both sides of a split (``assign_groups``), split with both labels on every side
(``group_split``), turned into features once through the detector's own ``prepare`` and cached by
content (``FeatureCache``), and the seed's LSTM is trained deterministically and resumably
(``train_head``). ``calibrate`` then picks the operating point on validation data.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import tempfile
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from detectors.base import Detector, DetectorResult, VideoInfo
from detectors.color_cues import (
    KEY,
    ColorCuesConfig,
    ColorCuesDetector,
    ColorCuesInput,
    NoFace,
    video_windows,
    window_starts,
)
from detectors.color_cues_net import ColorCuesNet
from detectors.errors import DetectorError
from detectors.evaluation import (
    binary_report,
    eer_threshold,
    fit_platt,
    fpr_threshold,
    roc_auc,
    uncertain_band,
)
from detectors.face_cues import FaceCuesInput
from detectors.face_cues import NoFace as FaceNoFace
from detectors.manifest import Band, Calibration, HeldOut, ManifestEntry, register
from detectors.siglip_lstm import Embedded
from detectors.weights import sha256_file

LABELS = {"REAL": 0, "FAKE": 1}
LABEL_NAMES = {0: "REAL", 1: "FAKE"}
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".mpg"})

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


class DatasetError(ValueError):
    """The labelled data cannot be used as given."""


# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """One labelled video. ``group`` is empty until ``assign_groups`` (or the CSV) sets it."""

    path: Path
    file: str  # as listed, relative to the data root
    label: int  # 0 REAL, 1 FAKE
    dataset: str
    sha256: str
    origin_repo: str = ""
    group: str = ""


def load_clips(data: Path) -> list[Clip]:
    """Clips from a CSV file, or from a folder: its ``labels.csv`` when present, else its
    ``real/`` and ``fake/`` subfolders. Every file is hashed; a CSV's sha256 must match."""
    if data.is_dir():
        listed = data / "labels.csv"
        return _from_csv(listed) if listed.exists() else _from_folders(data)
    if data.is_file():
        return _from_csv(data)
    raise DatasetError(f"{data} is neither a CSV file nor a folder")


def _from_csv(path: Path) -> list[Clip]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise DatasetError(f"{path}: needs a header with at least the columns file,label")
    clips = []
    for line, row in enumerate(rows, start=2):
        label = row["label"].strip().upper()
        if label not in LABELS:
            raise DatasetError(f"{path}:{line}: label must be REAL or FAKE, not {row['label']!r}")
        video = path.parent / row["file"]
        if not video.is_file():
            raise DatasetError(f"{path}:{line}: {video} does not exist")
        sha = sha256_file(video)
        listed = (row.get("sha256") or "").strip().lower()
        if listed and listed != sha:
            raise DatasetError(f"{path}:{line}: {row['file']} has sha256 {sha}, listed {listed}")
        clips.append(
            Clip(
                path=video,
                file=row["file"],
                label=LABELS[label],
                dataset=(row.get("dataset") or "").strip() or "unknown",
                sha256=sha,
                origin_repo=(row.get("origin_repo") or "").strip(),
                group=(row.get("group") or "").strip(),
            )
        )
    return clips


def _from_folders(root: Path) -> list[Clip]:
    clips = []
    for name, label in LABELS.items():
        folder = root / name.lower()
        for video in sorted(folder.iterdir()) if folder.is_dir() else []:
            if video.is_file() and video.suffix.lower() in VIDEO_SUFFIXES:
                file = video.relative_to(root).as_posix()
                clips.append(Clip(video, file, label, f"folder:{name.lower()}", sha256_file(video)))
    if not clips:
        raise DatasetError(f"{root}: no videos under real/ or fake/ and no labels.csv")
    return clips


# --- groups and split --------------------------------------------------------------------------

GROUP_RULE = (
    "Clips are linked when they share a person or a source, and each connected set of clips is "
    "one group; a group lies wholly in train, val or test. Links: (0) identical files (equal "
    "sha256) always; (1) the CSV's `group` column, where a clip has one (the people and "
    "sources that tie clips together are written there, not guessed from file names); (2) a "
    "clip without one links to its `origin_repo`, so a source's clips stay together, and a "
    "clip with neither is its own group."
)


def _link_tokens(clip: Clip) -> set[str]:
    tokens = {f"bytes:{clip.sha256}"}
    if clip.group:
        return tokens | {f"group:{clip.group}"}
    return tokens | {f"source:{clip.origin_repo}" if clip.origin_repo else f"clip:{clip.file}"}


def assign_groups(clips: Sequence[Clip]) -> list[Clip]:
    """The clips with ``group`` set by ``GROUP_RULE``; each connected set of clips is named by
    its smallest link token other than a file hash (when it has one), for readable splits."""
    parent: dict[str, str] = {}

    def find(t: str) -> str:
        while parent.setdefault(t, t) != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    tokens = [sorted(_link_tokens(c)) for c in clips]
    for ts in tokens:
        for t in ts[1:]:
            a, b = find(ts[0]), find(t)
            parent[max(a, b)] = min(a, b)
    members: dict[str, set[str]] = {}
    for ts in tokens:
        members.setdefault(find(ts[0]), set()).update(ts)
    names = {
        root: min((t for t in ts if not t.startswith("bytes:")), default=min(ts))
        for root, ts in members.items()
    }
    return [
        Clip(c.path, c.file, c.label, c.dataset, c.sha256, c.origin_repo, names[find(ts[0])])
        for c, ts in zip(clips, tokens, strict=True)
    ]


def group_split(
    labels: Sequence[int],
    groups: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
    tries: int = 2000,
) -> list[Split]:
    """Assign every clip to train, val or test so that a group never spans two splits, each
    split holds both labels, and each split's count per label comes as close as the groups
    allow to its fraction (seeded random greedy search; the best of ``tries`` orders wins).
    Raises DatasetError when no such split exists."""
    if val_fraction <= 0 or test_fraction <= 0 or val_fraction + test_fraction >= 1:
        raise DatasetError("val and test fractions must be positive and sum to less than 1")
    names = sorted(set(groups))
    counts = np.zeros((len(names), 2))
    index = {g: i for i, g in enumerate(names)}
    for g, y in zip(groups, labels, strict=True):
        counts[index[g], y] += 1
    fractions = np.array([1 - val_fraction - test_fraction, val_fraction, test_fraction])
    target = fractions[:, None] * counts.sum(axis=0)[None, :]  # (split, label)
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(tries):
        have = np.zeros_like(target)
        where = np.empty(len(names), dtype=np.int64)
        for g in rng.permutation(len(names)):
            # The split whose error grows least by taking this group.
            growth = ((have + counts[g] - target) ** 2 - (have - target) ** 2).sum(axis=1)
            s = int(np.argmin(growth + 1e-9 * rng.random(3)))
            where[g] = s
            have[s] += counts[g]
        if (have == 0).any():
            continue
        error = float(((have - target) ** 2).sum())
        if best is None or error < best[0]:
            best = (error, where)
    if best is None:
        raise DatasetError(
            f"cannot split {len(names)} groups so that train, val and test each hold both "
            "labels; add clips or lower the fractions"
        )
    return [SPLITS[best[1][index[g]]] for g in groups]


# --- feature cache -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Failed:
    """A clip whose decode or preparation failed permanently (its error code and message)."""

    code: str
    message: str


Prepared = ColorCuesInput | NoFace | FaceCuesInput | FaceNoFace | Embedded | Failed


@dataclass(frozen=True)
class Features:
    """What ``prepare`` made of one video, with the container's description of it."""

    prepared: Prepared
    info: VideoInfo | None


def feature_namespace(key: str, version: str, settings: Mapping[str, Any]) -> str:
    """Cache folder name for features made by detector ``key`` ``version`` under ``settings``
    (the detector's feature settings plus the decode settings)."""
    blob = json.dumps({"key": key, "version": version, **settings}, sort_keys=True, default=str)
    return f"{key}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


class FeatureCache:
    """Prepared inputs on disk, one ``.npz`` per video sha256, read without pickle."""

    def __init__(self, root: Path, namespace: str) -> None:
        self.folder = root / namespace

    def _path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.npz"

    def get(self, sha256: str) -> Features | None:
        """The cached features of a video, or None."""
        path = self._path(sha256)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            info = VideoInfo(**meta["info"]) if meta["info"] else None
            kind = meta["kind"]
            prepared: Prepared
            if kind == "input":
                prepared = ColorCuesInput(
                    histograms=z["histograms"],
                    timestamps=tuple(float(t) for t in z["timestamps"]),
                    window_starts=tuple(int(s) for s in z["window_starts"]),
                    frames_sampled=int(meta["frames_sampled"]),
                )
            elif kind == "embeddings":
                prepared = Embedded(z["embeddings"], tuple(float(t) for t in z["timestamps"]))
            elif kind == "cues":
                prepared = FaceCuesInput(
                    z["cues"], int(meta["frames_sampled"]), int(meta["frames_with_face"])
                )
            elif kind in ("no_face", "no_face_cues"):
                no_face = NoFace if kind == "no_face" else FaceNoFace
                prepared = no_face(int(meta["frames_sampled"]), int(meta["frames_with_face"]))
            else:
                prepared = Failed(meta["code"], meta["message"])
        return Features(prepared, info)

    def put(self, sha256: str, features: Features) -> None:
        """Store atomically, so an interrupted run never leaves half a file behind."""
        p = features.prepared
        meta: dict[str, Any] = {
            "info": None if features.info is None else vars(features.info),
        }
        arrays: dict[str, Any] = {}
        if isinstance(p, ColorCuesInput):
            meta |= {"kind": "input", "frames_sampled": p.frames_sampled}
            arrays = {
                "histograms": p.histograms,
                "timestamps": np.asarray(p.timestamps, dtype=np.float64),
                "window_starts": np.asarray(p.window_starts, dtype=np.int64),
            }
        elif isinstance(p, Embedded):
            meta |= {"kind": "embeddings"}
            arrays = {
                "embeddings": p.embeddings,
                "timestamps": np.asarray(p.timestamps, dtype=np.float64),
            }
        elif isinstance(p, FaceCuesInput):
            meta |= {
                "kind": "cues",
                "frames_sampled": p.frames_sampled,
                "frames_with_face": p.frames_with_face,
            }
            arrays = {"cues": p.cues}
        elif isinstance(p, NoFace | FaceNoFace):
            meta |= {
                "kind": "no_face" if isinstance(p, NoFace) else "no_face_cues",
                "frames_sampled": p.frames_sampled,
                "frames_with_face": p.frames_with_face,
            }
        else:
            meta |= {"kind": "failed", "code": p.code, "message": p.message}
        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, meta=np.asarray(json.dumps(meta)), **arrays)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buffer.getvalue())
            os.replace(tmp, self._path(sha256))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def extract_features(
    clips: Sequence[Clip],
    cache: FeatureCache,
    prepare: Callable[[Path], tuple[Any, VideoInfo | None]],
    workers: int = 1,
    advance: Callable[[], None] | None = None,
) -> dict[str, Features]:
    """Features of every clip by sha256: from the cache, else ``prepare(path)`` (which returns
    the detector's prepared input and the video's info, or raises a permanent DetectorError,
    kept as ``Failed``) and then cached. ``advance`` is called once per clip."""
    found: dict[str, Features] = {}
    missing: dict[str, Clip] = {}
    for clip in clips:
        hit = cache.get(clip.sha256)
        if hit is None:
            missing.setdefault(clip.sha256, clip)
        else:
            found[clip.sha256] = hit
            if advance:
                advance()

    def compute(clip: Clip) -> tuple[str, Features]:
        try:
            prepared, info = prepare(clip.path)
            features = Features(prepared, info)
        except DetectorError as exc:
            if exc.retryable:
                raise
            features = Features(Failed(exc.code, exc.message), None)
        cache.put(clip.sha256, features)
        return clip.sha256, features

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for sha, features in pool.map(compute, missing.values()):
            found[sha] = features
            if advance:
                advance()
    return found


# --- training ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One training video: its histograms in time order (frames, features) and its label."""

    histograms: np.ndarray
    label: int


@dataclass(frozen=True)
class TrainParams:
    """Optimisation settings; everything but ``epochs`` identifies a run for ``resume``."""

    epochs: int = 60
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 12
    train_stride: int = 4  # denser windows than inference's: more (correlated) examples
    seed: int = 0


@dataclass
class TrainResult:
    """The best epoch's network in the seed's key names, folded to take raw histograms."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None


class StandardisedNet(nn.Module):
    """The seed's network behind a per-bin standardisation (what training optimises); folded
    away on export by ``fold_normalisation``."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, net: ColorCuesNet, mean: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net((x - self.mean) / self.scale)
        return logits


def fold_normalisation(
    state: Mapping[str, torch.Tensor], mean: torch.Tensor, scale: torch.Tensor
) -> dict[str, torch.Tensor]:
    """A ColorCuesNet state dict that applied to raw ``x`` equals the original on
    ``(x - mean) / scale``: the LSTM's input weights absorb the standardisation
    (``W (x - m) / s = (W / s) x - (W / s) m``), so the checkpoint keeps the seed's layout."""
    folded = {k: v.detach().clone() for k, v in state.items()}
    w = folded["lstm.weight_ih_l0"] / scale[None, :]
    folded["lstm.weight_ih_l0"] = w
    folded["lstm.bias_ih_l0"] = folded["lstm.bias_ih_l0"] - w @ mean
    return folded


def _standardisation(examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    frames = np.concatenate([e.histograms for e in examples]).astype(np.float64)
    mean = frames.mean(axis=0)
    # Bins that never vary (r + g > 1 is impossible) keep scale 1: nothing to standardise.
    scale = np.maximum(frames.std(axis=0), 1.0)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32)


def training_windows(
    examples: Sequence[Example], length: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All windows, the video index of each, and each window's loss weight: every video counts
    equally whatever its length, and both labels weigh the same in total."""
    per_label = Counter(e.label for e in examples)
    windows: list[np.ndarray] = []
    owner: list[int] = []
    weight: list[float] = []
    for i, e in enumerate(examples):
        ws = video_windows(e.histograms, window_starts(len(e.histograms), length, stride), length)
        windows += ws
        owner += [i] * len(ws)
        weight += [len(examples) / (2 * per_label[e.label] * len(ws))] * len(ws)
    return (
        torch.from_numpy(np.stack(windows)),
        torch.tensor(owner),
        torch.tensor(weight, dtype=torch.float32),
    )


def video_probabilities(
    model: nn.Module, windows: torch.Tensor, owner: torch.Tensor, videos: int
) -> np.ndarray:
    """Each video's fake probability as the detector computes it: the mean over its windows."""
    model.eval()
    with torch.inference_mode():
        probs = torch.sigmoid(model(windows)).double()
    total = torch.zeros(videos, dtype=torch.float64).index_add_(0, owner, probs)
    count = torch.zeros(videos, dtype=torch.float64).index_add_(0, owner, torch.ones_like(probs))
    result: np.ndarray = (total / count).numpy()
    return result


def _bce(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())


def run_fingerprint(params: TrainParams, config: ColorCuesConfig, data_id: str) -> str:
    """Identifies a training run for ``resume``: data, network settings, optimisation (but not
    the epoch budget, which a resumed run may extend)."""
    blob = json.dumps(
        {
            "data": data_id,
            "params": {k: v for k, v in vars(params).items() if k != "epochs"},
            "network": config.model_dump(include={"hidden_size", "dropout", "histogram_bins"}),
            "windows": [config.sequence_length, config.window_stride],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def train_head(
    train: Sequence[Example],
    val: Sequence[Example],
    config: ColorCuesConfig,
    params: TrainParams,
    state_path: Path | None = None,
    resume: bool = False,
    data_id: str = "",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train the seed's ColorCuesNet (BCE on windows, Adam) and keep the epoch with the lowest
    validation loss (video-level BCE); stop after ``patience`` epochs without improvement.

    Deterministic for a seed; torch's global RNG is left as it was. With ``state_path`` every
    epoch is saved there; ``resume`` continues a saved run with the same fingerprint.
    """
    if not train or not val:
        raise DatasetError("training needs at least one training and one validation video")
    fingerprint = run_fingerprint(params, config, data_id)
    length = config.sequence_length
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        mean, scale = _standardisation(train)
        net = ColorCuesNet(config.histogram_bins**2, config.hidden_size, config.dropout)
        model = StandardisedNet(net, mean, scale)
        optimiser = torch.optim.Adam(
            model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
        )
        shuffle = torch.Generator().manual_seed(params.seed)
        x, x_owner, w = training_windows(train, length, params.train_stride)
        y = torch.tensor([float(train[i].label) for i in x_owner.tolist()])
        vx, v_owner, _ = training_windows(val, length, config.window_stride)
        vy = np.array([e.label for e in val], dtype=np.float64)

        start, best_loss, best_epoch, bad, stopped = 0, math.inf, -1, 0, False
        best_state = {k: v.clone() for k, v in net.state_dict().items()}
        history: list[dict[str, float]] = []
        resumed_from: int | None = None
        if resume and state_path is not None and state_path.exists():
            saved = torch.load(state_path, map_location="cpu", weights_only=True)
            if saved["fingerprint"] != fingerprint:
                raise DatasetError(
                    f"{state_path} belongs to a different run (data, settings or seed differ); "
                    "train without --resume to start over"
                )
            model.load_state_dict(saved["model"])
            optimiser.load_state_dict(saved["optimiser"])
            shuffle.set_state(saved["shuffle_rng"])
            torch.set_rng_state(saved["torch_rng"])
            best_state = saved["best_state"]
            start = resumed_from = int(saved["epoch"])
            best_loss, best_epoch = float(saved["best_loss"]), int(saved["best_epoch"])
            bad, stopped = int(saved["bad_epochs"]), bool(saved["stopped"])
            history = json.loads(saved["history"])
        loss_fn = nn.BCEWithLogitsLoss(reduction="none")
        epoch = start
        for epoch in range(start, params.epochs):
            if stopped:
                break
            model.train()
            order = torch.randperm(len(x), generator=shuffle)
            train_loss = 0.0
            for first in range(0, len(order), params.batch_size):
                batch = order[first : first + params.batch_size]
                optimiser.zero_grad()
                losses = loss_fn(model(x[batch]), y[batch]) * w[batch]
                loss = losses.sum() / w[batch].sum()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimiser.step()
                train_loss += float(losses.detach().sum())
            val_probs = video_probabilities(model, vx, v_owner, len(val))
            val_loss = _bce(vy, val_probs)
            val_auc = roc_auc(vy, val_probs) if 0 < vy.sum() < len(vy) else math.nan
            if val_loss < best_loss - 1e-6:
                best_loss, best_epoch, bad = val_loss, epoch, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
            stopped = bad >= params.patience
            record = {
                "epoch": epoch + 1,
                "train_loss": train_loss / float(w.sum()),
                "val_loss": val_loss,
                "val_auc": val_auc,
            }
            history.append(record)
            if on_epoch:
                on_epoch(record)
            if state_path is not None:
                _save_state(
                    state_path,
                    {
                        "fingerprint": fingerprint,
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimiser": optimiser.state_dict(),
                        "shuffle_rng": shuffle.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "best_state": best_state,
                        "best_loss": best_loss,
                        "best_epoch": best_epoch,
                        "bad_epochs": bad,
                        "stopped": stopped,
                        "history": json.dumps(history),
                    },
                )
    return TrainResult(
        state_dict=fold_normalisation(best_state, mean, scale),
        best_epoch=best_epoch + 1,
        epochs_run=len(history),
        stopped_early=stopped,
        history=history,
        resumed_from=resumed_from,
    )


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


# --- operating point ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibrated:
    """The operating point chosen on validation data."""

    calibration: Calibration
    threshold: float
    uncertain_band: Band | None
    rule: str  # how the threshold was chosen


def calibrate(
    labels: Sequence[int],
    raw_probs: Sequence[float] | np.ndarray,
    target_fpr: float | None = None,
    uncertain_fraction: float = 0.2,
) -> Calibrated:
    """Platt-calibrate validation probabilities, then choose the threshold on the calibrated
    scale (at the equal-error point, or at ``target_fpr``) and an UNCERTAIN band holding the
    ``uncertain_fraction`` of validation clips nearest to it."""
    calibration = fit_platt(labels, raw_probs)
    p = np.array([calibration.apply(float(r)) for r in raw_probs])
    if target_fpr is None:
        threshold, rule = eer_threshold(labels, p), "equal error rate on validation"
    else:
        threshold = fpr_threshold(labels, p, target_fpr)
        rule = f"false-positive rate <= {target_fpr:g} on validation"
    threshold = min(max(threshold, 0.0), 1.0)
    band = uncertain_band(p, threshold, uncertain_fraction)
    if calibration.a == 0.0:
        # The network ranked validation clips no better than chance: every probability is the
        # same, and the honest answer for every clip is UNCERTAIN.
        band = (0.0, 1.0)
        rule += "; no signal on validation (Platt a = 0), so the band covers everything"
    return Calibrated(calibration, threshold, band, rule)


def label_counts(clips: Iterable[Clip]) -> dict[str, dict[str, int]]:
    """``{dataset: {"REAL": n, "FAKE": m}}``, sorted by dataset."""
    counts: dict[str, Counter[str]] = {}
    for c in clips:
        counts.setdefault(c.dataset, Counter())[LABEL_NAMES[c.label]] += 1
    return {d: {k: counts[d][k] for k in ("REAL", "FAKE")} for d in sorted(counts)}


# --- a whole run: train, calibrate, measure, ship ----------------------------------------------


@dataclass(frozen=True)
class ShipSettings:
    """Where a run writes and what its model card records."""

    out_dir: Path
    data_source: str
    command: str
    code_version: str
    val_fraction: float
    test_fraction: float
    target_fpr: float | None = None
    uncertain_fraction: float = 0.2
    resamples: int = 1000


@dataclass(frozen=True)
class TrainJob:
    """One training run, whatever the detector: the clips, their split, the prepared features,
    the detector's settings, and how to train and ship."""

    clips: Sequence[Clip]
    splits: Sequence[Split]
    features: Mapping[str, Features]
    config: Any  # the detector's own configuration class
    params: TrainParams
    settings: ShipSettings
    l2: float = 3.0  # the regressions' penalty
    state_dir: Path | None = None  # per-epoch state, for resume
    resume: bool = False
    on_epoch: Callable[[dict[str, float]], None] | None = None


class Trainer(ABC):
    """How one detector trains (a detector names its trainer in ``Detector.trainer``): the
    configuration training validates, what its features are, and the run itself."""

    # Progress is shown per epoch (else the fit is one step).
    by_epochs: ClassVar[bool] = False
    # ``train --cross-validate`` (only measure, leaving each group out) is possible.
    cross_validates: ClassVar[bool] = False
    # Cached features are the detector's own prepared inputs, so ``eval`` may read them.
    features_are_inputs: ClassVar[bool] = True

    def __init__(self, key: str) -> None:
        self.key = key

    def section(self, section: dict[str, Any]) -> dict[str, Any]:
        """The detector's configuration section as training validates it (weights and
        operating point already left out)."""
        return section

    def command_options(self, params: TrainParams, l2: float) -> str:
        """The options of ``drishtiksha train`` that shaped this run, for the model card."""
        return (
            f" --epochs {params.epochs} --patience {params.patience}"
            f" --batch-size {params.batch_size} --learning-rate {params.learning_rate}"
        )

    def feature_maker(
        self, detector: Detector[Any], prepare: Callable[[Path], Any]
    ) -> Callable[[Path], Any]:
        """What extracts one clip's features, given the pipeline's ``prepare`` for it: by
        default that, with the detector set up on the CPU."""
        detector.setup("cpu")
        return prepare

    @abstractmethod
    def train(self, job: TrainJob) -> dict[str, Any]:
        """Train, calibrate, measure and ship; the report the model card shows."""

    def cross_validate(self, job: TrainJob) -> dict[str, Any]:
        """Only measure, leaving one group out at a time (where ``cross_validates``)."""
        raise DatasetError(f"{self.key} has no leave-one-group-out recipe")


class ColorCuesTrainer(Trainer):
    """color-cues-lstm-v1: the LSTM over colour histograms, trained by epochs."""

    by_epochs = True

    def train(self, job: TrainJob) -> dict[str, Any]:
        return train_and_ship(
            job.clips,
            job.splits,
            job.features,
            job.config,
            job.params,
            job.settings,
            state_path=None if job.state_dir is None else job.state_dir / f"{self.key}.state.pt",
            resume=job.resume,
            on_epoch=job.on_epoch,
        )


def split_file(card: Path) -> Path:
    """The JSON side file that lists a model card's clips and their splits."""
    return card.with_suffix(".split.json")


def predict_prepared(
    detector: Detector[Any], items: Sequence[Any]
) -> list[tuple[str, float | None]]:
    """(label, fake probability) of each prepared input through ``detector.predict``, the
    daemon's path; a failed preparation counts as ABSTAIN."""
    ready = [i for i, p in enumerate(items) if not isinstance(p, Failed)]
    outcomes = detector.predict([items[i] for i in ready]) if ready else []
    result: list[tuple[str, float | None]] = [("ABSTAIN", None)] * len(items)
    for i, outcome in zip(ready, outcomes, strict=True):
        if isinstance(outcome, DetectorResult):
            result[i] = (outcome.label.value, outcome.fake_probability)
    return result


def per_dataset(
    clips: Sequence[Clip], predictions: Sequence[tuple[str, float | None]]
) -> dict[str, dict[str, Any]]:
    """Per source dataset: clips, decided clips, correct decisions, mean fake probability,
    accuracy on the decided clips and on all of them (``accuracy_all``: a clip not decided
    counts as wrong). (Most datasets hold one label only, so AUC per dataset is undefined.)"""
    rows: dict[str, dict[str, Any]] = {}
    for clip, (label, prob) in zip(clips, predictions, strict=True):
        row = rows.setdefault(
            clip.dataset,
            {"label": LABEL_NAMES[clip.label], "n": 0, "decided": 0, "correct": 0, "probs": []},
        )
        row["n"] += 1
        if row["label"] != LABEL_NAMES[clip.label]:
            row["label"] = "mixed"
        if label in ("REAL", "FAKE"):
            row["decided"] += 1
            row["correct"] += int(label == LABEL_NAMES[clip.label])
        if prob is not None:
            row["probs"].append(prob)
    for row in rows.values():
        probs = row.pop("probs")
        row["mean_probability"] = round(float(np.mean(probs)), 4) if probs else None
        row["accuracy"] = round(row["correct"] / row["decided"], 4) if row["decided"] else None
        row["accuracy_all"] = round(row["correct"] / row["n"], 4)
    return dict(sorted(rows.items()))


def train_and_ship(
    clips: Sequence[Clip],
    splits: Sequence[Split],
    features: Mapping[str, Features],
    config: ColorCuesConfig,
    params: TrainParams,
    settings: ShipSettings,
    state_path: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train on the train split, calibrate on val, write the checkpoint (a bare state dict in the
    seed's key names), register it in the manifest, measure it on the held-out test split
    through the detector's own ``predict``, and write the model card and its split file.
    Returns the report the card shows."""
    by_split = split_clips(clips, splits)

    def examples(split: Split) -> list[Example]:
        found = [(c, features[c.sha256].prepared) for c in by_split[split]]
        return [Example(p.histograms, c.label) for c, p in found if isinstance(p, ColorCuesInput)]

    train, val = examples("train"), examples("val")
    data_id = hashlib.sha256(
        "".join(f"{c.sha256}:{c.label}:{s}\n" for c, s in zip(clips, splits, strict=True)).encode()
    ).hexdigest()
    result = train_head(train, val, config, params, state_path, resume, data_id, on_epoch)

    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / f"{KEY}.pt"
    card = out / f"{KEY}.md"
    torch.save(result.state_dict, checkpoint)

    net = ColorCuesNet(config.histogram_bins**2, config.hidden_size, config.dropout)
    net.load_state_dict(result.state_dict)
    vx, v_owner, _ = training_windows(val, config.sequence_length, config.window_stride)
    val_raw = video_probabilities(net, vx, v_owner, len(val))
    calibrated = calibrate(
        [e.label for e in val], val_raw, settings.target_fpr, settings.uncertain_fraction
    )
    network = config.model_dump(include={"hidden_size", "dropout"})
    entry = shipped_entry(KEY, checkpoint, calibrated, card, config.feature_settings() | network)
    register(out / "manifest.json", entry)

    # Measured the way the daemon runs it: the checkpoint and operating point loaded from the
    # manifest by sha256, the cached prepared inputs through predict.
    detector = ColorCuesDetector(
        ColorCuesConfig.model_validate(
            config.feature_settings() | network | {"weights": str(checkpoint)}
        )
    )
    detector.setup("cpu")
    measured = measure(
        lambda items: predict_prepared(detector, items),
        by_split,
        features,
        settings.resamples,
        params.seed,
    )
    register(out / "manifest.json", with_held_out(entry, measured["test"]))
    report = {
        "detector": KEY,
        "checkpoint": checkpoint.name,
        "card": card.name,
        "sha256": entry.sha256,
        "settings": settings,
        "params": params,
        "training": result,
        "operating_point": calibrated,
        "windows": {
            "length": config.sequence_length,
            "train_stride": params.train_stride,
            "inference_stride": config.window_stride,
            "features": config.histogram_bins**2,
            "hidden_size": config.hidden_size,
        },
        **data_summary(clips, by_split, features, ColorCuesInput),
        "measured": measured,
        "date": today(),
    }
    write_split_file(split_file(card), KEY, clips, splits, features, settings, params.seed)
    card.write_text(model_card(report))
    return report


def split_clips(clips: Sequence[Clip], splits: Sequence[Split]) -> dict[Split, list[Clip]]:
    """The clips of each split, in order."""
    by_split: dict[Split, list[Clip]] = {s: [] for s in SPLITS}
    for clip, split in zip(clips, splits, strict=True):
        by_split[split].append(clip)
    return by_split


def data_summary(
    clips: Sequence[Clip],
    by_split: Mapping[Split, Sequence[Clip]],
    features: Mapping[str, Features],
    usable: type,
) -> dict[str, Any]:
    """What a model card says of the data: clips per dataset and label and groups per split,
    and why each clip whose prepared input is not ``usable`` was left out."""
    return {
        "counts": {s: label_counts(by_split[s]) for s in SPLITS},
        "groups": {s: len({c.group for c in by_split[s]}) for s in SPLITS},
        "unusable": {
            c.file: why_unusable(features[c.sha256].prepared)
            for c in clips
            if not isinstance(features[c.sha256].prepared, usable)
        },
    }


def shipped_entry(
    key: str, weights: Path, calibrated: Calibrated, card: Path, settings: Mapping[str, Any]
) -> ManifestEntry:
    """The manifest entry of freshly trained weights: its detector's default from now on."""
    return ManifestEntry(
        detector=key,
        file=weights.name,
        sha256=sha256_file(weights),
        threshold=calibrated.threshold,
        uncertain_band=calibrated.uncertain_band,
        calibration=calibrated.calibration,
        card=card.name,
        default=True,
        registered=today(),
        detector_config=dict(settings),
    )


Predictor = Callable[[Sequence[Any]], list[tuple[str, float | None]]]


def measure(
    predict: Predictor,
    by_split: Mapping[Split, Sequence[Clip]],
    features: Mapping[str, Features],
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """The val and test splits' ``binary_report`` (with ``per_dataset``) of ``predict``, which
    turns prepared inputs into (label, fake probability) as the daemon would judge them."""
    measured: dict[str, Any] = {}
    for split in ("val", "test"):
        members = by_split[split]
        predictions = predict([features[c.sha256].prepared for c in members])
        measured[split] = binary_report(
            [c.label for c in members],
            [p for _, p in predictions],
            [label for label, _ in predictions],
            groups=[c.group for c in members],
            resamples=resamples,
            seed=seed,
        ) | {"per_dataset": per_dataset(members, predictions)}
    return measured


def count_rows(counts: Mapping[str, Mapping[str, Mapping[str, int]]]) -> str:
    """Markdown rows ``| dataset | REAL / FAKE per split |`` of ``label_counts`` per split."""
    datasets = sorted({d for s in SPLITS for d in counts[s]})
    return "\n".join(
        f"| {d} | "
        + " | ".join(
            f"{counts[s].get(d, {}).get('REAL', 0)} / {counts[s].get(d, {}).get('FAKE', 0)}"
            for s in SPLITS
        )
        + " |"
        for d in datasets
    )


def with_held_out(entry: ManifestEntry, test: Mapping[str, Any]) -> ManifestEntry:
    """``entry`` carrying the held-out ROC AUC of ``test`` (a ``binary_report``), when defined."""
    auc = test["metrics"]["auc"]
    low, high = auc["ci95"]
    if auc["value"] is None or low is None or high is None:
        return entry
    held = HeldOut(
        roc_auc=auc["value"], roc_auc_ci95=(low, high), clips=test["n"], report=entry.card or ""
    )
    return entry.model_copy(update={"held_out": held})


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def why_unusable(prepared: Any) -> str:
    """Why a clip's prepared input cannot train or be judged ("" when it can). Every detector's
    no-face marker carries ``frames_with_face`` and ``frames_sampled``."""
    if isinstance(prepared, Failed):
        return prepared.code
    if hasattr(prepared, "frames_with_face"):
        return f"no_face ({prepared.frames_with_face}/{prepared.frames_sampled} frames)"
    return ""


def write_split_file(
    path: Path,
    key: str,
    clips: Sequence[Clip],
    splits: Sequence[Split],
    features: Mapping[str, Features],
    settings: ShipSettings,
    seed: int,
) -> None:
    """The JSON side file of a model card: every clip, its group and split, and why it was
    unusable."""
    doc = {
        "schema": "drishtiksha.training-split/1",
        "detector": key,
        "data": settings.data_source,
        "seed": seed,
        "val_fraction": settings.val_fraction,
        "test_fraction": settings.test_fraction,
        "rule": GROUP_RULE,
        "clips": [
            {
                "file": c.file,
                "sha256": c.sha256,
                "label": LABEL_NAMES[c.label],
                "dataset": c.dataset,
                "group": c.group,
                "split": s,
                "unusable": why_unusable(features[c.sha256].prepared) or None,
            }
            for c, s in zip(clips, splits, strict=True)
        ],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


def read_split_file(path: Path) -> dict[str, Split]:
    """``{sha256: split}`` from a model card's split file."""
    try:
        doc = json.loads(path.read_text())
        return {c["sha256"]: c["split"] for c in doc["clips"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"cannot read split file {path}: {exc}") from exc


def _ci(metric: Mapping[str, Any]) -> str:
    value, (low, high) = metric["value"], metric["ci95"]
    if value is None:
        return "undefined"
    interval = "" if low is None else f" [{low:.3f}, {high:.3f}]"
    return f"{value:.3f}{interval}"


def metrics_table(report: Mapping[str, Any]) -> str:
    """A markdown table of one ``binary_report``."""
    names = {
        "auc": "ROC AUC",
        "eer": "EER",
        "accuracy": "accuracy (decided clips)",
        "accuracy_all": "accuracy (every clip; not decided counts as wrong)",
        "precision": "precision (FAKE)",
        "recall": "recall (FAKE)",
        "ece": "expected calibration error",
        "abstention_rate": "UNCERTAIN or ABSTAIN rate",
    }
    lines = ["| metric | value [95% CI] |", "|---|---|"]
    lines += [f"| {names[k]} | {_ci(v)} |" for k, v in report["metrics"].items()]
    return "\n".join(lines)


def dataset_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of ``per_dataset``."""
    lines = [
        "| dataset | label | clips | decided | correct | mean P(fake) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        mean = "-" if r["mean_probability"] is None else f"{r['mean_probability']:.3f}"
        lines.append(
            f"| {name} | {r['label']} | {r['n']} | {r['decided']} | {r['correct']} | {mean} |"
        )
    return "\n".join(lines)


def card_header(report: Mapping[str, Any], what: str = "") -> str:
    """A model card's title, weights hash, date, code version and the command that trained."""
    settings: ShipSettings = report["settings"]
    return f"""# Model card: {report["detector"]}{what} (`{report["checkpoint"]}`)

sha256 `{report["sha256"]}`. Trained {report["date"]} by `drishtiksha train`; code version
`{settings.code_version}`.

Command:

```sh
{settings.command}
```"""


def card_data(report: Mapping[str, Any], unusable_heading: str, totals: bool = False) -> str:
    """A model card's "Training data" section up to its split rule: clips per dataset and split
    (with a totals row when ``totals``), groups, the split file, and the clips left out."""
    settings: ShipSettings = report["settings"]
    counts = report["counts"]
    total_row = ""
    if totals:
        sums = " | ".join(
            f"{sum(v['REAL'] for v in counts[s].values())} / "
            f"{sum(v['FAKE'] for v in counts[s].values())}"
            for s in SPLITS
        )
        total_row = f"\n| **all** | {sums} |"
    unusable = "\n".join(f"- `{f}`: {why}" for f, why in sorted(report["unusable"].items()))
    return f"""## Training data

From `{settings.data_source}`. Clips per split, REAL / FAKE:

| dataset | train | val | test |
|---|---|---|---|
{count_rows(counts)}{total_row}

Groups per split: train {report["groups"]["train"]}, val {report["groups"]["val"]}, test
{report["groups"]["test"]}. Every clip, its sha256, group and split:
`{split_file(Path(report["card"])).name}`.

{unusable_heading}

{unusable or "- none"}"""


def card_results(report: Mapping[str, Any], seed: int) -> str:
    """A model card's operating point and held-out metrics (with the validation split's)."""
    settings: ShipSettings = report["settings"]
    op: Calibrated = report["operating_point"]
    test, val = report["measured"]["test"], report["measured"]["val"]
    band = "none" if op.uncertain_band is None else "[{:.4f}, {:.4f}]".format(*op.uncertain_band)
    return f"""## Operating point (chosen on the validation split only)

- Calibration: Platt scaling, a = {op.calibration.a:.4f}, b = {op.calibration.b:.4f}.
- Threshold: {op.threshold:.4f}, chosen at the {op.rule}.
- UNCERTAIN band: {band}.

## Held-out test split

{test["n"]} clips ({test["n_real"]} REAL, {test["n_fake"]} FAKE) from groups never seen in
training or validation; {test["n_scored"]} scored, {test["n_decided"]} decided. 95% intervals:
percentile bootstrap over groups ({settings.resamples} resamples, seed {seed}).

{metrics_table(test)}

Per source dataset (test split):

{dataset_table(test["per_dataset"])}

Validation split (used for the operating point, so optimistic):

{metrics_table(val)}"""


def model_card(report: Mapping[str, Any]) -> str:
    """The model card (markdown) of a ``train_and_ship`` report."""
    settings: ShipSettings = report["settings"]
    params: TrainParams = report["params"]
    training: TrainResult = report["training"]
    op: Calibrated = report["operating_point"]
    test = report["measured"]["test"]
    val = report["measured"]["val"]
    band = "none" if op.uncertain_band is None else "[{:.4f}, {:.4f}]".format(*op.uncertain_band)
    band_text = (
        f"{band}, every probability: the network showed no signal on validation"
        if op.uncertain_band == (0.0, 1.0)
        else f"{band}, the {settings.uncertain_fraction:.0%} of validation clips nearest the "
        "threshold"
    )
    history = training.history
    windows = report["windows"]
    stopped = ", stopped early" if training.stopped_early else ""
    data = card_data(
        report,
        "Clips without usable features (left out of training; scored ABSTAIN in evaluation):",
        totals=True,
    )
    return f"""{card_header(report)}

## What it is

The seed project's ColorCuesNet (LSTM({windows["features"]} -> {windows["hidden_size"]}) -> fc
32 -> fc 1) over windows of per-frame face (r, g) chromaticity histograms, as
`detectors/color_cues.py` computes them. The checkpoint is a bare state dict in the seed's key
names and loads in the seed unchanged. Training standardised every histogram bin (mean and
standard deviation over the training frames); the standardisation is folded into the LSTM's
input weights, so the checkpoint takes raw histograms like the seed's.

{data}

### Split rule

{GROUP_RULE} Groups are assigned to train / val / test (target fractions
{1 - settings.val_fraction - settings.test_fraction:.2f} / {settings.val_fraction:.2f} /
{settings.test_fraction:.2f} per label) by a seeded search (seed {params.seed}) that keeps both
labels in every split.

## Training

BCE on windows of {windows["length"]} histograms (stride {windows["train_stride"]} in training,
{windows["inference_stride"]} at inference), every video weighted equally and both labels
equally; Adam (learning rate {params.learning_rate}, weight decay {params.weight_decay}), batch
{params.batch_size}, gradient norm clipped at 1, dropout as configured, seed {params.seed}.
Early stopping on the validation loss (video-level BCE of the mean window probability),
patience {params.patience}: best epoch {training.best_epoch} of {training.epochs_run} run
(budget {params.epochs}{stopped}).
Validation loss at the best epoch: {history[training.best_epoch - 1]["val_loss"]:.4f}.

## Operating point (chosen on the validation split only)

- Calibration: Platt scaling of the network's probability, `sigmoid(a * logit(p) + b)` with
  a = {op.calibration.a:.4f}, b = {op.calibration.b:.4f}; reported probabilities are calibrated.
- Threshold: {op.threshold:.4f}, chosen at the {op.rule}.
- UNCERTAIN band: {band_text}; probabilities inside it are answered UNCERTAIN.

## Held-out test split

{test["n"]} clips ({test["n_real"]} REAL, {test["n_fake"]} FAKE) from groups never seen in
training or validation; {test["n_scored"]} scored, {test["n_decided"]} decided. 95% intervals:
percentile bootstrap over groups ({settings.resamples} resamples, seed {params.seed}).

{metrics_table(test)}

Per source dataset (test split):

{dataset_table(test["per_dataset"])}

For reference, the validation split (used to choose the operating point, so optimistic):

{metrics_table(val)}

## Limitations

- A few dozen clips from a few dozen sources: intervals are wide and a different seed gives a
  different split and different numbers. This is a measured baseline, not a validated product.
- The feature sees only colour statistics of the face box: lip-sync and talking-head
  generators that keep the camera's colours are largely outside what it can notice.
- Clips where dlib's HOG detector finds a face on fewer than the configured share of sampled
  frames are not judged (ABSTAIN).
"""
