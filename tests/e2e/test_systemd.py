"""The systemd notify protocol, against a datagram socket standing in for systemd."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.systemd import notify, watchdog_period
from tests.e2e.test_daemon import Daemon


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(120)
    yield sock, path
    sock.close()


def test_notify_is_a_no_op_outside_systemd() -> None:
    assert notify("READY=1", environ={}) is False


def test_watchdog_period_is_half_of_watchdog_sec() -> None:
    assert watchdog_period({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_period({}) is None
    assert watchdog_period({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None


def test_notify_sends_one_datagram(fake_systemd: tuple[socket.socket, str]) -> None:
    sock, path = fake_systemd
    assert notify("STATUS=hello", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(1024) == b"STATUS=hello"


@pytest.mark.e2e
def test_daemon_reports_ready_watchdog_and_stopping(
    fake_systemd: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = fake_systemd
    daemon = Daemon(tmp_path, f"sqlite:///{tmp_path / 'd.db'}")
    daemon.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    try:
        messages: list[str] = []
        while not any(m.startswith("WATCHDOG=1") for m in messages):
            messages.append(sock.recv(1024).decode())
        assert messages[0].startswith("READY=1")
        assert daemon.stop(signal.SIGTERM) == 0
        rest = [sock.recv(1024).decode()]
        while "STOPPING=1" not in rest[-1]:
            rest.append(sock.recv(1024).decode())
    finally:
        if daemon.proc is not None:
            daemon.proc.kill()
            daemon.proc.wait()
