"""``drishtiksha train`` then ``drishtiksha eval`` through the command line on small synthetic
videos whose FAKE ones are tinted, so the task is learnable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
import torch
import yaml
from transformers import SiglipVisionConfig, SiglipVisionModel
from typer.testing import CliRunner

from detectors.color_cues import KEY
from detectors.color_cues_net import ColorCuesNet
from detectors.face_cues import KEY as FACE_KEY
from detectors.faces import FaceFinder
from detectors.manifest import read_manifest
from detectors.siglip_lstm import KEY_V1, split_weights_id
from detectors.weights import sha256_file
from processor.cli import app
from tests.media import make_video

runner = CliRunner()
# Few frames and short windows keep face detection and training to seconds.
DETECTOR = {"num_frames": 8, "sequence_length": 4, "window_stride": 2}


def _tinted(src: Path, dst: Path) -> Path:
    """``src`` re-encoded with more red and less blue: a colour cue the detector can learn."""
    with av.open(str(src)) as inp, av.open(str(dst), mode="w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for frame in inp.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24").astype(np.float32)
            rgb[..., 0] *= 1.3
            rgb[..., 2] *= 0.7
            image = np.clip(rgb, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dst


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    (root / "real").mkdir()
    (root / "fake").mkdir()
    scratch = tmp_path_factory.mktemp("scratch")
    for i in range(6):
        # Different frame counts give different bytes, hence different clips.
        make_video(root / "real" / f"r{i}.mp4", seconds=(8 + i) / 10, fps=10, face=True)
        plain = make_video(scratch / f"f{i}.mp4", seconds=(14 + i) / 10, fps=10, face=True)
        _tinted(plain, root / "fake" / f"f{i}.mp4")
    return root


def _config(path: Path, tmp: Path, detector: dict[str, Any]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": f"sqlite:///{tmp / 'd.db'}"},
                "device": "cpu",
                "detectors": {KEY: DETECTOR | detector},
            }
        )
    )
    return path


def test_train_then_eval(dataset: Path, tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    cache = tmp_path / "cache"
    train_config = _config(tmp_path / "train.yaml", tmp_path, {"weights": "dummy"})
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(dataset),
            "--out",
            str(weights),
            "--epochs",
            "15",
            "--patience",
            "15",
            "--learning-rate",
            "0.01",
            "--val-fraction",
            "0.25",
            "--test-fraction",
            "0.25",
            "--cache-dir",
            str(cache),
            "--state-dir",
            str(tmp_path / "state"),
            "-c",
            str(train_config),
        ],
    )
    assert result.exit_code == 0, result.output

    checkpoint = weights / f"{KEY}.pt"
    # A bare state dict in the seed's key names.
    state = torch.load(checkpoint, weights_only=True)
    ColorCuesNet(1024, 64, 0.5).load_state_dict(state, strict=True)
    [entry] = read_manifest(weights / "manifest.json").entries
    assert (entry.detector, entry.file, entry.default) == (KEY, checkpoint.name, True)
    assert entry.sha256 == sha256_file(checkpoint)
    assert entry.uncertain_band is not None
    card = weights / f"{KEY}.md"
    assert "Held-out test split" in card.read_text()
    split = json.loads((weights / f"{KEY}.split.json").read_text())
    assert {c["split"] for c in split["clips"]} == {"train", "val", "test"}
    test_clips = [c for c in split["clips"] if c["split"] == "test"]
    assert {c["label"] for c in test_clips} == {"REAL", "FAKE"}
    assert len(list(cache.rglob("*.npz"))) == 12

    eval_config = _config(
        tmp_path / "eval.yaml",
        tmp_path,
        {"weights": "manifest", "manifest": str(weights / "manifest.json")},
    )
    report_path, png = tmp_path / "report.json", tmp_path / "report.png"
    result = runner.invoke(
        app,
        [
            "eval",
            "--data",
            str(dataset),
            "--split",
            "test",
            "--card",
            str(card),
            "--json",
            str(report_path),
            "--png",
            str(png),
            "--resamples",
            "50",
            "--cache-dir",
            str(cache),
            "-c",
            str(eval_config),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert set(report["scorers"]) == {KEY, "fused (any_fake)"}
    scorer = report["scorers"][KEY]
    assert scorer["n"] == len(test_clips)
    assert set(scorer["metrics"]) >= {"auc", "eer", "accuracy", "ece", "abstention_rate"}
    assert report["detectors"][KEY]["weights"] == entry.sha256
    assert report["detectors"][KEY]["operating_point"]["threshold"] == entry.threshold
    assert png.read_bytes().startswith(b"\x89PNG")

    # Every clip, prepared anew through the pipeline: the tint is learnt.
    everything = runner.invoke(
        app,
        [
            "eval",
            "--data",
            str(dataset),
            "--all",
            "--no-cache",
            "--resamples",
            "20",
            "--json",
            str(tmp_path / "all.json"),
            "-c",
            str(eval_config),
        ],
    )
    assert everything.exit_code == 0, everything.output
    full = json.loads((tmp_path / "all.json").read_text())["scorers"][KEY]
    assert full["n"] == 12
    assert full["metrics"]["auc"]["value"] >= 0.9


def test_eval_needs_a_selection(dataset: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "c.yaml", tmp_path, {"weights": "dummy"})
    result = runner.invoke(app, ["eval", "--data", str(dataset), "-c", str(config)])
    assert result.exit_code == 2
    assert "--all" in result.output


def _repainted(src: Path, dst: Path) -> Path:
    """``src`` with the face blurred, as a generator's softer repainted face."""
    finder = FaceFinder()
    with av.open(str(src)) as inp, av.open(str(dst), mode="w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for frame in inp.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            face = finder.find(rgb)
            if face is not None:
                left, top, right, bottom = face.box
                rgb[top:bottom, left:right] = cv2.GaussianBlur(
                    rgb[top:bottom, left:right], (9, 9), 3
                )
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dst


def test_face_cues_train_cross_validate_eval(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for label in ("real", "fake"):
        (data / label).mkdir(parents=True)
    for i in range(8):
        make_video(data / "real" / f"r{i}.mp4", seconds=(10 + i) / 10, fps=10)
        plain = make_video(tmp_path / f"p{i}.mp4", seconds=(10 + i) / 10, fps=10)
        _repainted(plain, data / "fake" / f"f{i}.mp4")
    section = {"run_frames": 8, "min_faces": 6}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"device": "cpu", "detectors": {FACE_KEY: section}}))
    common = ["--detector", FACE_KEY, "--data", str(data), "--cache-dir", str(tmp_path / "cache")]
    common += ["--val-fraction", "0.25", "--test-fraction", "0.25", "-c", str(config)]

    cv = runner.invoke(app, ["train", *common, "--cross-validate"])
    assert cv.exit_code == 0, cv.output
    assert "leave one group out: 16 groups" in cv.output
    assert not (tmp_path / "weights").exists()

    weights = tmp_path / "weights"
    trained = runner.invoke(app, ["train", *common, "--out", str(weights)])
    assert trained.exit_code == 0, trained.output
    [entry] = read_manifest(weights / "manifest.json").entries
    assert (entry.detector, entry.file) == (FACE_KEY, f"{FACE_KEY}.json")
    assert entry.held_out is not None
    assert f"--detector {FACE_KEY}" in (weights / f"{FACE_KEY}.md").read_text()

    manifest = str(weights / "manifest.json")
    config.write_text(
        yaml.safe_dump(
            {
                "device": "cpu",
                "detectors": {FACE_KEY: section | {"weights": "manifest", "manifest": manifest}},
            }
        )
    )
    report_path = tmp_path / "all.json"
    evaluate = ["eval", "--data", str(data), "--all", "--no-cache", "--resamples", "20"]
    evaluated = runner.invoke(app, [*evaluate, "--json", str(report_path), "-c", str(config)])
    assert evaluated.exit_code == 0, evaluated.output
    scorer = json.loads(report_path.read_text())["scorers"][FACE_KEY]
    assert scorer["n"] == 16
    # The blur is learnt: repainted faces score higher than camera ones.
    assert scorer["metrics"]["auc"]["value"] >= 0.9


