"""Loopback helpers shared by tests that start servers or daemons."""

from __future__ import annotations

import socket

# The region moto (S3 and SQS on loopback) is used with.
AWS_REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
