"""What every command shares: the consoles, loading the configuration, failing in one line,
the job queue and job ids, and building the detectors."""

from __future__ import annotations

import enum
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

# typer carries its own copy of click (since 0.2x); its errors are that copy's classes.
from processor.config import Config, ConfigError, load_config
from storage.errors import StorageError

if TYPE_CHECKING:
    from processor.pipeline import Pipeline

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML file (default: $DRISHTIKSHA_CONFIG, /etc/drishtiksha/config.yaml, "
        "configs/default.yaml, then the embedded defaults).",
    ),
]
# A benchmark's report, as JSON, beside what it prints.
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Also write the report to this JSON file.")
]
out = Console()
err = Console(stderr=True)
log = logging.getLogger(__name__)

# Ids are 32 hex characters; a unique prefix this long or longer names a job.
MIN_PREFIX = 8
SHOWN_ID = 12  # what `jobs list` shows (more when it is not unique): fits 80 columns
_ID_PREFIX = re.compile(rf"^[0-9a-f]{{{MIN_PREFIX},32}}$")


# storage.queue's job states and verdict labels as option choices, spelled out so that the
# command line starts without importing SQLAlchemy (tests check that they agree).
class StateChoice(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class LabelChoice(enum.StrEnum):
    REAL = "REAL"
    FAKE = "FAKE"
    UNCERTAIN = "UNCERTAIN"
    ABSTAIN = "ABSTAIN"


def _fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit with ``code`` (2: the command or configuration is wrong;
    1: what it names is missing or failed)."""
    err.print(f"error: {' '.join(message.split())}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _config(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        # One line per problem, each naming the file and the key.
        for line in str(exc).splitlines():
            err.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc


def _video_files(paths: list[Path]) -> list[Path]:
    """The files to judge: each file named, and the files directly inside each folder named,
    skipping what an inbox skips (hidden, temporary and partial files, our sidecars)."""
    from processor.ingest.folder import is_junk

    files: list[Path] = []
    for path in paths:
        if not path.exists():
            _fail(f"{path}: no such file or folder", 1)
        if not os.access(path, os.R_OK):
            _fail(f"{path}: not readable", 1)
        if not path.is_dir():
            files.append(path)
            continue
        try:
            inside = sorted(p for p in path.iterdir() if p.is_file() and not is_junk(p.name))
        except OSError as exc:
            _fail(f"{path}: cannot list it: {exc.strerror}", 1)
        if not inside:
            _fail(f"{path}: no video files in this folder (sub-folders are not searched)", 1)
        err.print(
            f"{path}: {len(inside)} files (sub-folders, hidden, temporary and sidecar files "
            "skipped)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        files.extend(inside)
    return files


def _with_detectors(cfg: Config, arg: str | None) -> tuple[Config, list[str]]:
    """The detector keys to run (default: the first inbox's) and a configuration with a
    section for each: a registered detector without one runs on its shipped weights."""
    from detectors import registry

    if arg is None:
        return cfg, list(cfg.inboxes[0].detectors)
    keys = list(dict.fromkeys(k.strip() for k in arg.split(",") if k.strip()))
    # Only the plugins named are imported: each may bring a backend that takes seconds.
    found, broken = registry.available(keys), registry.unavailable(keys)
    if not keys:
        _fail(f"--detectors names none; registered: {', '.join(registry.keys())}")
    sections = dict(cfg.detectors)
    for key in keys:
        if key in sections:
            continue
        if key in broken:
            _fail(f"detector {key} cannot load here: {broken[key]}")
        if key not in found:
            _fail(f"unknown detector {key!r}; registered: {', '.join(registry.keys())}")
        # Unconfigured: the weights shipped in the manifest where the detector has them.
        fields = found[key].config_class.model_fields
        sections[key] = {"weights": "manifest"} if "manifest" in fields else {}
    return cfg.model_copy(update={"detectors": sections}), keys


def _set_up(cfg: Config, keys: list[str]) -> Pipeline:
    """The daemon's pipeline with the detectors ``keys`` loaded on the configured device, or
    fail in one line."""
    from detectors.errors import DetectorError
    from processor.loader import load_pipeline

    try:
        return load_pipeline(cfg, keys)
    except (ConfigError, DetectorError) as exc:
        _fail(str(exc))


def _queue(cfg: Config) -> Any:
    """The job queue on the configured database, which must exist: commands that read or change
    jobs never create one."""
    from storage.db import make_engine
    from storage.queue import JobQueue

    try:
        return JobQueue(make_engine(cfg.database.url, create=False))
    except StorageError as exc:
        _fail(f"{exc} (configuration: {cfg.source})", 1)


def _job_id(queue: Any, given: str) -> str:
    """The full id of the job ``given`` names: a whole id or a unique prefix of 8+ characters."""
    prefix = given.strip().lower()
    if not _ID_PREFIX.match(prefix):
        _fail(f"{given!r} is not a job id: give {MIN_PREFIX} to 32 of its hex characters")
    matches = queue.job_ids_starting(prefix, 2)
    if not matches:
        _fail(f"no job {prefix}" if len(prefix) == 32 else f"no job id starts with {prefix}", 1)
    if len(matches) > 1:
        _fail(f"{prefix} is the start of several job ids; give more characters")
    return str(matches[0])


def _code_version() -> str:
    """``git describe`` of the source tree, when it is a git checkout."""
    import subprocess

    # processor/cli/ sits two levels below the checkout.
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return done.stdout.strip()
