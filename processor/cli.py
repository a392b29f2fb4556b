"""The ``drishtiksha`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import dataclass, field
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
weights_app = typer.Typer(no_args_is_help=True, help="Checkpoints and the weights manifest.")
app.add_typer(jobs_app, name="jobs")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")
app.add_typer(weights_app, name="weights")

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
    visualize: Annotated[
        Path | None,
        typer.Option(
            "--visualize",
            metavar="DIR",
            help="Also write <name>.<detector>.annotated.mp4 and .timeline.png into DIR.",
        ),
    ] = None,
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
            rows.append(_analyze_one(pipeline, path, keys, cfg.fusion, visualize))
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
    from processor.verdict import overall_verdict

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
    votes = [_Vote(r["detector"], r["label"], r["fake_probability"], r["details"]) for r in results]
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
    from storage.queue import JobState

    queue = _queue(_config(config))
    table = Table("id", "state", "verdict", "source", "created")
    for job in queue.list(state=JobState(state) if state else None, limit=limit):
        verdict = job.verdict["label"] if job.state is JobState.DONE and job.verdict else ""
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


@app.command("workers")
def workers_cmd(config: ConfigOpt = None) -> None:
    """Worker processes sharing the database: alive or not, and the jobs each holds."""
    cfg = _config(config)
    table = Table("worker", "host", "pid", "alive", "last heartbeat", "held jobs")
    for w in _queue(cfg).workers(alive_within_s=cfg.queue.lease_s):
        table.add_row(
            w.id,
            w.host,
            str(w.pid),
            "yes" if w.alive else "no",
            w.heartbeat_at.strftime("%Y-%m-%d %H:%M:%S"),
            ", ".join(w.held_jobs) or "-",
        )
    out.print(table)


@weights_app.command("import")
def weights_import(
    path: Annotated[Path, typer.Argument(help="Checkpoint in the older service's format.")],
    detector: Annotated[str, typer.Option(help="Detector key it is for.")],
    threshold: Annotated[
        float, typer.Option(help="Fake-probability threshold to record for it.")
    ] = 0.5,
    manifest: Annotated[
        Path, typer.Option(help="Weights manifest; the checkpoint is copied beside it.")
    ] = Path("weights/manifest.json"),
    config: ConfigOpt = None,
) -> None:
    """Check a checkpoint key by key and shape by shape against the configured network, copy it
    next to the manifest and register it there (sha256, threshold) as the detector's default."""
    import datetime as dt
    import shutil

    from detectors import registry
    from detectors.errors import DetectorError
    from detectors.manifest import ManifestEntry, register

    cfg = _config(config)
    section = {k: v for k, v in cfg.detectors.get(detector, {}).items() if k != "weights"}
    try:
        digest = registry.check_checkpoint(detector, section, path)
    except DetectorError as exc:
        err.print(f"refused: {exc}", highlight=False)
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
    out.print(f"{path}: keys and shapes match {detector}; sha256 {digest}")
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
    engine = make_engine(cfg.database.url)
    downgrade(engine, revision)
    engine.dispose()
    out.print(f"database at {engine.url.render_as_string(hide_password=True)} is at {revision}")


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


