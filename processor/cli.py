"""Drishtiksha: judge videos for deepfakes from watched folders, uploads and the command line."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import errno
import json
import logging
import os
import re
import socket
import sys
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table

# typer carries its own copy of click (since 0.2x); its errors are that copy's classes.
from typer._click import exceptions as click_errors

from processor.cli_bench import (
    bench_faces_cmd,
    bench_gpu_bundle_cmd,
    bench_gpu_cmd,
    bench_startup_cmd,
)
from processor.cli_webhooks import webhooks_app
from processor.config import Config, ConfigError, load_config
from processor.logs import setup_logging
from processor.progress import Steps
from storage.errors import StorageError

if TYPE_CHECKING:
    from processor.verdict import DetectorVote
    from storage.queue import JobView

# Plain click help: paragraphs rewrapped to the terminal, no markup to leak into the text.
app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None)
jobs_app = typer.Typer(no_args_is_help=True, help="Inspect, cancel and retry jobs.")
db_app = typer.Typer(no_args_is_help=True, help="Database maintenance.")
config_app = typer.Typer(no_args_is_help=True, help="Configuration.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (results: docs/benchmarks.md).")
weights_app = typer.Typer(no_args_is_help=True, help="Checkpoints and the weights manifest.")
app.add_typer(jobs_app, name="jobs")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")
app.add_typer(weights_app, name="weights")
app.add_typer(webhooks_app, name="webhooks")
bench_app.command("startup")(bench_startup_cmd)
bench_app.command("gpu")(bench_gpu_cmd)
bench_app.command("gpu-bundle")(bench_gpu_bundle_cmd)
bench_app.command("faces")(bench_faces_cmd)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML file (default: $DRISHTIKSHA_CONFIG, /etc/drishtiksha/config.yaml, "
        "configs/default.yaml, then the embedded defaults).",
    ),
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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"drishtiksha {package_version('drishtiksha')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Drishtiksha: judge videos for deepfakes from watched folders, uploads and the command
    line."""


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


@app.command()
def run(
    config: ConfigOpt = None,
    role: Annotated[
        str, typer.Option(help="all, or some of ingest, worker, api joined by commas.")
    ] = "all",
    log_format: Annotated[str | None, typer.Option(help="text or json.")] = None,
) -> None:
    """Run the daemon: watch the inboxes, process jobs, serve the API."""
    from processor.fleet import pin_gpu

    # drishtiksha-worker@0-b.service sets CUDA_VISIBLE_DEVICES=0-b; CUDA must see "0".
    pin_gpu(os.environ)

    from detectors.errors import DetectorError
    from processor.daemon import parse_roles, serve

    cfg = _config(config)
    try:
        roles = parse_roles(role)
    except ValueError as exc:
        _fail(str(exc))
    if "worker" in roles:
        _report_missing_files(cfg)
    if "api" in roles and cfg.api.enabled:
        # Before anything starts: a taken port would otherwise fail only after migrations,
        # detector loading and the watchers, with the whole stack in a traceback.
        _check_port(cfg.api.host, cfg.api.port)
    setup_logging(cfg.logging.level, log_format or cfg.logging.format)
    log.info("configuration: %s", cfg.source)
    try:
        asyncio.run(serve(cfg, role))
    except (ConfigError, DetectorError, StorageError) as exc:
        # A bad configuration, an unloadable weights file or an unreachable database stops
        # start-up with one clear line.
        _fail(str(exc))