# A tiny SigLIP tower of the same architecture, saved as a local Hugging Face folder.
TINY_SIGLIP = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "lstm_hidden": 8,
    "num_frames": 6,
}


def test_siglip_heads_train_on_a_frozen_backbone_then_eval(dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "siglip"
    architecture = {k: v for k, v in TINY_SIGLIP.items() if k not in ("lstm_hidden", "num_frames")}
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(vision_use_head=True, **architecture)).save_pretrained(
        folder
    )
    section = TINY_SIGLIP | {"backbone": str(folder)}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"device": "cpu", "detectors": {KEY_V1: section}}))
    weights, cache = tmp_path / "weights", tmp_path / "cache"
    train = ["train", "--detector", KEY_V1, "--data", str(dataset), "--out", str(weights)]
    fit = ["--epochs", "40", "--patience", "40", "--learning-rate", "0.01", "--batch-size", "4"]
    split = ["--val-fraction", "0.25", "--test-fraction", "0.25", "--cache-dir", str(cache)]
    trained = runner.invoke(app, [*train, *fit, *split, "-c", str(config)])
    assert trained.exit_code == 0, trained.output
    heads = weights / f"{KEY_V1}.heads.pt"
    state = torch.load(heads, weights_only=True)
    assert {k.split(".")[0] for k in state} == {"lstm", "video_classifier", "image_classifier"}
    [entry] = read_manifest(weights / "manifest.json").entries
    assert (entry.detector, entry.file, entry.sha256) == (KEY_V1, heads.name, sha256_file(heads))
    files = entry.detector_config["backbone_files"]
    assert set(files) == {"model.safetensors"}
    assert entry.held_out is not None
    assert "frozen SigLIP tower" in (weights / f"{KEY_V1}.md").read_text()
    # Embeddings were computed once per clip and cached.
    assert len(list(cache.rglob("*.npz"))) == 12

    # The daemon's detector with the trained heads from the manifest, every clip decoded anew.
    run = section | {"weights": "manifest", "manifest": str(weights / "manifest.json")}
    config.write_text(yaml.safe_dump({"device": "cpu", "detectors": {KEY_V1: run}}))
    report_path = tmp_path / "all.json"
    evaluate = ["eval", "--data", str(dataset), "--all", "--no-cache", "--resamples", "20"]
    evaluated = runner.invoke(app, [*evaluate, "--json", str(report_path), "-c", str(config)])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(report_path.read_text())
    used = report["detectors"][KEY_V1]
    assert used["weights"] == split_weights_id(entry.sha256, files)
    scorer = report["scorers"][KEY_V1]
    assert scorer["n"] == 12
    assert scorer["metrics"]["auc"]["value"] >= 0.9  # the tint is learnt from the embeddings


def test_siglip_training_needs_a_backbone(dataset: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"device": "cpu", "detectors": {KEY_V1: TINY_SIGLIP}}))
    result = runner.invoke(
        app, ["train", "--detector", KEY_V1, "--data", str(dataset), "-c", str(config)]
    )
    assert result.exit_code == 2
    assert "needs 'backbone'" in result.output
