"""The shipped systemd units: valid for systemd-analyze, and hardened as the README promises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
UNIT_FILES = sorted(UNITS.glob("*.service"))


def test_every_unit_is_notify_and_hardened() -> None:
    assert {p.name for p in UNIT_FILES} == {
        "drishtiksha.service",
        "drishtiksha-api.service",
        "drishtiksha-ingest.service",
        "drishtiksha-worker@.service",
    }
    for unit in UNIT_FILES:
        text = unit.read_text()
        for line in (
            "Type=notify",
            "WatchdogSec=",
            "Restart=on-failure",
            "User=drishtiksha",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "ReadWritePaths=",
            "EnvironmentFile=-/etc/drishtiksha/drishtiksha.env",
        ):
            assert line in text, f"{unit.name} lacks {line}"
    worker = (UNITS / "drishtiksha-worker@.service").read_text()
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in worker
    assert "--role worker" in worker


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at this environment's console script.
    exe = Path(sys.executable).parent / "drishtiksha"
    assert exe.exists()
    names = []
    for unit in UNIT_FILES:
        name = unit.name.replace("@.", "@0.")
        text = unit.read_text().replace("/opt/drishtiksha/.venv/bin/drishtiksha", str(exe))
        (tmp_path / name).write_text(text)
        names.append(str(tmp_path / name))
    proc = subprocess.run(
        ["systemd-analyze", "verify", *names], capture_output=True, text=True, check=False
    )
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if str(tmp_path) in line]
    assert proc.returncode == 0, proc.stderr
    assert ours == []