def _check_port(host: str, port: int) -> None:
    """Fail in one line unless ``host``:``port`` can be bound, as the API server will bind it."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        _fail(f"api.host {host!r} does not resolve: {exc}")
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # As asyncio's server does, so a port in TIME_WAIT counts as free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                _fail(f"api.port {port} on api.host {host} cannot be bound: {why}")


def _missing_files(cfg: Config) -> list[str]:
    """Every file or folder the detector sections name that does not exist, one line each,
    by its configuration key."""
    from detectors import registry
    from detectors.manifest import FROM_MANIFEST, find_manifest, read_manifest
    from detectors.weights import WeightsError

    problems: list[str] = []
    for key, section in cfg.detectors.items():
        cls = registry.find(key)
        if cls is None:
            continue  # build_detectors names unknown keys
        fields = cls.config_class.model_fields
        where = f"detectors.{key}"
        for name in ("manifest", "backbone", "trust_anchors"):
            value = section.get(name)
            if name in fields and value is not None and not Path(value).exists():
                problems.append(f"{where}.{name}: {value} does not exist")
        if "weights" not in fields:
            continue
        weights = str(section.get("weights", fields["weights"].default))
        if weights == "dummy":
            continue
        if weights != FROM_MANIFEST:
            if not Path(weights).is_file():
                problems.append(f"{where}.weights: {weights} does not exist")
            continue
        explicit = section.get("manifest")
        try:
            manifest = find_manifest(explicit, key)
            if not manifest.is_file():
                if explicit is None:  # an explicit one is reported above
                    problems.append(f"{where}.weights: manifest {manifest} does not exist")
                continue
            entry = read_manifest(manifest).default_entry(key)
        except WeightsError as exc:
            problems.append(f"{where}.weights: {exc}")
            continue
        if not (manifest.parent / entry.file).is_file():
            problems.append(
                f"{where}.weights: {manifest.parent / entry.file} (the default entry of "
                f"{manifest}) does not exist"
            )
    return problems


def _report_missing_files(cfg: Config) -> None:
    problems = _missing_files(cfg)
    for line in problems:
        err.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)


def _video_files(paths: list[Path]) -> list[Path]:
    """The files to judge: each file named, and the files directly inside each folder named,
    skipping what an inbox skips (hidden, temporary and partial files, our sidecars)."""
    from processor.ingest import is_junk

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


def _set_up(cfg: Config, keys: list[str]) -> dict[str, Any]:
    """Build and load the detectors ``keys`` on the configured device, or fail in one line."""
    from detectors.errors import DetectorError
    from processor.loader import build_detectors, resolve_device

    try:
        built = build_detectors(cfg, keys)
        device = resolve_device(cfg.device)
        for det in built.values():
            det.setup(device)
    except (ConfigError, DetectorError) as exc:
        _fail(str(exc))
    return built


@app.command()
def analyze(
    paths: Annotated[
        list[Path], typer.Argument(help="Video files, or folders whose files to judge.")
    ],
    config: ConfigOpt = None,
    detectors: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated keys (default: the first inbox's); any registered detector, "
            "on its shipped weights when it has no configuration section."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    visualize: Annotated[
        Path | None,
        typer.Option(
            "--visualize",
            metavar="DIR",
            help="Also write <name>.<detector>.annotated.mp4 and .timeline.png into DIR.",
        ),
    ] = None,
) -> None:
    """Judge files now, in this process, through the daemon's pipeline (no database; files are
    left where they are)."""
    from processor.loader import decode_limits
    from processor.pipeline import Pipeline

    cfg = _config(config)
    files = _video_files(paths)
    setup_logging("WARNING", "text")
    cfg, keys = _with_detectors(cfg, detectors)
    built = _set_up(cfg, keys)
    pipeline = Pipeline(built, decode_limits(cfg), cfg.decode.max_side)
    rows: list[dict[str, Any]] = []
    with Steps(err) as steps:
        task = steps.add("analysing", total=len(files))
        for path in files:
            rows.append(_analyze_one(pipeline, path, keys, cfg.fusion, visualize))
            task.advance()
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table("file", "detector", "label", "P(fake)", "weights", "note")
    for row in rows:
        if "error" in row:
            table.add_row(row["file"], "-", "FAILED", "-", "-", row["error"]["code"])
            continue
        for res in row["detectors"]:
            prob = res["fake_probability"]
            table.add_row(
                row["file"],
                res["detector"],
                res["label"],
                "-" if prob is None else f"{prob:.3f}",
                res["weights"][:12],
                res["details"].get("reason", ""),
            )
        verdict = row["verdict"]
        prob = verdict["fake_probability"]
        note = verdict.get("decided_by") or verdict["rule"]
        table.add_row(
            row["file"],
            "overall",
            verdict["label"],
            "-" if prob is None else f"{prob:.3f}",
            "-",
            note,
            end_section=True,
        )
    out.print(table)


def _analyze_one(
    pipeline: Any, path: Path, keys: list[str], fusion: Any, visualize: Path | None = None
) -> dict[str, Any]:
    from detectors.base import DetectorResult
    from detectors.errors import DetectorError
    from processor.verdict import DetectorVote, overall_verdict

    try:
        prepared = pipeline.prepare(path, keys)
    except DetectorError as exc:
        return {"file": str(path), "error": {"code": exc.code, "message": exc.message}}
    predicted = pipeline.predict([prepared])[0]
    results = []
    for key, outcome in predicted.outcomes.items():
        det = pipeline.detectors[key]
        base = {"detector": key, "version": det.version, "weights": det.weights_id}
        if visualize is not None:
            # After predict: drawing is no part of the verdict and never slows the inference.
            base["visualization"] = _visualize_one(pipeline, path, key, outcome, visualize)
        if isinstance(outcome, DetectorResult):
            results.append(
                base
                | {
                    "label": outcome.label.value,
                    "fake_probability": outcome.fake_probability,
                    "details": outcome.details,
                }
            )
        else:
            results.append(
                base
                | {
                    "label": "ABSTAIN",
                    "fake_probability": None,
                    "details": {"reason": outcome.code, "message": outcome.message},
                }
            )
    votes = [
        DetectorVote(r["detector"], r["label"], r["fake_probability"], r["details"])
        for r in results
    ]
    return {"file": str(path), "verdict": overall_verdict(votes, fusion), "detectors": results}


def _visualize_one(pipeline: Any, path: Path, key: str, outcome: Any, folder: Path) -> Any:
    """Render one detector's annotated video and timeline; their paths, or the error."""
    from detectors.base import DetectorResult
    from detectors.errors import DetectorError
    from detectors.temporal import analyse
    from processor.visualize import render_timeline, render_video, shared_face_finder

    det = pipeline.detectors[key]
    if isinstance(outcome, DetectorResult):
        label, prob, threshold = outcome.label.value, outcome.fake_probability, outcome.threshold
        scores = outcome.frame_scores
    else:
        label, prob, threshold, scores = "ABSTAIN", None, det.threshold, []
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"{path.stem}.{key}.annotated.mp4"
    timeline = folder / f"{path.stem}.{key}.timeline.png"
    try:
        render_video(
            path,
            video,
            scores,
            label=label,
            fake_probability=prob,
            threshold=threshold,
            detector=key,
            weights_id=det.weights_id,
            face_finder=shared_face_finder(),
            limits=pipeline.limits,
            max_side=pipeline.max_side,
        )
    except DetectorError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}
    render_timeline(timeline, scores, threshold, analyse(scores, threshold)["segments"])
    return {"video": str(video), "timeline": str(timeline)}


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


@jobs_app.command("list")
def jobs_list(
    config: ConfigOpt = None,
    state: Annotated[StateChoice | None, typer.Option(case_sensitive=False)] = None,
    label: Annotated[
        LabelChoice | None,
        typer.Option(case_sensitive=False, help="Only done jobs with this overall verdict."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Only jobs whose source (file path, upload name) contains this."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs.")] = 20,
) -> None:
    """The newest jobs. Ids are shown by their first 12 characters (more where needed to tell
    them apart), which every jobs command accepts."""
    from storage.queue import JobState

    queue = _queue(_config(config))
    jobs = queue.list(
        state=JobState(state.value) if state else None,
        label=label.value if label else None,
        source_contains=name,
        limit=limit,
    )
    rows = [
        (
            _shown_id(queue, job.id),
            job.state.value,
            _verdict_cell(job),
            Path(job.source_ref).name or job.source_ref,
            job.created_at.strftime("%Y-%m-%d %H:%M"),
        )
        for job in jobs
    ]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    id_width = max([SHOWN_ID, *(len(row[0]) for row in rows)])
    widths = {"id": id_width, "state": 9, "verdict": 14, "created (UTC)": 16}
    # The name gives way so that ids and the rest stay whole at 80 columns; 14: the table's
    # gaps and edges.
    name_width = max(8, out.width - sum(widths.values()) - 14)
    for column, width in widths.items():
        table.add_column(column, no_wrap=True, min_width=width)
        if column == "verdict":
            table.add_column("name", overflow="ellipsis", no_wrap=True, max_width=name_width)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _shown_id(queue: Any, job_id: str) -> str:
    """The first 12 characters of the id, or more where another job's id starts the same way:
    what is shown always names one job when pasted back."""
    shown = SHOWN_ID
    while shown < len(job_id) and len(queue.job_ids_starting(job_id[:shown], 2)) > 1:
        shown += 4
    return job_id[:shown]


