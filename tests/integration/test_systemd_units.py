"""The shipped systemd units: valid for systemd-analyze, and hardened as the README promises."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
UNIT_FILES = sorted(UNITS.glob("*.service"))
VENV_EXE = "/opt/drishtiksha/.venv/bin/drishtiksha"
# systemd-analyze security's scale: 0 (locked down) to 10; 3 and below counts as OK there.
MAX_WORKER_EXPOSURE = 3.0


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
            "CapabilityBoundingSet=\n",
            "SystemCallFilter=@system-service",
            "RestrictNamespaces=yes",
            "ProtectProc=invisible",
            "ProtectHome=yes",
        ):
            assert line in text, f"{unit.name} lacks {line}"
        # ProtectHome=yes hides /root and /home: the venv must live elsewhere.
        [exe] = re.findall(r"^ExecStart=(\S+)", text, re.MULTILINE)
        assert exe == VENV_EXE, unit.name
    worker = (UNITS / "drishtiksha-worker@.service").read_text()
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in worker
    assert "Environment=CUDA_DEVICE_ORDER=PCI_BUS_ID" in worker
    assert "--role worker" in worker
    # Every instance loads its detectors at the same time as the host's other instances.
    [start] = re.findall(r"^TimeoutStartSec=(\d+)$", worker, re.MULTILINE)
    assert int(start) >= 300
    # Any of these cuts a worker off from its GPU.
    for line in ("PrivateDevices=yes", "DevicePolicy=", "DeviceAllow=", "ProtectClock=yes"):
        assert line not in worker


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


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_worker_unit_exposure_is_low(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "drishtiksha"
    text = (UNITS / "drishtiksha-worker@.service").read_text().replace(VENV_EXE, str(exe))
    unit = tmp_path / "drishtiksha-worker@0-b.service"
    unit.write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if "--offline" in output and "unrecognized option" in output:
        pytest.skip("this systemd-analyze has no offline security analysis (systemd < 250)")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert found is not None, output
    assert float(found.group(1)) <= MAX_WORKER_EXPOSURE, output