@bench_app.command("queue")
def bench_queue_cmd(
    database_url: Annotated[
        str, typer.Option(help="An empty database to fill (its jobs table grows).")
    ],
    jobs: Annotated[int, typer.Option(help="Jobs per run.")] = 2000,
    workers: Annotated[str, typer.Option(help="Worker process counts to try.")] = "1,2,4",
    batch: Annotated[int, typer.Option(help="Jobs per claim.")] = 1,
) -> None:
    """Jobs per second through the queue with a no-op instead of inference, and claim
    latency percentiles, for each number of worker processes."""
    from processor.bench import bench_queue, machine

    out.print(f"machine: {machine()}")
    out.print(
        f"command: drishtiksha bench queue --database-url <{database_url.split(':')[0]}> "
        f"--jobs {jobs} --workers {workers} --batch {batch}"
    )
    table = Table("workers", "jobs", "seconds", "jobs/s", "claim p50 ms", "p95 ms", "p99 ms")
    for n in (int(x) for x in workers.split(",")):
        run = bench_queue(database_url, jobs, n, batch)
        table.add_row(
            str(n),
            str(run.jobs),
            f"{run.seconds:.2f}",
            f"{run.jobs_per_s:.0f}",
            f"{run.claim_p50_ms:.2f}",
            f"{run.claim_p95_ms:.2f}",
            f"{run.claim_p99_ms:.2f}",
        )
    out.print(table)


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
    from processor.daemon import build_detectors, decode_limits, resolve_device
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
    run = bench_pipeline(
        Pipeline(built, decode_limits(cfg), cfg.decode.max_side), files, batch, seed_way
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
    with Progress(console=err) as progress:
        task = progress.add_task("features", total=len(clips))
        features = tr.extract_features(
            clips, cache, prepare, workers, lambda: progress.advance(task)
        )
        fit = progress.add_task("training", total=epochs, visible=detector == KEY)

        def on_epoch(record: dict[str, float]) -> None:
            progress.update(
                fit,
                completed=record["epoch"],
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
    from processor.daemon import decode_limits
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
        "scorer", "clips", "AUC", "EER", "accuracy", "precision", "recall", "ECE", "not decided"
    )
    for name, rep in reports.items():
        cells = []
        for metric in ("auc", "eer", "accuracy", "precision", "recall", "ece", "abstention_rate"):
            m = rep["metrics"][metric]
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
        str | None, typer.Option(help="Comma-separated keys (default: the first inbox's).")
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
    config: ConfigOpt = None,
) -> None:
    """Measure the configured detectors and the fused verdict on labelled videos, through the
    daemon's pipeline: AUC, EER, accuracy, precision and recall at the operating point,
    calibration error and abstention, each with a bootstrap 95% interval over groups."""
    from detectors import training as tr
    from detectors.errors import DetectorError
    from processor.daemon import build_detectors, resolve_device

    cfg = _config(config)
    setup_logging("WARNING", "text")
    if all_clips == (split is not None) or (split is not None) != (card is not None):
        err.print("error: give either --all, or --split with --card")
        raise typer.Exit(2)
    keys = detectors.split(",") if detectors else list(cfg.inboxes[0].detectors)
    try:
        clips = tr.assign_groups(tr.load_clips(data))
        if split is not None and card is not None:
            chosen = tr.read_split_file(tr.split_file(card))
            clips = [c for c in clips if chosen.get(c.sha256) == split]
            if not clips:
                raise tr.DatasetError(f"no clip of {data} is in the {split} split of {card}")
        missing = [k for k in keys if k not in cfg.detectors]
        if missing:
            raise ConfigError(f"no configuration section for {missing}")
        built = build_detectors(cfg, keys)
        device = resolve_device(cfg.device)
        for det in built.values():
            det.setup(device)
    except (tr.DatasetError, ConfigError, DetectorError) as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("evaluating", total=len(clips))
        outcomes = _evaluate(
            cfg, built, clips, None if no_cache else cache_dir, lambda: progress.advance(task)
        )
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


@dataclass(frozen=True)
class _Vote:
    """One detector's result on one evaluation clip, as fusion reads it."""

    detector: str
    label: str
    fake_probability: float | None
    details: dict[str, Any] = field(default_factory=dict)


def _evaluate(
    cfg: Config,
    built: dict[str, Any],
    clips: list[Any],
    cache_dir: Path | None,
    advance: Any,
) -> list[dict[str, _Vote]]:
    """Each clip's vote per detector, through ``Pipeline.prepare`` and
    ``Pipeline.predict`` in batches as the worker runs them. With a single cacheable detector,
    its cached prepared inputs stand in for ``prepare`` (they are its output for these bytes)."""
    from detectors.base import DetectorResult
    from detectors.color_cues import ColorCuesDetector
    from detectors.errors import DetectorError
    from detectors.face_cues import FaceCuesDetector
    from detectors.training import Failed, FeatureCache, Features
    from processor.daemon import decode_limits
    from processor.pipeline import Pipeline, PreparedVideo

    pipeline = Pipeline(built, decode_limits(cfg), cfg.decode.max_side)
    keys = list(built)
    cache: FeatureCache | None = None
    cacheable = (ColorCuesDetector, FaceCuesDetector)
    if cache_dir is not None and len(keys) == 1 and isinstance(built[keys[0]], cacheable):
        cache = _feature_source(cfg, built[keys[0]], cache_dir)[1]
    results: list[dict[str, _Vote]] = [{} for _ in clips]
    pending: list[tuple[int, PreparedVideo]] = []

    def flush() -> None:
        predicted = pipeline.predict([p for _, p in pending])
        for (i, _), outcome in zip(pending, predicted, strict=True):
            for key, o in outcome.outcomes.items():
                if isinstance(o, DetectorResult):
                    results[i][key] = _Vote(key, o.label.value, o.fake_probability, o.details)
                else:
                    results[i][key] = _Vote(key, "ABSTAIN", None)
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
            results[i] = {k: _Vote(k, "ABSTAIN", None) for k in keys}
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
    outcomes: list[dict[str, _Vote]],
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    from detectors.evaluation import binary_report
    from detectors.training import LABEL_NAMES, per_dataset
    from processor.verdict import overall_verdict

    labels = [c.label for c in clips]
    groups = [c.group for c in clips]
    scored: dict[str, list[tuple[str, float | None]]] = {
        key: [
            (v.label, v.fake_probability)
            for v in (o.get(key, _Vote(key, "ABSTAIN", None)) for o in outcomes)
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
    """Console-script entry point."""
    logging.captureWarnings(True)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