def _verdict_cell(job: JobView) -> str:
    """A done job's overall label and fake probability, or a failed job's error code."""
    if job.state.value == StateChoice.DONE and job.verdict:
        prob = job.verdict.get("fake_probability")
        return str(job.verdict["label"]) + ("" if prob is None else f" {prob:.2f}")
    return job.error_code or ""


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="Job id or a unique prefix (8+ characters).")],
    config: ConfigOpt = None,
) -> None:
    """One job with its results, as JSON."""
    from processor.api_common import job_document

    queue = _queue(_config(config))
    out.print_json(json.dumps(job_document(queue.get(_job_id(queue, job_id)))))


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="Job id or a unique prefix (8+ characters).")],
    config: ConfigOpt = None,
) -> None:
    """Cancel a queued job; its inbox file goes to failed/ with an .error.json."""
    from processor.lifecycle import Lifecycle

    cfg = _config(config)
    queue = _queue(cfg)
    full = _job_id(queue, job_id)
    if not queue.cancel(full):
        state = queue.get(full).state.value
        _fail(f"job {full} is {state}; only a queued job can be cancelled", 1)
    # Nobody else finalizes a job that never ran.
    Lifecycle(queue, cfg.inboxes, cfg.queue, webhooks=cfg.webhooks).finalize(queue.get(full))
    out.print(f"job {full} cancelled")


