"""The systemd notify protocol (sd_notify): READY, STATUS, STOPPING and WATCHDOG messages.

Written out rather than taken from a library because it is one datagram to one socket, and the
daemon must run unchanged where systemd is absent (then every call is a no-op).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET``; False when not started by systemd."""
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("systemd notification failed: %s", exc)
        return False
    return True


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of systemd's ``WatchdogSec``), or None."""
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1e6


async def watchdog(period: float, healthy: Callable[[], bool]) -> None:
    """Ping systemd's watchdog while ``healthy()`` holds; a stuck worker stops the pings and
    systemd restarts the service."""
    while True:
        if healthy():
            notify("WATCHDOG=1")
        else:
            log.error("not healthy: withholding the systemd watchdog ping")
        await asyncio.sleep(period)
