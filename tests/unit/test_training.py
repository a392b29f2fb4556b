"""Training data, grouping and split, the feature cache, and the training loop on tiny
synthetic features."""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from detectors.base import VideoInfo
from detectors.color_cues import ColorCuesConfig, ColorCuesInput, NoFace
from detectors.color_cues_net import ColorCuesNet
from detectors.errors import CorruptVideo, TransientError
from detectors.evaluation import roc_auc
from detectors.training import (
    Clip,
    DatasetError,
    Example,
    Failed,
    FeatureCache,
    Features,
    StandardisedNet,
    TrainParams,
    assign_groups,
    calibrate,
    extract_features,
    fold_normalisation,
    group_split,
    load_clips,
    train_head,
    training_windows,
    video_probabilities,
)

# --- groups and split --------------------------------------------------------------------------


def _clip(file: str, label: int, repo: str = "", dataset: str = "", group: str = "") -> Clip:
    sha = hashlib.sha256(file.encode()).hexdigest()
    return Clip(Path(file), file, label, dataset or "d", sha, repo, group)


def _groups(clips: list[Clip]) -> dict[str, str]:
    return {c.file: c.group for c in assign_groups(clips)}


def test_without_a_group_column_clips_group_by_their_source() -> None:
    groups = _groups(
        [
            _clip("fake/hyperlips_result_video1.mp4", 1, "semchan/HyperLips"),
            _clip("real/hyperlips_video2.mp4", 0, "semchan/HyperLips"),
            _clip("real/edtalk_uncrop_obama.mp4", 0, "tanshuai0219/EDTalk"),
            _clip("real/deepfacelive_sample_obama_speaking.mp4", 0, "iperov/DeepFaceLive"),
            _clip("real/lonely.mp4", 0),
            _clip("real/other.mp4", 0),
        ]
    )
    assert groups["fake/hyperlips_result_video1.mp4"] == groups["real/hyperlips_video2.mp4"]
    # No rule guesses people from file names: a person in two sources is the group column's.
    edtalk = groups["real/edtalk_uncrop_obama.mp4"]
    assert groups["real/deepfacelive_sample_obama_speaking.mp4"] != edtalk
    assert groups["real/lonely.mp4"] != groups["real/other.mp4"]
    assert len(set(groups.values())) == 5


def test_a_group_column_alone_decides() -> None:
    groups = _groups(
        [
            _clip("real/celebdf_id1_0001.mp4", 0, "r", group="g1"),
            _clip("fake/celebdf_id1_id2_0001.mp4", 1, "r", group="g2"),
        ]
    )
    assert groups["real/celebdf_id1_0001.mp4"] != groups["fake/celebdf_id1_id2_0001.mp4"]


def test_identical_files_always_share_a_group() -> None:
    a = _clip("real/a.mp4", 0, group="g1")
    b = _clip("real/copy-of-a.mp4", 0, group="g2")
    same = Clip(b.path, b.file, b.label, b.dataset, a.sha256, b.origin_repo, b.group)
    groups = _groups([a, same, _clip("real/c.mp4", 0, group="g3")])
    assert groups["real/a.mp4"] == groups["real/copy-of-a.mp4"] != groups["real/c.mp4"]


def _random_groups(seed: int) -> tuple[list[int], list[str]]:
    rng = np.random.default_rng(seed)
    labels: list[int] = []
    groups: list[str] = []
    for g in range(30):
        size = int(rng.integers(1, 6))
        mixed = rng.random() < 0.4
        for _ in range(size):
            labels.append(int(rng.integers(0, 2)) if mixed else g % 2)
            groups.append(f"g{g}")
    return labels, groups


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_split_keeps_groups_whole_and_both_labels_everywhere(seed: int) -> None:
    labels, groups = _random_groups(seed)
    splits = group_split(labels, groups, 0.2, 0.25, seed=seed)

    sides: dict[str, set[str]] = defaultdict(set)
    for g, s in zip(groups, splits, strict=True):
        sides[g].add(s)
    assert all(len(s) == 1 for s in sides.values())
    for split in ("train", "val", "test"):
        held = {y for y, s in zip(labels, splits, strict=True) if s == split}
        assert held == {0, 1}
    share = splits.count("test") / len(splits)
    assert 0.1 < share < 0.4
    assert group_split(labels, groups, 0.2, 0.25, seed=seed) == splits


def test_group_split_refuses_what_cannot_be_split() -> None:
    with pytest.raises(DatasetError, match="both labels"):
        group_split([0, 0, 1, 1], ["a", "a", "b", "b"], 0.2, 0.25)
    with pytest.raises(DatasetError, match="fractions"):
        group_split([0, 1], ["a", "b"], 0.5, 0.5)


