"""Bringing one's own ONNX face classifier through the command line: ``weights import`` checks
the graph against the configuration and registers it, ``config check`` names a missing file,
and ``analyze`` judges a clip with the imported model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from detectors.manifest import read_manifest
from detectors.onnx_face import KEY
from detectors.weights import sha256_file
from processor.cli import app
from tests.media import make_video
from tests.onnx_models import SIZE, mean_graph

runner = CliRunner()
SECTION = {"input_size": [SIZE, SIZE], "num_frames": 4, "mean": [0.5] * 3, "std": [0.25] * 3}


def _config(tmp_path: Path, section: dict[str, Any]) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": f"sqlite:///{tmp_path / 'd.db'}"},
                "device": "cpu",
                "inboxes": [{"name": "default", "path": str(tmp_path / "in"), "detectors": [KEY]}],
                "detectors": {KEY: section},
            }
        )
    )
    return path


def test_weights_import_registers_a_fitting_graph_and_refuses_one_that_does_not(
    tmp_path: Path,
) -> None:
    good = mean_graph(tmp_path / "mean.onnx")
    wrong = mean_graph(tmp_path / "big.onnx", shape=("N", 3, 64, 64))
    config = _config(tmp_path, SECTION)
    manifest = tmp_path / "weights" / "manifest.json"
    common = ["--detector", KEY, "--manifest", str(manifest), "-c", str(config)]

    refused = runner.invoke(app, ["weights", "import", str(wrong), *common], terminal_width=300)
    assert refused.exit_code == 1
    [line] = refused.output.strip().splitlines()
    assert line == (
        "refused: big.onnx: input image has shape [?, 3, 64, 64], but the configuration says "
        f"[batch, 3, {SIZE}, {SIZE}] (input_size [{SIZE}, {SIZE}], layout NCHW)"
    )
    assert not manifest.exists()

    imported = runner.invoke(app, ["weights", "import", str(good), *common])
    assert imported.exit_code == 0, imported.output
    [entry] = read_manifest(manifest).entries
    assert entry.detector == KEY
    assert entry.sha256 == sha256_file(good)
    assert entry.file == f"{KEY}-{entry.sha256[:12]}.onnx"
    assert entry.detector_config["input_size"] == [SIZE, SIZE]

    # weights: manifest now loads it, and judges a clip with a face.
    clip = make_video(tmp_path / "face.mp4", seconds=1.0, fps=10)
    _config(tmp_path, SECTION | {"weights": "manifest", "manifest": str(manifest)})
    judged = runner.invoke(app, ["analyze", str(clip), "--json", "-c", str(config)])
    assert judged.exit_code == 0, judged.output
    [result] = json.loads(judged.stdout)["detectors"]
    assert result["detector"] == KEY
    assert result["weights"] == entry.sha256
    assert result["label"] in ("REAL", "FAKE")
    assert result["details"]["frames_with_face"] == 4


def test_config_check_names_a_missing_onnx_file(tmp_path: Path) -> None:
    gone = tmp_path / "gone.onnx"
    config = _config(tmp_path, SECTION | {"weights": str(gone)})
    result = runner.invoke(app, ["config", "check", "-c", str(config)], terminal_width=300)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == (
        f"error: detectors.{KEY}.weights: {gone} does not exist"
    )