@jobs_app.command("retry")
def jobs_retry(
    job_id: Annotated[
        str | None, typer.Argument(help="Job id or a unique prefix (8+ characters).")
    ] = None,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Every failed job (or those with --code).")
    ] = False,
    code: Annotated[
        str | None, typer.Option(help="With --all-failed: only jobs that failed with this code.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Run failed or cancelled jobs again: back to queued with attempts reset, an inbox file
    taken back from failed/ (its .error.json removed). A job whose file is gone cannot be
    retried."""
    from processor.retry import RetryRefused, retry_job

    if (job_id is None) == (not all_failed):
        _fail("give a job id or --all-failed")
    if code is not None and not all_failed:
        _fail("--code goes with --all-failed")
    cfg = _config(config)
    queue = _queue(cfg)
    inboxes = [inbox.name for inbox in cfg.inboxes]
    if job_id is not None:
        try:
            job = retry_job(queue, inboxes, _job_id(queue, job_id))
        except RetryRefused as exc:
            _fail(exc.message, 1)
        out.print(f"job {job.id} queued again")
        return
    ids = _failed_ids(queue, code)
    if not ids:
        _fail("no failed job" + (f" with code {code}" if code else ""), 1)
    refused = 0
    for full in ids:
        try:
            retry_job(queue, inboxes, full)
        except RetryRefused as exc:
            refused += 1
            err.print(f"not retried: {exc.message}", markup=False, highlight=False, soft_wrap=True)
        else:
            out.print(f"job {full} queued again")
    out.print(f"{len(ids) - refused} of {len(ids)} failed jobs queued again")
    if refused:
        raise typer.Exit(1)


def _failed_ids(queue: Any, code: str | None) -> list[str]:
    """Ids of every failed job (with error ``code`` when given), oldest first."""
    from storage.queue import JobState

    ids: list[str] = []
    before: str | None = None
    while page := queue.list(state=JobState.FAILED, limit=500, before=before, oldest_first=True):
        ids.extend(j.id for j in page if code is None or j.error_code == code)
        before = page[-1].id
    return ids


@app.command("detectors")
def detectors_cmd(config: ConfigOpt = None) -> None:
    """Every known detector, whether it can load here, and its configured weights."""
    from detectors import registry

    cfg = _config(config)
    table = Table("key", "version", "status", "configured weights")
    for key, cls in registry.available().items():
        section = cfg.detectors.get(key)
        # Detectors without weights (c2pa-provenance) have no such setting.
        has_weights = "weights" in cls.config_class.model_fields
        weights = "-"
        if section is not None and has_weights:
            weights = str(section.get("weights", "dummy"))
        status = "configured" if section is not None else "available"
        table.add_row(key, cls.version, status, weights)
    for key, why in registry.unavailable().items():
        table.add_row(key, "-", f"unavailable: {why}", "-")
    out.print(table)
    _report_missing_files(cfg)


@app.command("gc")
def gc_cmd(
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option(help="List what would go; remove nothing.")] = False,
) -> None:
    """Remove what is kept only for a while: fetched bytes of jobs no longer running, renderings
    past the API's limits, stale uploads, downloads of finished S3 jobs. Never a file a running
    job reads, nor anything in an inbox, done/ or failed/."""
    from processor.gc import collect

    cfg = _config(config)
    queue = _queue(cfg)
    try:
        removed = collect(cfg, queue, dry_run=dry_run)
    finally:
        queue.engine.dispose()
    for item in removed:
        out.print(
            f"{'would remove' if dry_run else 'removed'} {item.path}: {item.why}",
            markup=False,
            highlight=False,
        )
    out.print(
        f"{len(removed)} {'would go' if dry_run else 'removed'}", markup=False, highlight=False
    )


@app.command("workers")
def workers_cmd(config: ConfigOpt = None) -> None:
    """Worker processes sharing the database: alive or not (silent past their dead_after_s)
    and the jobs each holds; then what each live one has loaded, and queued jobs that no live
    worker can run."""
    from processor.fleet import describe_stranded

    cfg = _config(config)
    queue = _queue(cfg)
    workers = queue.workers(alive_within_s=cfg.queue.lease_s)
    table = Table("worker", "host", "pid", "alive", "last heartbeat", "held jobs")
    for w in workers:
        table.add_row(
            w.id,
            w.host,
            str(w.pid),
            "yes" if w.alive else "no",
            w.heartbeat_at.strftime("%Y-%m-%d %H:%M:%S"),
            ", ".join(w.held_jobs) or "-",
        )
    out.print(table)
    # One row per detector: a host left on older weights stands out.
    loaded = Table("worker", "device", "detector", "version", "weights")
    for w in workers:
        caps = w.capabilities or {}
        if not w.alive or not caps:
            continue
        for key, det in sorted((caps.get("detectors") or {}).items()):
            weights = str(det.get("weights_id", "-"))
            loaded.add_row(
                w.id, _device_shown(caps), key, str(det.get("version", "-")), weights[:12]
            )
    if loaded.row_count:
        out.print(loaded)
    stranded = queue.stranded(cfg.queue.lease_s)
    if stranded:
        err.print(
            f"warning: {describe_stranded(stranded)}", markup=False, highlight=False, soft_wrap=True
        )


def _device_shown(caps: dict[str, Any]) -> str:
    """The device a worker published, with the GPU it was given when it was pinned to one."""
    device = str(caps.get("device") or "-")
    visible = caps.get("visible_devices")
    return f"{device} (GPU {visible})" if visible and device.startswith("cuda") else device


@weights_app.command("import")
def weights_import(
    path: Annotated[
        Path,
        typer.Argument(
            help="Checkpoint in the older service's format, or an ONNX file for "
            "onnx-face-classifier."
        ),
    ],
    detector: Annotated[str, typer.Option(help="Detector key it is for.")],
    threshold: Annotated[
        float, typer.Option(help="Fake-probability threshold to record for it.")
    ] = 0.5,
    manifest: Annotated[
        Path, typer.Option(help="Weights manifest; the checkpoint is copied beside it.")
    ] = Path("weights/manifest.json"),
    config: ConfigOpt = None,
) -> None:
    """Check a checkpoint key by key and shape by shape against the configured network (an ONNX
    graph: its input and output against the configured input size and output), copy it next
    to the manifest and register it there (sha256, threshold) as the detector's default."""
    import shutil

    from detectors import registry
    from detectors.errors import DetectorError
    from detectors.manifest import ManifestEntry, register

    cfg = _config(config)
    section = {k: v for k, v in cfg.detectors.get(detector, {}).items() if k != "weights"}
    try:
        digest = registry.check_checkpoint(detector, section, path)
    except DetectorError as exc:
        err.print(f"refused: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    dest = manifest.parent / f"{detector}-{digest[:12]}{path.suffix or '.pt'}"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copyfile(path, dest)
    register(
        manifest,
        ManifestEntry(
            detector=detector,
            file=dest.name,
            sha256=digest,
            threshold=threshold,
            default=True,
            registered=dt.date.today().isoformat(),
            detector_config=section,
        ),
    )
    out.print(f"{path}: fits {detector} as configured; sha256 {digest}")
    out.print(f"copied to {dest} and registered in {manifest} as the default for {detector}")
    out.print(f"use it with detectors.{detector}.weights: {dest.resolve()}")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Apply database migrations."""
    from storage.db import make_engine, upgrade

    cfg = _config(config)
    engine = make_engine(cfg.database.url)
    upgrade(engine)
    engine.dispose()
    out.print(f"database at {engine.url.render_as_string(hide_password=True)} is up to date")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Revision to go back to, e.g. 0003.")],
    config: ConfigOpt = None,
) -> None:
    """Undo migrations down to REVISION, before running an older release on this database.
    Columns a later revision added are dropped with their data."""
    from storage.db import downgrade, make_engine

    cfg = _config(config)
    try:
        engine = make_engine(cfg.database.url, create=False)
    except StorageError as exc:
        _fail(str(exc), 1)
    downgrade(engine, revision)
    engine.dispose()
    out.print(f"database at {engine.url.render_as_string(hide_password=True)} is at {revision}")


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate the configuration, detector sections and the files they name included, say
    which file it came from, and print it resolved."""
    from processor.loader import build_detectors

    cfg = _config(config)
    err.print(f"configuration: {cfg.source}", markup=False, highlight=False, soft_wrap=True)
    try:
        build_detectors(cfg, list(cfg.detectors))
    except ConfigError as exc:
        _fail(str(exc))
    _report_missing_files(cfg)
    out.print_json(cfg.model_dump_json())


@bench_app.command("queue")
def bench_queue_cmd(
    database_url: Annotated[
        str, typer.Option(help="An empty database to fill (its jobs table grows).")
    ],
    jobs: Annotated[int, typer.Option(help="Jobs per run.")] = 2000,
    workers: Annotated[str, typer.Option(help="Worker process counts to try.")] = "1,2,4",
    batch: Annotated[int, typer.Option(help="Jobs per claim.")] = 1,
    s3_endpoint: Annotated[
        str | None,
        typer.Option(help="Also move each job's bytes through this S3 endpoint (needs --bucket)."),
    ] = None,
    bucket: Annotated[
        str | None, typer.Option(help="An existing bucket for --s3-endpoint.")
    ] = None,
    video_bytes: Annotated[
        int, typer.Option(help="Bytes per job's video with --s3-endpoint.")
    ] = 1024 * 1024,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the runs to this JSON file.")
    ] = None,
) -> None:
    """Jobs per second through the queue with a no-op instead of inference, and claim
    latency percentiles, for each number of worker processes. With --s3-endpoint, each job's
    bytes are also stored at enqueue (timed apart), fetched by the worker and its verdict
    written back, as between hosts with blobs.kind s3."""
    from processor.bench import bench_queue, machine
    from processor.config import BlobsConfig

    if (s3_endpoint is None) != (bucket is None):
        _fail("--s3-endpoint and --bucket go together")
    store = (
        BlobsConfig(kind="s3", bucket=bucket, endpoint_url=s3_endpoint, prefix="bench")
        if bucket is not None
        else None
    )
    out.print(f"machine: {machine()}")
    store_args = f" --s3-endpoint <url> --bucket <b> --video-bytes {video_bytes}" if store else ""
    out.print(
        f"command: drishtiksha bench queue --database-url <{database_url.split(':')[0]}> "
        f"--jobs {jobs} --workers {workers} --batch {batch}{store_args}"
    )
    columns = ["workers", "jobs", "seconds", "jobs/s", "claim p50 ms", "p95 ms", "p99 ms"]
    table = Table(*columns, *(["store put ms/job"] if store else []))
    runs = []
    for n in (int(x) for x in workers.split(",")):
        run = bench_queue(database_url, jobs, n, batch, store, video_bytes)
        runs.append({**dataclasses.asdict(run), "jobs_per_s": run.jobs_per_s})
        row = [
            str(n),
            str(run.jobs),
            f"{run.seconds:.2f}",
            f"{run.jobs_per_s:.1f}",
            f"{run.claim_p50_ms:.2f}",
            f"{run.claim_p95_ms:.2f}",
            f"{run.claim_p99_ms:.2f}",
        ]
        table.add_row(*row, *([f"{run.put_ms_per_job:.1f}"] if run.put_ms_per_job else []))
    out.print(table)
    if json_out is not None:
        report = {
            "machine": machine(),
            "load_average": os.getloadavg(),
            "date": dt.date.today().isoformat(),
            "batch": batch,
            "video_bytes": video_bytes if store else None,
            "store": "s3" if store else None,
            "runs": runs,
        }
        json_out.write_text(json.dumps(report, indent=2) + "\n")


@bench_app.command("detectors")
def bench_detectors_cmd(
    videos: Annotated[Path, typer.Option(help="Folder of videos.")] = Path("../shared/videos"),
    detectors: Annotated[
        str, typer.Option(help="Comma-separated keys (default: every configured detector).")
    ] = "",
    limit: Annotated[int, typer.Option(help="At most this many videos.")] = 8,
    batch: Annotated[int, typer.Option(help="Videos per batch.")] = 8,
    weights: Annotated[
        str | None, typer.Option(help="Override every detector's weights, e.g. 'dummy'.")
    ] = None,
    seed_way: Annotated[
        bool, typer.Option(help="Also time the older service's way, for the ratio.")
    ] = True,
    config: ConfigOpt = None,
) -> None:
    """Videos per second and time per stage through the detectors, ours against the older
    service's per-video, per-model, seek-per-frame way."""
    from detectors import registry
    from processor.bench import SEED_DETECTORS, bench_pipeline, machine, video_files
    from processor.loader import build_detectors, decode_limits, resolve_device
    from processor.pipeline import Pipeline

    cfg = _config(config)
    keys = detectors.split(",") if detectors else list(cfg.detectors)
    ours = sorted(set(keys) - SEED_DETECTORS)
    if seed_way and ours:
        err.print(f"error: the older service had no {', '.join(ours)}: add --no-seed-way")
        raise typer.Exit(2)
    sections = {k: {**cfg.detectors.get(k, {})} for k in keys}
    classes = registry.available()
    if weights is not None:
        for key, section in sections.items():
            # Detectors without weights (c2pa-provenance) have no such setting.
            if key in classes and "weights" in classes[key].config_class.model_fields:
                section["weights"] = weights
    cfg = cfg.model_copy(update={"detectors": sections})
    try:
        built = build_detectors(cfg, keys)
    except ConfigError as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    device = resolve_device(cfg.device)
    for det in built.values():
        det.setup(device)
    files = video_files(videos)[:limit]
    with Steps(err) as steps:
        task = steps.add("videos, each way", total=len(files) * (2 if seed_way else 1))
        run = bench_pipeline(
            Pipeline(built, decode_limits(cfg), cfg.decode.max_side),
            files,
            batch,
            seed_way,
            task.advance,
        )
    out.print(f"machine: {machine()}, device {device}")
    out.print(
        f"command: drishtiksha bench detectors --detectors {','.join(keys)} --limit {limit} "
        f"--batch {batch}"
        + (f" --weights {weights}" if weights else "")
        + ("" if seed_way else " --no-seed-way")
    )
    table = Table("stage", "seconds", "per video (ms)")
    table.add_row(
        "decode (shared)", f"{run.decode_s:.2f}", f"{run.decode_s / run.videos * 1e3:.0f}"
    )
    for key in keys:
        for stage, values in (("prepare", run.prepare_s), ("predict", run.predict_s)):
            table.add_row(
                f"{stage} {key}", f"{values[key]:.2f}", f"{values[key] / run.videos * 1e3:.0f}"
            )
    out.print(table)
    out.print(
        f"ours: {run.videos} videos in {run.ours_wall_s:.2f} s = "
        f"{run.videos / run.ours_wall_s:.3f} videos/s"
    )
    if run.seed_wall_s is not None and run.ratio is not None:
        out.print(
            f"older service's way: {run.seed_wall_s:.2f} s = "
            f"{run.videos / run.seed_wall_s:.3f} videos/s; ours is {run.ratio:.2f}x faster"
        )


@bench_app.command("decode")
def bench_decode_cmd(
    videos: Annotated[Path, typer.Option(help="Folder of videos.")] = Path("../shared/videos"),
    frames: Annotated[int, typer.Option(help="Frames sampled per video.")] = 64,
    limit: Annotated[int, typer.Option(help="At most this many videos (0: all).")] = 0,
    config: ConfigOpt = None,
) -> None:
    """Sample frames per video: one sequential decode (ours) against a seek per sampled frame
    (the older service's way), side by side."""
    from processor.bench import DecodeRow, bench_decode, machine, summarise, video_files
    from processor.loader import decode_limits

    cfg = _config(config)
    files = video_files(videos)[: limit or None]
    if not files:
        err.print(f"no videos under {videos}")
        raise typer.Exit(1)
    rows: list[DecodeRow] = []
    with Steps(err) as steps:
        task = steps.add("decoding", total=len(files))
        for row in bench_decode(files, frames, decode_limits(cfg), cfg.decode.max_side):
            if isinstance(row, DecodeRow):
                rows.append(row)
            else:
                err.print(f"skipped {row[0]}: {row[1].code}")
            task.advance()
    s = summarise(rows)
    out.print(f"machine: {machine()}")
    out.print(f"command: drishtiksha bench decode --frames {frames} --videos {videos}")
    out.print(
        f"{s['videos']:.0f} videos, {frames} frames each: "
        f"sequential {s['sequential_total_s']:.2f} s"
        f" ({s['sequential_total_s'] / len(rows) * 1000:.0f} ms/video), seeking "
        f"{s['seeking_total_s']:.2f} s ({s['seeking_total_s'] / len(rows) * 1000:.0f} ms/video);"
        f" seeking/sequential: {s['ratio_total']:.2f}x total, {s['ratio_median']:.2f}x median"
    )


@bench_app.command("desk")
def bench_desk_cmd(
    jobs: Annotated[int, typer.Option(help="Jobs to fill the scratch database with.")] = 100_000,
    repeats: Annotated[int, typer.Option(help="Timed requests per page.")] = 10,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="A Postgres server (postgresql://...): a database is created on it for the run "
            "and dropped after. Default: a SQLite file in a temporary folder."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """The desk at scale: bulk-fill a scratch database, serve the application on a loopback
    port and time the desk's pages (and the API's list) over HTTP, p50/p95 in ms."""
    from processor.bench import machine
    from processor.bench_desk import bench_desk, print_report

    report = {"machine": machine(), **asyncio.run(bench_desk(database_url, jobs, repeats))}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(out, report)


@app.command()
def train(
    data: Annotated[
        Path,
        typer.Option(
            help="labels CSV (file,label[,dataset,origin_repo,sha256,group]; paths relative to "
            "it) or a folder with real/ and fake/ (or a labels.csv)."
        ),
    ],
    detector: Annotated[str, typer.Option(help="Detector to train.")] = "color-cues-lstm-v1",
    out_dir: Annotated[
        Path,
        typer.Option("--out", help="Folder for the checkpoint, model card and manifest.json."),
    ] = Path("weights"),
    seed: Annotated[int, typer.Option(help="Seeds the split, the training and the CIs.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of each label for validation.")] = 0.2,
    test_fraction: Annotated[float, typer.Option(help="Share of each label held out.")] = 0.25,
    epochs: Annotated[int, typer.Option(help="Epoch budget (early stopping may end sooner).")] = 60,
    resume: Annotated[
        bool, typer.Option(help="Continue the saved run with the same data and settings.")
    ] = False,
    patience: Annotated[int, typer.Option(help="Epochs without improvement before stopping.")] = 12,
    batch_size: Annotated[int, typer.Option(help="Windows per optimiser step.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Adam's learning rate.")] = 1e-3,
    target_fpr: Annotated[
        float | None,
        typer.Option(help="Threshold at this validation false-positive rate (default: at EER)."),
    ] = None,
    uncertain_fraction: Annotated[
        float, typer.Option(help="Share of validation clips nearest the threshold made UNCERTAIN.")
    ] = 0.2,
    cache_dir: Annotated[Path, typer.Option(help="Feature cache.")] = Path("var/cache/features"),
    state_dir: Annotated[
        Path, typer.Option(help="Per-epoch training state (for --resume).")
    ] = Path("var/cache/training"),
    workers: Annotated[int, typer.Option(help="Threads extracting features.")] = 2,
    l2: Annotated[float, typer.Option(help="face-cues-v1: the regression's L2 penalty.")] = 3.0,
    cross_validate: Annotated[
        bool,
        typer.Option(
            help="face-cues-v1: only measure, leaving one group out at a time over every clip; "
            "writes nothing."
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Train a detector (color-cues-lstm-v1's LSTM, face-cues-v1's regression, or the SigLIP
    detectors' heads on a frozen backbone folder) on labelled videos, calibrate it on a
    validation split, measure it on a held-out split, and write weights, model card and
    manifest entry to --out."""
    from pydantic import ValidationError

    from detectors import cue_training, siglip_training
    from detectors import training as tr
    from detectors.color_cues import KEY, ColorCuesConfig, ColorCuesDetector
    from detectors.face_cues import KEY as FACE_KEY
    from detectors.face_cues import FaceCuesConfig, FaceCuesDetector
    from detectors.siglip_lstm import (
        KEY_V1,
        KEY_V3,
        SiglipLSTMConfig,
        SiglipLSTMv1,
        SiglipLSTMv3,
        SiglipLSTMv3Config,
    )
    from detectors.weights import WeightsError

    cfg = _config(config)
    setup_logging("WARNING", "text")
    trainable: dict[str, tuple[Any, Any]] = {
        KEY: (ColorCuesConfig, ColorCuesDetector),
        FACE_KEY: (FaceCuesConfig, FaceCuesDetector),
        KEY_V1: (SiglipLSTMConfig, SiglipLSTMv1),
        KEY_V3: (SiglipLSTMv3Config, SiglipLSTMv3),
    }
    if detector not in trainable:
        err.print(f"error: {detector!r} cannot be trained; these can: {', '.join(trainable)}")
        raise typer.Exit(2)
    if cross_validate and detector != FACE_KEY:
        err.print(f"error: --cross-validate is for {FACE_KEY} only")
        raise typer.Exit(2)
    config_class, detector_class = trainable[detector]
    # The configured feature settings, with the weights and operating point left out: features
    # do not depend on them, and training must not need an existing checkpoint.
    section = {
        k: v
        for k, v in cfg.detectors.get(detector, {}).items()
        if k not in ("weights", "threshold", "uncertain_band", "manifest")
    }
    if detector in (KEY_V1, KEY_V3):
        # The SigLIP settings insist that a backbone comes with heads to load; training is
        # what makes the heads, so the check is satisfied with a placeholder.
        section["weights"] = "manifest"
    try:
        det_cfg = config_class.model_validate(section)
        clips = tr.assign_groups(tr.load_clips(data))
        splits = tr.group_split(
            [c.label for c in clips], [c.group for c in clips], val_fraction, test_fraction, seed
        )
    except (ValidationError, tr.DatasetError) as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    params = tr.TrainParams(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=patience,
        seed=seed,
    )
    command = (
        f"uv run drishtiksha train --detector {detector} --data {data} --out {out_dir}"
        f" --seed {seed} --val-fraction {val_fraction} --test-fraction {test_fraction}"
        f" --uncertain-fraction {uncertain_fraction}"
        + (f" --target-fpr {target_fpr}" if target_fpr is not None else "")
        + (
            f" --l2 {l2}"
            if detector == FACE_KEY
            else f" --epochs {epochs} --patience {patience} --batch-size {batch_size}"
            f" --learning-rate {learning_rate}"
        )
    )
    settings = tr.ShipSettings(
        out_dir=out_dir,
        data_source=str(data),
        command=command,
        code_version=_code_version(),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        target_fpr=target_fpr,
        uncertain_fraction=uncertain_fraction,
    )
    extractor = detector_class(det_cfg)
    prepare: Any
    if detector in (KEY_V1, KEY_V3):
        # The heads train on the frozen tower's embeddings: prepare, then embed, once per clip.
        try:
            embed = siglip_training.Embedder(det_cfg)
        except WeightsError as exc:
            err.print(f"error: {exc}", highlight=False)
            raise typer.Exit(2) from exc
        pipeline, cache = _feature_source(cfg, extractor, cache_dir)
        frames = _preparer(pipeline, detector)

        def prepare(path: Path) -> tuple[Any, Any]:
            item, info = frames(path)
            return embed(item), info

    else:
        extractor.setup("cpu")
        pipeline, cache = _feature_source(cfg, extractor, cache_dir)
        prepare = _preparer(pipeline, detector)
    with Steps(err) as steps:
        task = steps.add("features", total=len(clips))
        features = tr.extract_features(clips, cache, prepare, workers, task.advance)
        # Only color-cues trains by epochs; the others fit in one step.
        fit = steps.add("training", total=epochs) if detector == KEY else None

        def on_epoch(record: dict[str, float]) -> None:
            if fit is not None:
                fit.update(
                    completed=int(record["epoch"]),
                    description=f"training (val loss {record['val_loss']:.3f})",
                )

        try:
            if cross_validate:
                pooled = cue_training.cross_validate(
                    clips, features, cue_training.FitParams(l2=l2), settings.resamples, seed
                )
                out.print(
                    f"leave one group out: {pooled['groups']} groups, {pooled['unusable']} "
                    "clips without usable cues left out"
                )
                _print_reports({"every clip, its group held out": pooled})
                return
            if detector == FACE_KEY:
                report = cue_training.train_and_ship(
                    clips, splits, features, det_cfg, cue_training.FitParams(l2=l2), settings, seed
                )
            elif detector in (KEY_V1, KEY_V3):
                report = siglip_training.train_and_ship(
                    detector, clips, splits, features, det_cfg, params, settings
                )
            else:
                report = tr.train_and_ship(
                    clips,
                    splits,
                    features,
                    det_cfg,
                    params,
                    settings,
                    state_path=state_dir / f"{KEY}.state.pt",
                    resume=resume,
                    on_epoch=on_epoch,
                )
        except tr.DatasetError as exc:
            err.print(f"error: {exc}", highlight=False)
            raise typer.Exit(2) from exc
    training = report.get("training")
    resumed = getattr(training, "resumed_from", None)
    if resumed is not None:
        out.print(f"resumed after epoch {resumed}")
    if training is not None:
        out.print(f"best epoch {training.best_epoch} of {training.epochs_run}")
    out.print(
        f"wrote {out_dir / report['checkpoint']} (sha256 {report['sha256'][:12]}), "
        f"{out_dir / (detector + '.md')}, {out_dir / 'manifest.json'}"
    )
    _print_reports({"test (held out)": report["measured"]["test"]})


def _code_version() -> str:
    """``git describe`` of the source tree, when it is a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
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


def _feature_source(cfg: Config, detector: Any, cache_dir: Path) -> tuple[Any, Any]:
    """The daemon's pipeline for one detector, and the feature cache for its settings."""
    import dataclasses

    from detectors import training as tr
    from processor.loader import decode_limits
    from processor.pipeline import Pipeline

    limits = decode_limits(cfg)
    pipeline = Pipeline({detector.key: detector}, limits, cfg.decode.max_side)
    settings = detector.config.feature_settings() | {
        "decode_max_side": cfg.decode.max_side,
        "limits": dataclasses.asdict(limits),
    }
    namespace = tr.feature_namespace(detector.key, detector.version, settings)
    return pipeline, tr.FeatureCache(cache_dir, namespace)


def _preparer(pipeline: Any, key: str) -> Any:
    """``prepare(path) -> (input, info)`` through ``Pipeline.prepare``, the daemon's decode."""

    def prepare(path: Path) -> tuple[Any, Any]:
        prepared = pipeline.prepare(path, [key])
        if key in prepared.errors:
            raise prepared.errors[key]
        return prepared.inputs[key], prepared.info

    return prepare


def _print_reports(reports: dict[str, Any]) -> None:
    table = Table(
        "scorer",
        "clips",
        "AUC",
        "EER",
        "accuracy",
        "accuracy (all)",
        "precision",
        "recall",
        "ECE",
        "not decided",
    )
    for name, rep in reports.items():
        cells = []
        for metric in (
            "auc",
            "eer",
            "accuracy",
            "accuracy_all",
            "precision",
            "recall",
            "ece",
            "abstention_rate",
        ):
            m = rep["metrics"].get(metric, {"value": None, "ci95": [None, None]})
            low, high = m["ci95"]
            cells.append(
                "-"
                if m["value"] is None
                else f"{m['value']:.3f}" + ("" if low is None else f" [{low:.2f}, {high:.2f}]")
            )
        table.add_row(name, str(rep["n"]), *cells)
    out.print(table)


@app.command("eval")
def eval_cmd(
    data: Annotated[Path, typer.Option(help="labels CSV or a folder, as for train.")],
    detectors: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated keys (default: the first inbox's); any registered detector, "
            "on its shipped weights when it has no configuration section."
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="train, val or test: the clips of --card's split.")
    ] = None,
    card: Annotated[
        Path | None, typer.Option(help="Model card whose split file selects the clips.")
    ] = None,
    all_clips: Annotated[bool, typer.Option("--all", help="Evaluate every clip.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report.")] = None,
    png: Annotated[
        Path | None, typer.Option(help="Write ROC curves and score distributions (PNG).")
    ] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Feature cache for detectors that have one (--no-cache: none)."),
    ] = Path("var/cache/features"),
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Prepare every clip anew.")] = False,
    cross_validate: Annotated[
        bool,
        typer.Option(
            help="Leave one group out over every clip: each detector's training recipe refitted "
            "without the clip's group (default detector: face-cues-v1); the headline figure."
        ),
    ] = False,
    record_held_out: Annotated[
        Path | None,
        typer.Option(
            help="With --cross-validate and --json: record the report's AUC as held_out of each "
            "detector's default entry in this weights manifest."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Measure detectors and their fused verdict on labelled videos, through the
    daemon's pipeline: AUC, EER, accuracy, precision and recall at the operating point,
    calibration error and abstention, each with a bootstrap 95% interval over groups."""
    from detectors import training as tr

    cfg = _config(config)
    setup_logging("WARNING", "text")
    if cross_validate:
        if all_clips or split is not None or card is not None:
            _fail("--cross-validate judges every clip: leave out --all, --split and --card")
        if record_held_out is not None and json_out is None:
            _fail("--record-held-out needs --json: the manifest points at the report")
        _cross_validate(
            cfg,
            data,
            detectors,
            json_out,
            png,
            resamples,
            seed,
            None if no_cache else cache_dir,
            record_held_out,
        )
        return
    if record_held_out is not None:
        _fail("--record-held-out goes with --cross-validate")
    if all_clips == (split is not None) or (split is not None) != (card is not None):
        _fail("give either --all, or --split with --card")
    cfg, keys = _with_detectors(cfg, detectors)
    try:
        clips = tr.assign_groups(tr.load_clips(data))
        if split is not None and card is not None:
            chosen = tr.read_split_file(tr.split_file(card))
            clips = [c for c in clips if chosen.get(c.sha256) == split]
            if not clips:
                raise tr.DatasetError(f"no clip of {data} is in the {split} split of {card}")
    except tr.DatasetError as exc:
        _fail(str(exc))
    built = _set_up(cfg, keys)
    with Steps(err) as steps:
        task = steps.add("evaluating", total=len(clips))
        outcomes = _evaluate(cfg, built, clips, None if no_cache else cache_dir, task.advance)
    report = _eval_report(cfg, built, clips, outcomes, resamples, seed)
    report["data"] = str(data)
    report["selection"] = "all" if all_clips else f"{split} split of {card}"
    _print_reports(report["scorers"])
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")
    if png is not None:
        from detectors.evaluation import plot_report

        plot_report(report, png)


def _cross_validate(
    cfg: Config,
    data: Path,
    detectors: str | None,
    json_out: Path | None,
    png: Path | None,
    resamples: int,
    seed: int,
    cache_dir: Path | None,
    manifest: Path | None,
) -> None:
    """``eval --cross-validate``: each detector's features through the daemon's pipeline (and
    feature cache), its recipe refitted leaving one group out, the votes scored and fused."""
    import tempfile

    from pydantic import ValidationError

    from detectors import registry
    from detectors import training as tr
    from detectors.manifest import ManifestError
    from detectors.weights import sha256_file
    from processor import crossval

    recipes = crossval.recipes()
    keys = [k.strip() for k in (detectors or "face-cues-v1").split(",") if k.strip()]
    unknown = [k for k in keys if k not in recipes]
    if unknown or not keys:
        _fail(
            f"--cross-validate refits each detector per group; {', '.join(unknown) or 'none'} "
            f"cannot be; these can: {', '.join(recipes)}"
        )
    try:
        clips = tr.assign_groups(tr.load_clips(data))
    except tr.DatasetError as exc:
        _fail(str(exc))
    votes: dict[str, list[tuple[str, float | None]]] = {}
    described: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="drishtiksha-cv-") as scratch,
        Steps(err) as steps,
    ):
        for key in keys:
            # Features do not depend on weights or the operating point: those are left out, as
            # for training, so the recipe never needs an existing checkpoint.
            section = {
                k: v
                for k, v in cfg.detectors.get(key, {}).items()
                if k not in ("weights", "threshold", "uncertain_band", "manifest")
            }
            try:
                extractor = registry.build(key, section)
            except ValidationError as exc:
                _fail(f"detectors.{key}: {exc}")
            extractor.setup("cpu")
            pipeline, cache = _feature_source(
                cfg, extractor, cache_dir if cache_dir is not None else Path(scratch)
            )
            task = steps.add(f"{key} features", total=len(clips))
            features = tr.extract_features(
                clips, cache, _preparer(pipeline, key), cfg.batching.prepare_workers, task.advance
            )
            try:
                votes[key] = recipes[key].out_of_fold(clips, features)
            except tr.DatasetError as exc:
                _fail(f"{key}: {exc}")
            described[key] = {
                "version": extractor.version,
                "settings": extractor.config.feature_settings(),
                "recipe": recipes[key].describe,
            }
    report = crossval.build_report(clips, votes, described, cfg.fusion, resamples, seed)
    command = f"uv run drishtiksha eval --cross-validate --data {data} --detectors {','.join(keys)}"
    command += f" --resamples {resamples} --seed {seed}"
    if json_out is not None:
        command += f" --json {json_out}"
    if png is not None:
        command += f" --png {png}"
    report |= {
        "data": str(data),
        "data_sha256": sha256_file(data) if data.is_file() else None,
        "command": command,
        "code_version": _code_version(),
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
    }
    _print_reports(report["scorers"])
    for name, scorer in report["scorers"].items():
        below = scorer["sources_below_half"]
        if below:
            out.print(
                f"{name}: fewer than half right (abstentions count as wrong) on {', '.join(below)}",
                markup=False,
                highlight=False,
            )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")
    if png is not None:
        from detectors.evaluation import plot_report

        plot_report(report, png)
    if manifest is not None and json_out is not None:
        try:
            updated = crossval.record_held_out(manifest, report, json_out)
        except (ManifestError, ValueError) as exc:
            _fail(str(exc), 1)
        out.print(f"held_out of {', '.join(updated)} in {manifest} now quotes {json_out}")


def _evaluate(
    cfg: Config,
    built: dict[str, Any],
    clips: list[Any],
    cache_dir: Path | None,
    advance: Any,
) -> list[dict[str, DetectorVote]]:
    """Each clip's vote per detector, through ``Pipeline.prepare`` and
    ``Pipeline.predict`` in batches as the worker runs them. With a single cacheable detector,
    its cached prepared inputs stand in for ``prepare`` (they are its output for these bytes)."""
    from detectors.base import DetectorResult
    from detectors.color_cues import ColorCuesDetector
    from detectors.errors import DetectorError
    from detectors.face_cues import FaceCuesDetector
    from detectors.training import Failed, FeatureCache, Features
    from processor.loader import decode_limits
    from processor.pipeline import Pipeline, PreparedVideo
    from processor.verdict import DetectorVote

    pipeline = Pipeline(built, decode_limits(cfg), cfg.decode.max_side)
    keys = list(built)
    cache: FeatureCache | None = None
    cacheable = (ColorCuesDetector, FaceCuesDetector)
    if cache_dir is not None and len(keys) == 1 and isinstance(built[keys[0]], cacheable):
        cache = _feature_source(cfg, built[keys[0]], cache_dir)[1]
    results: list[dict[str, DetectorVote]] = [{} for _ in clips]
    pending: list[tuple[int, PreparedVideo]] = []

    def flush() -> None:
        predicted = pipeline.predict([p for _, p in pending])
        for (i, _), outcome in zip(pending, predicted, strict=True):
            for key, o in outcome.outcomes.items():
                if isinstance(o, DetectorResult):
                    results[i][key] = DetectorVote(
                        key, o.label.value, o.fake_probability, o.details
                    )
                else:
                    results[i][key] = DetectorVote(key, "ABSTAIN", None)
        pending.clear()

    for i, clip in enumerate(clips):
        hit = cache.get(clip.sha256) if cache is not None else None
        try:
            if hit is not None and hit.info is not None and not isinstance(hit.prepared, Failed):
                prepared = PreparedVideo(clip.path, hit.info, inputs={keys[0]: hit.prepared})
            elif hit is not None:
                raise DetectorError(getattr(hit.prepared, "message", "failed"))
            else:
                prepared = pipeline.prepare(clip.path, keys)
                if cache is not None:
                    fresh = prepared.inputs.get(keys[0])
                    if fresh is not None:
                        cache.put(clip.sha256, Features(fresh, prepared.info))
        except DetectorError as exc:
            if exc.retryable:
                raise
            results[i] = {k: DetectorVote(k, "ABSTAIN", None) for k in keys}
        else:
            pending.append((i, prepared))
            if len(pending) >= cfg.batching.max_videos:
                flush()
        advance()
    if pending:
        flush()
    return results


def _eval_report(
    cfg: Config,
    built: dict[str, Any],
    clips: list[Any],
    outcomes: list[dict[str, DetectorVote]],
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    from detectors.evaluation import binary_report
    from detectors.training import LABEL_NAMES, per_dataset
    from processor.verdict import DetectorVote, overall_verdict

    labels = [c.label for c in clips]
    groups = [c.group for c in clips]
    scored: dict[str, list[tuple[str, float | None]]] = {
        key: [
            (v.label, v.fake_probability)
            for v in (o.get(key, DetectorVote(key, "ABSTAIN", None)) for o in outcomes)
        ]
        for key in built
    }
    fused = [overall_verdict(list(o.values()), cfg.fusion) for o in outcomes]
    scored[f"fused ({cfg.fusion.rule})"] = [(f["label"], f["fake_probability"]) for f in fused]
    scorers = {
        name: binary_report(
            labels, [p for _, p in preds], [lab for lab, _ in preds], groups, resamples, seed
        )
        | {"per_dataset": per_dataset(clips, preds)}
        for name, preds in scored.items()
    }
    return {
        "schema": "drishtiksha.eval/1",
        "bootstrap": {"resamples": resamples, "seed": seed, "unit": "group"},
        "detectors": {
            key: {
                "version": det.version,
                "weights": det.weights_id,
                "operating_point": getattr(det, "operating", None) and det.operating.describe(),
            }
            for key, det in built.items()
        },
        "fusion": cfg.fusion.model_dump(mode="json"),
        "scorers": scorers,
        "clips": [
            {
                "file": c.file,
                "sha256": c.sha256,
                "label": LABEL_NAMES[c.label],
                "dataset": c.dataset,
                "group": c.group,
                "results": {k: {"label": v.label, "p": v.fake_probability} for k, v in o.items()},
                "fused": f,
            }
            for c, o, f in zip(clips, outcomes, fused, strict=True)
        ],
    }


def main() -> None:
    """Console-script entry point: every error is one line on stderr and a non-zero exit."""
    logging.captureWarnings(True)
    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        typer.echo(f"error: {where}{exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except StorageError as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