# --- data --------------------------------------------------------------------------------------


def _write(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def test_load_clips_from_csv_and_folders(tmp_path: Path) -> None:
    _write(tmp_path / "real" / "a.mp4", b"a")
    _write(tmp_path / "fake" / "b.mp4", b"b")
    _write(tmp_path / "fake" / "notes.txt", b"not a video")
    from_folders = load_clips(tmp_path)
    assert [(c.file, c.label) for c in from_folders] == [("real/a.mp4", 0), ("fake/b.mp4", 1)]

    listed = tmp_path / "labels.csv"
    with listed.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "dataset", "origin_repo"])
        writer.writerow(["real/a.mp4", "REAL", "set-a", "repo/a"])
        writer.writerow(["fake/b.mp4", "fake", "set-b", ""])
    clips = load_clips(tmp_path)  # a folder with labels.csv reads the CSV
    assert [(c.dataset, c.origin_repo, c.label) for c in clips] == [
        ("set-a", "repo/a", 0),
        ("set-b", "", 1),
    ]
    assert clips[0].sha256 == from_folders[0].sha256


def test_load_clips_checks_the_listed_sha256(tmp_path: Path) -> None:
    _write(tmp_path / "a.mp4", b"a")
    listed = tmp_path / "labels.csv"
    listed.write_text("file,label,sha256\na.mp4,REAL," + "0" * 64 + "\n")
    with pytest.raises(DatasetError, match="has sha256"):
        load_clips(listed)
    listed.write_text("file,label\na.mp4,MAYBE\n")
    with pytest.raises(DatasetError, match="REAL or FAKE"):
        load_clips(listed)


# --- feature cache -----------------------------------------------------------------------------

INFO = VideoInfo("mp4", "h264", 320, 240, 30.0, 2.0)


def _prepared(n: int = 5) -> ColorCuesInput:
    return ColorCuesInput(
        histograms=np.arange(n * 16, dtype=np.float32).reshape(n, 16),
        timestamps=tuple(0.5 * i for i in range(n)),
        window_starts=(0, 1),
        frames_sampled=n + 1,
    )


def test_feature_cache_round_trip(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "ns")
    cache.put("a", Features(_prepared(), INFO))
    cache.put("b", Features(NoFace(8, 1), INFO))
    cache.put("c", Features(Failed("corrupt_video", "broken"), None))

    a = cache.get("a")
    assert a is not None
    assert isinstance(a.prepared, ColorCuesInput)
    assert np.array_equal(a.prepared.histograms, _prepared().histograms)
    assert a.prepared.timestamps == _prepared().timestamps
    assert a.prepared.window_starts == (0, 1)
    assert a.info == INFO
    b, c = cache.get("b"), cache.get("c")
    assert b is not None
    assert b.prepared == NoFace(8, 1)
    assert c is not None
    assert c.prepared == Failed("corrupt_video", "broken")
    assert c.info is None
    assert cache.get("missing") is None


def test_feature_cache_hit_avoids_recomputation(tmp_path: Path) -> None:
    clips = [_clip(f"v{i}.mp4", i % 2) for i in range(3)]
    clips = [Clip(c.path, c.file, c.label, c.dataset, f"{i:064x}") for i, c in enumerate(clips)]
    calls: list[Path] = []

    def prepare(path: Path) -> tuple[ColorCuesInput, VideoInfo]:
        calls.append(path)
        if path.name == "v2.mp4":
            raise CorruptVideo("truncated")
        return _prepared(), INFO

    cache = FeatureCache(tmp_path, "ns")
    first = extract_features(clips, cache, prepare, workers=2)
    assert sorted(p.name for p in calls) == ["v0.mp4", "v1.mp4", "v2.mp4"]
    assert first[f"{2:064x}"].prepared == Failed("corrupt_video", "truncated")

    advanced: list[int] = []
    second = extract_features(clips, cache, prepare, advance=lambda: advanced.append(1))
    assert len(calls) == 3  # nothing recomputed, the failure included
    assert len(advanced) == 3
    assert second.keys() == first.keys()


def test_retryable_errors_are_not_cached(tmp_path: Path) -> None:
    def prepare(path: Path) -> tuple[ColorCuesInput, VideoInfo]:
        raise TransientError("disk hiccup")

    cache = FeatureCache(tmp_path, "ns")
    clip = _clip("v.mp4", 0)
    with pytest.raises(TransientError):
        extract_features([clip], cache, prepare)
    assert cache.get(clip.sha256) is None


