"""``drishtiksha eval --cross-validate`` through the command line on a small labelled set of
synthetic clips: pairs of a camera face and its repainted (blurred) copy share a group, as
Celeb-DF's real and face-swapped clips of one person do, and one clip shows no face."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from detectors.face_cues import KEY
from detectors.manifest import read_manifest
from processor.cli import app
from tests.integration.test_train_eval import _repainted
from tests.media import make_video

runner = CliRunner()
PAIRS = 6


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    scratch = tmp_path_factory.mktemp("scratch")
    rows = []
    for i in range(PAIRS):
        make_video(root / f"r{i}.mp4", seconds=(10 + i) / 10, fps=10)
        plain = make_video(scratch / f"p{i}.mp4", seconds=(10 + i) / 10, fps=10)
        _repainted(plain, root / f"f{i}.mp4")
        rows += [
            {"file": f"r{i}.mp4", "label": "REAL", "dataset": "camera", "group": f"person-{i}"},
            {"file": f"f{i}.mp4", "label": "FAKE", "dataset": "repainted", "group": f"person-{i}"},
        ]
    make_video(root / "blank.mp4", seconds=1.0, fps=10, face=False)
    rows.append({"file": "blank.mp4", "label": "REAL", "dataset": "empty-room", "group": "room"})
    path = root / "labels.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "label", "dataset", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_cross_validate_writes_the_headline_report_and_the_manifest_quotes_it(
    labels: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    section = {"run_frames": 8, "min_faces": 6}
    config.write_text(yaml.safe_dump({"device": "cpu", "detectors": {KEY: section}}))
    manifest = tmp_path / "weights" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text((Path(__file__).parents[2] / "weights" / "manifest.json").read_text())
    report_path = tmp_path / "reports" / "logo.json"
    png = tmp_path / "reports" / "logo.png"
    args = ["eval", "--cross-validate", "--data", str(labels), "--resamples", "50"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--json", str(report_path)]
    args += ["--png", str(png), "--record-held-out", str(manifest), "-c", str(config)]

    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output

    report = json.loads(report_path.read_text())
    assert png.stat().st_size > 10_000
    assert report["method"] == "leave one group out"
    assert report["groups"] == PAIRS + 1
    assert report["command"].startswith("uv run drishtiksha eval --cross-validate --data ")
    assert list(report["scorers"]) == [KEY]  # one detector: no fused scorer
    scorer = report["scorers"][KEY]
    assert (scorer["n"], scorer["n_scored"], scorer["n_abstained"]) == (2 * PAIRS + 1, 12, 1)
    for metric in ("auc", "eer", "accuracy", "accuracy_all", "abstention_rate"):
        assert set(scorer["metrics"][metric]) == {"value", "ci95", "resamples"}
    # The blur is learnt from the other pairs: repainted faces rank above camera ones.
    assert scorer["metrics"]["auc"]["value"] >= 0.9
    # The clip without a face is counted, and counted as not right.
    assert scorer["metrics"]["abstention_rate"]["value"] == pytest.approx(1 / 13, abs=1e-4)
    m = scorer["metrics"]
    assert m["accuracy_all"]["value"] < m["accuracy"]["value"]
    assert set(scorer["per_dataset"]) == {"camera", "repainted", "empty-room"}
    assert scorer["per_dataset"]["empty-room"]["accuracy_all"] == 0.0
    assert "empty-room" in scorer["sources_below_half"]
    assert "fewer than half right" in result.output
    [blank] = [c for c in report["clips"] if c["file"] == "blank.mp4"]
    assert blank["results"][KEY] == {"label": "ABSTAIN", "p": None}

    # The manifest's held_out is the report's figure, pointing at the report.
    entry = read_manifest(manifest).default_entry(KEY)
    assert entry.held_out is not None
    auc = scorer["metrics"]["auc"]
    assert entry.held_out.roc_auc == auc["value"]
    assert list(entry.held_out.roc_auc_ci95) == auc["ci95"]
    assert entry.held_out.clips == scorer["n_scored"]
    assert entry.held_out.report == os.path.relpath(report_path, manifest.parent)


def test_cross_validate_refuses_what_it_cannot_refit(labels: Path, tmp_path: Path) -> None:
    args = ["eval", "--cross-validate", "--data", str(labels)]
    refused = runner.invoke(app, [*args, "--detectors", "c2pa-provenance"], terminal_width=200)
    assert refused.exit_code == 2
    assert "c2pa-provenance cannot be; these can: face-cues-v1" in refused.output
    both = runner.invoke(app, [*args, "--all"], terminal_width=200)
    assert both.exit_code == 2
    assert "leave out --all, --split and --card" in both.output
