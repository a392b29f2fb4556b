"""Start-up times of the command line and the daemon, each command a fresh process, as a user
starts it (``drishtiksha bench startup``).

Everything runs in a scratch folder on a copy of the configuration that keeps its detectors,
device, limits and batching but has its own SQLite database, inboxes and a free loopback port,
and no SQS sources, webhooks or object store: a benchmark must never take a live inbox's files,
send a webhook or touch a shared database.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# What each kind of command should stay under on a quiet 2-core machine (issue "Fast on the
# machines people have").
COMMAND_TARGET_S = 2.0
DAEMON_TARGET_S = 5.0
READY_LINE = "drishtiksha ready"
# (name, arguments after ``drishtiksha``, ``--config`` appended): the commands people run most.
COMMANDS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("--help", ("--help",), False),
    ("config check", ("config", "check"), True),
    ("detectors", ("detectors",), True),
    ("jobs list", ("jobs", "list"), True),
)


class StartupBenchError(Exception):
    """A command failed or the daemon did not become ready; the message says which and why."""


@dataclass
class Timing:
    """The wall-clock seconds of each timed run of one command."""

    name: str
    argv: list[str]
    target_s: float
    seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Median, min and max, and whether the median is within the target."""
        median = statistics.median(self.seconds)
        return {
            "name": self.name,
            "argv": self.argv,
            "runs": len(self.seconds),
            "seconds": [round(s, 3) for s in self.seconds],
            "median_s": round(median, 3),
            "min_s": round(min(self.seconds), 3),
            "max_s": round(max(self.seconds), 3),
            "target_s": self.target_s,
            "within_target": median <= self.target_s,
        }


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _absolute_paths(section: dict[str, Any], base: Path) -> dict[str, Any]:
    # A detector's files named relative to where the daemon would start (weights, manifests,
    # model folders) must still be found from the scratch folder.
    return {
        key: str(base / value)
        if isinstance(value, str) and not Path(value).is_absolute() and (base / value).exists()
        else value
        for key, value in section.items()
    }


def scratch_config(raw: dict[str, Any], port: int, base: Path) -> dict[str, Any]:
    """``raw`` (a configuration file's mapping) made safe to start anywhere: the same detectors
    and settings, with state of its own under ``var/`` of the working folder. Detector files
    given relative to ``base`` (the folder the command was started in) are made absolute."""
    config = {k: v for k, v in raw.items() if k not in ("sqs", "webhooks", "blobs", "database")}
    if raw.get("detectors"):
        config["detectors"] = {
            key: _absolute_paths(section or {}, base) for key, section in raw["detectors"].items()
        }
    config["database"] = {"url": "sqlite:///var/drishtiksha.db"}
    inboxes = raw.get("inboxes") or [{"name": "default"}]
    config["inboxes"] = [
        {
            **inbox,
            **{
                part: f"var/{inbox.get('name', f'inbox{i}')}/{part}"
                for part in ("path", "work", "done", "failed")
            },
        }
        for i, inbox in enumerate(inboxes)
    ]
    api = {**(raw.get("api") or {}), "host": "127.0.0.1", "port": port}
    # Readiness is what is timed: the health check must answer without a key.
    api["health_requires_key"] = False
    if "upload_dir" in api:
        api["upload_dir"] = "var/uploads"
    config["api"] = api
    return config


def child_environment() -> dict[str, str]:
    """This process's environment without ``DRISHTIKSHA_*``: an override there (a database URL,
    a port) must not reach the scratch daemon."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DRISHTIKSHA_")}


def command_line() -> list[str]:
    """How to start ``drishtiksha`` with this interpreter."""
    return [sys.executable, "-m", "processor"]


def time_command(argv: list[str], cwd: Path, timeout_s: float) -> float:
    """Seconds from start to exit of one run; raises ``StartupBenchError`` on failure."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env=child_environment(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StartupBenchError(f"{' '.join(argv[2:])} took over {timeout_s:.0f} s") from exc
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise StartupBenchError(f"{' '.join(argv[2:])} exited {done.returncode}: {tail}")
    return seconds


def _health_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def time_daemon(argv: list[str], cwd: Path, port: int, timeout_s: float) -> tuple[float, float]:
    """Start the daemon, time its ready line and its first 200 from ``GET /health``, stop it
    with SIGTERM; returns (ready seconds, healthy seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=child_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if READY_LINE in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ready_s = healthy_s = None
    try:
        while time.perf_counter() - start < timeout_s and proc.poll() is None:
            if ready_s is None and ready.is_set():
                ready_s = time.perf_counter() - start
            if healthy_s is None and _health_ok(port):
                healthy_s = time.perf_counter() - start
            if ready_s is not None and healthy_s is not None:
                break
            time.sleep(0.02)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    if ready_s is None or healthy_s is None:
        tail = " | ".join(lines[-3:])
        what = "printed no ready line" if ready_s is None else "never answered /health with 200"
        raise StartupBenchError(f"the daemon {what} within {timeout_s:.0f} s: {tail}")
    return ready_s, healthy_s


def bench_startup(
    config_file: Path | None,
    runs: int,
    timeout_s: float = 120.0,
    on_run: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Time each of ``COMMANDS`` and the daemon ``runs`` times, each after one untimed warm-up
    run (bytecode compiled, files in the page cache), in a scratch folder. ``config_file``:
    the YAML the scratch configuration is made from (None: the embedded defaults)."""
    raw: dict[str, Any] = {}
    if config_file is not None:
        raw = yaml.safe_load(config_file.read_text()) or {}
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="drishtiksha-bench-startup-"))
    try:
        config_path = scratch / "config.yaml"
        port = free_port()
        base = Path.cwd()
        config_path.write_text(yaml.safe_dump(scratch_config(raw, port, base), sort_keys=False))
        if (base / "weights").is_dir():
            # ``weights: manifest`` looks in weights/ of the working folder first.
            (scratch / "weights").symlink_to(base / "weights")
        command = command_line()
        # The commands that read jobs need a database: the first daemon start (untimed) makes it.
        time_daemon([*command, "run", "--config", str(config_path)], scratch, port, timeout_s)
        timings: list[Timing] = []
        for name, args, with_config in COMMANDS:
            argv = [*command, *args, *(["--config", str(config_path)] if with_config else [])]
            timing = Timing(name, ["drishtiksha", *args], COMMAND_TARGET_S)
            time_command(argv, scratch, timeout_s)
            for _ in range(runs):
                timing.seconds.append(time_command(argv, scratch, timeout_s))
                if on_run is not None:
                    on_run()
            timings.append(timing)
        argv = [*command, "run", "--config", str(config_path)]
        ready = Timing("run: ready line", ["drishtiksha", "run"], DAEMON_TARGET_S)
        healthy = Timing("run: /health 200", ["drishtiksha", "run"], DAEMON_TARGET_S)
        for _ in range(runs):
            ready_s, healthy_s = time_daemon(argv, scratch, port, timeout_s)
            ready.seconds.append(ready_s)
            healthy.seconds.append(healthy_s)
            if on_run is not None:
                on_run()
        timings += [ready, healthy]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "schema": "drishtiksha.bench-startup/1",
        "config": str(config_file) if config_file is not None else "embedded defaults",
        "runs": runs,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "commands": [t.summary() for t in timings],
    }