# --- training ----------------------------------------------------------------------------------

CONFIG = ColorCuesConfig(histogram_bins=4, sequence_length=4, window_stride=2, hidden_size=8)


def _examples(n: int, seed: int) -> list[Example]:
    """Videos of 6-10 frames of 16 bins; FAKE ones carry more mass in the first four bins."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 2
        frames = int(rng.integers(6, 11))
        hists = rng.normal(100, 20, (frames, 16))
        hists[:, :4] += 60 * label
        out.append(Example(np.clip(hists, 0, 255).astype(np.float32), label))
    return out


PARAMS = TrainParams(epochs=8, batch_size=8, learning_rate=1e-2, patience=50, train_stride=1)


def _val_auc(state: dict[str, torch.Tensor], val: list[Example]) -> float:
    net = ColorCuesNet(16, CONFIG.hidden_size, CONFIG.dropout)
    net.load_state_dict(state)
    windows, owner, _ = training_windows(val, CONFIG.sequence_length, CONFIG.window_stride)
    probs = video_probabilities(net, windows, owner, len(val))
    return roc_auc([e.label for e in val], probs)


def test_training_learns_a_separable_set_deterministically() -> None:
    train, val = _examples(24, 0), _examples(12, 1)
    before = torch.get_rng_state()

    first = train_head(train, val, CONFIG, PARAMS)
    second = train_head(train, val, CONFIG, PARAMS)

    assert torch.equal(torch.get_rng_state(), before)
    assert _val_auc(first.state_dict, val) >= 0.95
    assert first.state_dict.keys() == ColorCuesNet(16, 8, 0.5).state_dict().keys()
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    assert first.history == second.history
    assert first.epochs_run == PARAMS.epochs
    assert 1 <= first.best_epoch <= PARAMS.epochs


def test_resume_continues_from_the_saved_epoch(tmp_path: Path) -> None:
    train, val = _examples(16, 2), _examples(8, 3)
    state = tmp_path / "state.pt"
    four = TrainParams(**(vars(PARAMS) | {"epochs": 4}))
    two = TrainParams(**(vars(PARAMS) | {"epochs": 2}))

    straight = train_head(train, val, CONFIG, four)
    partial = train_head(train, val, CONFIG, two, state_path=state)
    resumed = train_head(train, val, CONFIG, four, state_path=state, resume=True)

    assert partial.epochs_run == 2
    assert resumed.resumed_from == 2
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history == straight.history
    assert all(
        torch.equal(resumed.state_dict[k], straight.state_dict[k]) for k in resumed.state_dict
    )

    other = TrainParams(**(vars(four) | {"seed": 7}))
    with pytest.raises(DatasetError, match="different run"):
        train_head(train, val, CONFIG, other, state_path=state, resume=True)


def test_folded_checkpoint_takes_raw_histograms() -> None:
    torch.manual_seed(0)
    net = ColorCuesNet(16, 8, 0.0).eval()
    mean, scale = torch.rand(16) * 100, torch.rand(16) * 30 + 1
    x = torch.rand(3, 4, 16) * 255
    reference = StandardisedNet(net, mean, scale).eval()(x)

    folded = ColorCuesNet(16, 8, 0.0).eval()
    folded.load_state_dict(fold_normalisation(net.state_dict(), mean, scale))

    assert torch.allclose(folded(x), reference, atol=1e-4)


def test_calibrate_picks_threshold_and_band_on_the_calibrated_scale() -> None:
    labels = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    raw = [0.30, 0.32, 0.35, 0.41, 0.47, 0.44, 0.50, 0.52, 0.55, 0.60]
    chosen = calibrate(labels, raw, uncertain_fraction=0.2)
    assert chosen.calibration.a > 0
    calibrated = [chosen.calibration.apply(r) for r in raw]
    assert chosen.uncertain_band is not None
    low, high = chosen.uncertain_band
    assert low <= chosen.threshold <= high
    assert sum(low <= p <= high for p in calibrated) == 2
    assert "equal error" in chosen.rule
    strict = calibrate(labels, raw, target_fpr=0.0, uncertain_fraction=0.0)
    assert strict.uncertain_band is None
    assert all(p < strict.threshold for p, y in zip(calibrated, labels, strict=True) if y == 0)


def test_calibrate_without_signal_answers_uncertain_everywhere() -> None:
    chosen = calibrate([0, 0, 1, 1], [0.8, 0.7, 0.3, 0.2])
    assert chosen.calibration.a == 0.0
    assert chosen.uncertain_band == (0.0, 1.0)
    assert "no signal" in chosen.rule
