"""The command line, invoked in-process with typer's runner on real files and databases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from processor.cli import app
from tests.media import make_text_as_mp4, make_video

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": f"sqlite:///{tmp_path / 'd.db'}"},
                "device": "cpu",
                "detectors": {"color-cues-lstm-v1": {"weights": "dummy", "num_frames": 8}},
            }
        )
    )
    return path


def test_analyze_judges_good_and_bad_files_without_moving_them(
    tmp_path: Path, config: Path
) -> None:
    good = make_video(tmp_path / "face.mp4", seconds=1.0, fps=10, size=(320, 240), face=True)
    bad = make_text_as_mp4(tmp_path / "notes.mp4")
    result = runner.invoke(app, ["analyze", str(good), str(bad), "--json", "-c", str(config)])
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    by_file = {Path(d["file"]).name: d for d in docs}
    [res] = by_file["face.mp4"]["detectors"]
    assert res["weights"] == "dummy"
    assert res["label"] in ("REAL", "FAKE")
    assert 0.0 <= res["fake_probability"] <= 1.0
    assert by_file["notes.mp4"]["error"]["code"] == "not_a_video"
    assert good.exists()
    assert bad.exists()


def test_config_check_names_the_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("queue:\n  lease: 5\n")
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    assert "queue.lease" in result.output
    assert str(path) in result.output


def test_config_check_accepts_a_good_file(config: Path) -> None:
    result = runner.invoke(app, ["config", "check", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["device"] == "cpu"


def test_db_upgrade_then_jobs_list_is_empty(config: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade", "-c", str(config)]).exit_code == 0
    result = runner.invoke(app, ["jobs", "list", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "state" in result.stdout
    missing = runner.invoke(app, ["jobs", "show", "0" * 32, "-c", str(config)])
    assert missing.exit_code == 1


def test_detectors_lists_color_cues(config: Path) -> None:
    result = runner.invoke(app, ["detectors", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "color-cues-lstm-v1" in result.stdout


def test_workers_lists_heartbeating_workers(config: Path) -> None:
    from processor.config import load_config
    from storage.db import make_engine
    from storage.queue import JobQueue

    assert runner.invoke(app, ["db", "upgrade", "-c", str(config)]).exit_code == 0
    engine = make_engine(load_config(config).database.url)
    JobQueue(engine).heartbeat("host-a:42:abc", "host-a", 42, "worker")
    engine.dispose()
    result = runner.invoke(app, ["workers", "-c", str(config)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "host-a:42:abc" in result.stdout
    assert "yes" in result.stdout


def test_bench_queue_drains_every_job_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    result = runner.invoke(
        app,
        ["bench", "queue", "--database-url", url, "--jobs", "30", "--workers", "2"],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("│ 2 "))
    assert row.split("│")[2].strip() == "30"
