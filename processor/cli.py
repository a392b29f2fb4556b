"""The ``drishtiksha`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from processor.config import Config, ConfigError, load_config
from processor.logs import setup_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
jobs_app = typer.Typer(no_args_is_help=True, help="Inspect jobs.")
db_app = typer.Typer(no_args_is_help=True, help="Database maintenance.")
config_app = typer.Typer(no_args_is_help=True, help="Configuration.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (results: docs/benchmarks.md).")
app.add_typer(jobs_app, name="jobs")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML file (default: configs/default.yaml if present)."),
]
out = Console()
err = Console(stderr=True)


def _config(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from exc


@app.command()
def run(
    config: ConfigOpt = None,
    role: Annotated[str, typer.Option(help="all, ingest, worker or api.")] = "all",
    log_format: Annotated[str | None, typer.Option(help="text or json.")] = None,
) -> None:
    """Run the daemon: watch the inboxes, process jobs, serve the API."""
    from detectors.errors import DetectorError
    from processor.daemon import Role, serve

    cfg = _config(config)
    if role not in ("all", "ingest", "worker", "api"):
        err.print(f"error: --role must be all, ingest, worker or api, not {role!r}")
        raise typer.Exit(2)
    setup_logging(cfg.logging.level, log_format or cfg.logging.format)
    r: Role = role  # type: ignore[assignment]
    try:
        asyncio.run(serve(cfg, r))
    except (ConfigError, DetectorError) as exc:
        # A bad configuration or an unloadable weights file stops start-up with one clear line.
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc


@app.command()
def analyze(
    paths: Annotated[list[Path], typer.Argument(help="Video files to judge.")],
    config: ConfigOpt = None,
    detectors: Annotated[
        str | None, typer.Option(help="Comma-separated keys (default: the first inbox's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Judge files now, in this process, through the daemon's pipeline (no database, files are
    left where they are)."""
    from processor.daemon import build_detectors, decode_limits, resolve_device
    from processor.pipeline import Pipeline

    cfg = _config(config)
    setup_logging("WARNING", "text")
    keys = detectors.split(",") if detectors else list(cfg.inboxes[0].detectors)
    try:
        built = build_detectors(cfg, keys) if all(k in cfg.detectors for k in keys) else None
    except ConfigError as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if built is None:
        err.print(f"error: no configuration section for {keys}; configured: {list(cfg.detectors)}")
        raise typer.Exit(2)
    device = resolve_device(cfg.device)
    for det in built.values():
        det.setup(device)
    pipeline = Pipeline(built, decode_limits(cfg), cfg.decode.max_side)
    rows: list[dict[str, Any]] = []
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("analysing", total=len(paths))
        for path in paths:
            rows.append(_analyze_one(pipeline, path, keys))
            progress.advance(task)
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
    out.print(table)


def _analyze_one(pipeline: Any, path: Path, keys: list[str]) -> dict[str, Any]:
    from detectors.base import DetectorResult
    from detectors.errors import DetectorError

    try:
        prepared = pipeline.prepare(path, keys)
    except DetectorError as exc:
        return {"file": str(path), "error": {"code": exc.code, "message": exc.message}}
    predicted = pipeline.predict([prepared])[0]
    results = []
    for key, outcome in predicted.outcomes.items():
        det = pipeline.detectors[key]
        base = {"detector": key, "version": det.version, "weights": det.weights_id}
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
    return {"file": str(path), "detectors": results}


def _queue(cfg: Config) -> Any:
    from storage.db import make_engine
    from storage.queue import JobQueue

    return JobQueue(make_engine(cfg.database.url))


@jobs_app.command("list")
def jobs_list(
    config: ConfigOpt = None,
    state: Annotated[str | None, typer.Option(help="queued, running, done, failed...")] = None,
    limit: int = 20,
) -> None:
    """The newest jobs."""
    from processor.verdict import overall_verdict
    from storage.queue import JobState

    queue = _queue(_config(config))
    table = Table("id", "state", "verdict", "source", "created")
    for job in queue.list(state=JobState(state) if state else None, limit=limit):
        verdict = overall_verdict(job.results)["label"] if job.state is JobState.DONE else ""
        table.add_row(
            job.id,
            job.state.value,
            verdict or (job.error_code or ""),
            job.source_ref,
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str, config: ConfigOpt = None) -> None:
    """One job with its results, as JSON."""
    from processor.api import job_document

    job = _queue(_config(config)).get(job_id)
    if job is None:
        err.print(f"no job {job_id}")
        raise typer.Exit(1)
    out.print_json(json.dumps(job_document(job)))


@app.command("detectors")
def detectors_cmd(config: ConfigOpt = None) -> None:
    """Every known detector, whether it can load here, and its configured weights."""
    from detectors import registry

    cfg = _config(config)
    table = Table("key", "version", "status", "configured weights")
    for key, cls in registry.available().items():
        section = cfg.detectors.get(key)
        weights = str(section.get("weights", "dummy")) if section is not None else "-"
        status = "configured" if section is not None else "available"
        table.add_row(key, cls.version, status, weights)
    for key, why in registry.unavailable().items():
        table.add_row(key, "-", f"unavailable: {why}", "-")
    out.print(table)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Apply database migrations."""
    from storage.db import make_engine, upgrade

    cfg = _config(config)
    engine = make_engine(cfg.database.url)
    upgrade(engine)
    engine.dispose()
    out.print(f"database at {engine.url.render_as_string(hide_password=True)} is up to date")


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate the configuration, detector sections included, and print it resolved."""
    from processor.daemon import build_detectors

    cfg = _config(config)
    try:
        build_detectors(cfg, list(cfg.detectors))
    except ConfigError as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    out.print_json(cfg.model_dump_json())


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
    from processor.daemon import decode_limits

    cfg = _config(config)
    files = video_files(videos)[: limit or None]
    if not files:
        err.print(f"no videos under {videos}")
        raise typer.Exit(1)
    rows: list[DecodeRow] = []
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("decoding", total=len(files))
        for row in bench_decode(files, frames, decode_limits(cfg), cfg.decode.max_side):
            if isinstance(row, DecodeRow):
                rows.append(row)
            else:
                err.print(f"skipped {row[0]}: {row[1].code}")
            progress.advance(task)
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


def main() -> None:
    """Console-script entry point."""
    logging.captureWarnings(True)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
