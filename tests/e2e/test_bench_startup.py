"""``drishtiksha bench startup`` end to end: every command and the daemon started for real, in
a scratch folder, reported as JSON. Times are recorded, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_bench_startup_times_each_command_and_the_daemon(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device": "cpu",
                "inboxes": [{"name": "default", "detectors": ["c2pa-provenance"]}],
                "detectors": {"c2pa-provenance": {}},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRISHTIKSHA_")}
    env["PYTHONPATH"] = str(ROOT)
    command = ["bench", "startup", "--runs", "1", "--json", "--config", str(config)]
    done = subprocess.run(
        [sys.executable, "-m", "processor", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["schema"] == "drishtiksha.bench-startup/1"
    assert report["config"] == str(config)
    assert len(report["load_before"]) == 3
    names = [row["name"] for row in report["commands"]]
    assert names == [
        "--help",
        "config check",
        "detectors",
        "jobs list",
        "run: ready line",
        "run: /health 200",
    ]
    for row in report["commands"]:
        assert row["runs"] == 1
        assert row["seconds"][0] > 0
        assert row["target_s"] in (2.0, 5.0)
    # The daemon ran in its own scratch folder: nothing was made where the command started.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
