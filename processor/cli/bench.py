"""``bench``: the benchmarks whose results docs/benchmarks.md records."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from processor.cli.common import (
    ConfigOpt,
    JsonOpt,
    _code_version,
    _config,
    _fail,
    _set_up,
    err,
    out,
)
from processor.progress import Steps

if TYPE_CHECKING:
    from processor.bench.core import PipelineRun


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (results: docs/benchmarks.md).")


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
    from processor.bench.core import bench_queue, machine
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
    batch: Annotated[
        str, typer.Option(help="Videos per batch; several, comma-separated, run one after another.")
    ] = "8",
    workers: Annotated[
        int | None,
        typer.Option(help="Threads preparing videos (default: batching.prepare_workers).", min=1),
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="Override every detector's weights, e.g. 'dummy'.")
    ] = None,
    seed_way: Annotated[
        bool, typer.Option(help="Also time the older service's way, for the ratio.")
    ] = True,
    json_out: JsonOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Videos per second and time per stage through the detectors, ours against the older
    service's per-video, per-model, seek-per-frame way."""
    from detectors import registry
    from processor.bench.core import SEED_DETECTORS, bench_pipeline, bench_seed_way, video_files
    from processor.loader import resolve_device

    cfg = _config(config)
    keys = detectors.split(",") if detectors else list(cfg.detectors)
    ours = sorted(set(keys) - SEED_DETECTORS)
    if seed_way and ours:
        err.print(f"error: the older service had no {', '.join(ours)}: add --no-seed-way")
        raise typer.Exit(2)
    try:
        batches = [int(b) for b in batch.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        err.print(f"error: --batch takes whole numbers >= 1, comma-separated, not {batch!r}")
        raise typer.Exit(2)
    threads = workers or cfg.batching.prepare_workers
    sections = {k: {**cfg.detectors.get(k, {})} for k in keys}
    classes = registry.available()
    if weights is not None:
        for key, section in sections.items():
            # Detectors without weights (c2pa-provenance) have no such setting.
            if key in classes and "weights" in classes[key].config_class.model_fields:
                section["weights"] = weights
    cfg = cfg.model_copy(update={"detectors": sections})
    pipeline = _set_up(cfg, keys)
    device = resolve_device(cfg.device)
    files = video_files(videos)[:limit]
    command = (
        f"drishtiksha bench detectors --detectors {','.join(keys)} --limit {limit} "
        f"--batch {batch} --workers {threads}"
        + (f" --weights {weights}" if weights else "")
        + ("" if seed_way else " --no-seed-way")
        + (f" --json {json_out}" if json_out else "")
    )
    load_before = os.getloadavg()
    with Steps(err) as steps:
        task = steps.add("videos, each way", total=len(files) * (len(batches) + seed_way))
        runs = [bench_pipeline(pipeline, files, b, threads, task.advance) for b in batches]
        seed_s = bench_seed_way(pipeline, files, task.advance) if seed_way else None
    report = _detectors_report(runs, seed_s, keys, device, command, load_before)
    out.print(f"machine: {report['machine']}, device {device}")
    out.print(f"command: {command}")
    for run in runs:
        table = Table("stage", "seconds", "per video (ms)", title=f"batches of {run.batch}")
        table.add_row(
            "decode (shared)", f"{run.decode_s:.2f}", f"{run.decode_s / run.videos * 1e3:.0f}"
        )
        for key in keys:
            for stage, values in (("prepare", run.prepare_s), ("predict", run.predict_s)):
                table.add_row(
                    f"{stage} {key}",
                    f"{values[key]:.2f}",
                    f"{values[key] / run.videos * 1e3:.0f}",
                )
        out.print(table)
        out.print(
            f"ours, batches of {run.batch}, {run.workers} preparing: {run.videos} videos in "
            f"{run.wall_s:.2f} s = {run.videos_per_s:.3f} videos/s"
        )
    if seed_s is not None:
        out.print(
            f"older service's way: {seed_s:.2f} s = {len(files) / seed_s:.3f} videos/s; ours "
            f"(best batch) is {report['ratio']:.2f}x faster"
        )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")


def _detectors_report(
    runs: list[PipelineRun],
    seed_s: float | None,
    keys: list[str],
    device: str,
    command: str,
    load_before: tuple[float, float, float],
) -> dict[str, Any]:
    from processor.bench.core import machine

    best = max(runs, key=lambda r: r.videos_per_s)
    videos = best.videos
    return {
        "schema": "drishtiksha.bench-detectors/1",
        "machine": machine(),
        "device": device,
        "detectors": keys,
        "command": f"uv run {command}",
        "code_version": _code_version(),
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "videos": videos,
        "runs": [
            {
                "batch": r.batch,
                "workers": r.workers,
                "wall_s": round(r.wall_s, 3),
                "videos_per_s": round(r.videos_per_s, 4),
                "stages_s": {
                    "decode": round(r.decode_s, 3),
                    **{f"prepare {k}": round(r.prepare_s[k], 3) for k in keys},
                    **{f"predict {k}": round(r.predict_s[k], 3) for k in keys},
                },
            }
            for r in runs
        ],
        "seed_way": None
        if seed_s is None
        else {"wall_s": round(seed_s, 3), "videos_per_s": round(videos / seed_s, 4)},
        "ratio": None if seed_s is None else round(seed_s / best.wall_s, 3),
    }


@bench_app.command("decode")
def bench_decode_cmd(
    videos: Annotated[Path, typer.Option(help="Folder of videos.")] = Path("../shared/videos"),
    frames: Annotated[int, typer.Option(help="Frames sampled per video.")] = 64,
    limit: Annotated[int, typer.Option(help="At most this many videos (0: all).")] = 0,
    config: ConfigOpt = None,
) -> None:
    """Sample frames per video: one sequential decode (ours) against a seek per sampled frame
    (the older service's way), side by side."""
    from processor.bench.core import DecodeRow, bench_decode, machine, summarise, video_files
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
    from processor.bench.core import machine
    from processor.bench.desk import bench_desk, print_report

    report = {"machine": machine(), **asyncio.run(bench_desk(database_url, jobs, repeats))}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(out, report)


@bench_app.command("startup")
def bench_startup_cmd(
    runs: Annotated[int, typer.Option(min=1, help="Timed runs of each command.")] = 5,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML whose detectors and settings to start with (found as for `drishtiksha "
            "run`); its database, inboxes, port, SQS sources, webhooks and store are replaced by "
            "scratch ones.",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds one run may take.")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Seconds to start: --help, config check, detectors, jobs list (to exit) and the daemon
    (to its ready line and to its first healthy /health), each a fresh process, RUNS times
    after one untimed warm-up, in a scratch folder."""
    import os

    from processor.bench.core import machine
    from processor.bench.startup import COMMANDS, StartupBenchError, bench_startup
    from processor.config import ConfigError, find_config
    from processor.progress import Steps

    try:
        found, _ = find_config(config, os.environ, Path.cwd())
    except ConfigError as exc:
        _fail(str(exc))
    with Steps(err) as steps:
        task = steps.add("starting commands", total=runs * (len(COMMANDS) + 1))
        try:
            report = bench_startup(found, runs, timeout, task.advance)
        except StartupBenchError as exc:
            _fail(str(exc), 1)
    report = {"machine": machine(), **report}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    out.print(f"machine: {report['machine']}")
    load = report["load_before"], report["load_after"]
    out.print(f"load average (1, 5, 15 min): before {load[0]}, after {load[1]}")
    out.print(
        f"configuration: {report['config']} (scratch database, inboxes and port)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"command: drishtiksha bench startup --runs {runs}")
    table = Table("command", "median s", "min s", "max s", "target s", "within")
    for row in report["commands"]:
        table.add_row(
            row["name"],
            f"{row['median_s']:.2f}",
            f"{row['min_s']:.2f}",
            f"{row['max_s']:.2f}",
            f"{row['target_s']:.0f}",
            "yes" if row["within_target"] else "no",
        )
    out.print(table)


@bench_app.command("gpu")
def bench_gpu_cmd(
    clips: Annotated[
        Path | None, typer.Option(help="Folder of clips (default: a few generated ones).")
    ] = None,
    batches: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8,32,64",
    tests: Annotated[
        Path | None,
        typer.Option(help="Tests folder whose CUDA tests to run first (default: ./tests)."),
    ] = None,
    skip_tests: Annotated[bool, typer.Option(help="Only the benchmark.")] = False,
    json_out: Annotated[
        Path | None, typer.Option("--out", help="Also write the JSON line to this file.")
    ] = None,
    device: Annotated[
        str,
        typer.Option(help="cuda; cpu: a dry run of this benchmark's code (numbers mean nothing)."),
    ] = "cuda",
) -> None:
    """On a CUDA host: the CUDA tests, then the older service's three detectors with dummy
    weights at each batch size; one JSON line (videos/s, GPU utilisation, decode time, peak
    memory). Refuses in one line where there is no CUDA device."""
    from processor.bench.gpu import main

    argv = ["--batches", batches, "--device", device]
    if clips is not None:
        argv += ["--clips", str(clips)]
    if tests is not None:
        argv += ["--tests", str(tests)]
    if skip_tests:
        argv.append("--skip-tests")
    if json_out is not None:
        argv += ["--out", str(json_out)]
    raise typer.Exit(main(argv))


@bench_app.command("gpu-bundle")
def bench_gpu_bundle_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to fill (created; empty).")],
    videos: Annotated[
        Path | None,
        typer.Option(help="Take the clips from this folder instead of generating them."),
    ] = None,
    clips: Annotated[int, typer.Option(min=1, help="Clips to carry.")] = 3,
    python_version: Annotated[
        str, typer.Option(help="The GPU host's Python, for the wheels.")
    ] = "3.12",
) -> None:
    """Prepare, here, what `bench gpu` needs on a GPU host without network: the wheels it lacks
    (PyAV, pydantic, dlib), this project's wheel, the CUDA tests and a few clips, within 64 MiB,
    and run.sh, which installs them offline and runs the benchmark."""
    from processor.bench.gpu_bundle import BundleError, build_bundle

    try:
        bundle = build_bundle(out_dir, videos=videos, clips=clips, python_version=python_version)
    except BundleError as exc:
        _fail(str(exc), 1)
    for path, size in bundle.files:
        out.print(f"{size / 2**20:7.2f} MiB  {path}", markup=False, highlight=False, soft_wrap=True)
    out.print(
        f"{bundle.total_bytes / 2**20:.1f} MiB in {out_dir} (limit 64 MiB); on the GPU host: "
        f"sh {out_dir.name}/run.sh",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@bench_app.command("faces")
def bench_faces_cmd(
    data: Annotated[
        Path, typer.Option(help="Labelled clips: a labels.csv, or a folder holding one.")
    ] = Path("../shared/videos/labels.csv"),
    pad_to: Annotated[
        str | None,
        typer.Option(
            help="WIDTHxHEIGHT: put each clip, at its own size, in the middle of a black frame "
            "this large before the daemon's downscale (small faces in a 1080p or 4K video)."
        ),
    ] = None,
    finders: Annotated[
        str, typer.Option(help="Face finders to compare, comma-separated.")
    ] = "hog,blazeface,hog+blazeface",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N clips.")] = None,
    json_out: JsonOpt = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML whose decode, limits and face-cues-v1 settings to use (found as for "
            "`drishtiksha run`).",
        ),
    ] = None,
) -> None:
    """How often each face finder finds a face on the frames face-cues-v1 measures (clips with
    a face in at least one frame, clips with enough for a verdict, mean share of frames), and
    the seconds it spends per clip, every finder on the same decoded frames."""
    from pydantic import ValidationError

    from detectors import training as tr
    from detectors.errors import DetectorError
    from detectors.face_cues import KEY, FaceCuesConfig
    from processor.bench.core import machine
    from processor.bench.faces import bench_faces, parse_finders, parse_size
    from processor.loader import decode_limits

    cfg = _config(config)
    try:
        names = parse_finders(finders)
        size = parse_size(pad_to) if pad_to is not None else None
    except ValueError as exc:
        _fail(str(exc))
    try:
        settings = FaceCuesConfig.model_validate(cfg.detectors.get(KEY, {}))
    except ValidationError as exc:
        _fail(f"detectors.{KEY}: {exc}")
    try:
        clips = tr.load_clips(data)[:limit]
    except tr.DatasetError as exc:
        _fail(str(exc))
    command = f"drishtiksha bench faces --data {data} --finders {','.join(names)}"
    command += (f" --pad-to {pad_to}" if pad_to else "") + (f" --limit {limit}" if limit else "")
    command += f" --json {json_out}" if json_out else ""
    from processor.progress import Steps

    with Steps(err) as steps:
        task = steps.add("clips, every finder", total=len(clips))
        try:
            report = bench_faces(
                clips,
                decode_limits(cfg),
                cfg.decode.max_side,
                settings,
                names,
                size,
                task.advance,
            )
        except (DetectorError, FileNotFoundError) as exc:
            _fail(str(exc), 1)
    report = {"machine": machine(), "command": command, "data": str(data), **report}
    out.print(f"machine: {report['machine']}")
    load = report["load_before"], report["load_after"]
    out.print(f"load average (1, 5, 15 min): before {load[0]}, after {load[1]}")
    out.print(f"command: {command}", markup=False, highlight=False, soft_wrap=True)
    table = Table(
        "finder",
        "clips with a face",
        f"with >= {settings.min_faces} (judged)",
        "mean share of frames",
        "frames by BlazeFace",
        "s/clip mean",
        "s/clip median",
    )
    for name, row in report["finders"].items():
        table.add_row(
            name,
            f"{row['clips_with_face']}/{row['clips']}",
            str(row["clips_judged"]),
            f"{row['mean_face_fraction']:.3f}" if row["mean_face_fraction"] is not None else "-",
            str(row["frames_by_blazeface"]),
            f"{row['seconds_per_clip_mean']:.3f}" if row["clips"] else "-",
            f"{row['seconds_per_clip_median']:.3f}" if row["clips"] else "-",
        )
    out.print(table)
    for name, row in report["finders"].items():
        missed = row["clips_without_face"]
        if missed:
            shown = ", ".join(missed[:10])
            more = (
                f" and {len(missed) - 10} more (listed in the report)" if len(missed) > 10 else ""
            )
            out.print(
                f"{name}: no face in {shown}{more}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    if report["failed"]:
        out.print(f"{len(report['failed'])} clips could not be decoded (listed in the report)")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")


@bench_app.command("runtime-agreement")
def bench_runtime_agreement_cmd(
    videos: Annotated[Path, typer.Option(help="Folder of videos.")] = Path("../shared/videos"),
    limit: Annotated[
        int, typer.Option(min=1, help="Clips, spread evenly over the folder's sorted list.")
    ] = 20,
    frames: Annotated[
        int | None,
        typer.Option(min=1, help="Frames per clip (default: siglip-lstm-v1's num_frames)."),
    ] = None,
    weights: Annotated[
        str, typer.Option(help="siglip-lstm-v1's weights; 'dummy': seeded random SigLIP-base.")
    ] = "dummy",
    json_out: JsonOpt = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML whose decode, limits and siglip-lstm-v1 settings to use (found as for "
            "`drishtiksha run`).",
        ),
    ] = None,
) -> None:
    """How closely onnxruntime (float32 and int8 weights) follows torch in siglip-lstm-v1 on
    the CPU: the largest and mean change of calibrated P(fake) and of frame scores, label
    flips, and seconds per frame of each, every runtime on the same frames."""
    from detectors.errors import DetectorError
    from detectors.siglip_lstm import KEY_V1
    from processor.bench.core import runtime_agreement, video_files
    from processor.loader import decode_limits
    from processor.progress import Steps

    cfg = _config(config)
    found = video_files(videos)
    if not found:
        _fail(f"no videos under {videos}")
    clips = found[:: max(1, len(found) // limit)][:limit]
    settings = {**cfg.detectors.get(KEY_V1, {}), "weights": weights}
    if frames is not None:
        settings["num_frames"] = frames
    command = f"drishtiksha bench runtime-agreement --videos {videos} --limit {limit}"
    command += (f" --frames {frames}" if frames else "") + f" --weights {weights}"
    command += f" --json {json_out}" if json_out else ""
    with Steps(err) as steps:
        task = steps.add("clips, every runtime", total=len(clips))
        try:
            report = runtime_agreement(
                clips, settings, decode_limits(cfg), cfg.decode.max_side, task.advance
            )
        except DetectorError as exc:
            _fail(str(exc), 1)
    report = {"command": command, **report}
    out.print(f"machine: {report['machine']}")
    load = report["load_before"], report["load_after"]
    out.print(f"load average (1, 5, 15 min): before {load[0]}, after {load[1]}")
    out.print(f"command: {command}", markup=False, highlight=False, soft_wrap=True)
    table = Table(
        "runtime", "backbone", "max |dP|", "mean |dP|", "max |d frame|", "flips", "s/frame"
    )
    for name, row in report["runtimes"].items():
        table.add_row(
            name,
            ", ".join(row["backbone"]),
            f"{row['max_abs_delta_p_fake']:.2e}",
            f"{row['mean_abs_delta_p_fake']:.2e}",
            f"{row['max_abs_delta_frame_score']:.2e}",
            f"{row['label_flips']}/{report['clips']}",
            f"{row['predict_s_per_frame']:.3f}" if row["predict_s_per_frame"] else "-",
        )
    out.print(table)
    if report["failed"]:
        out.print(f"{len(report['failed'])} clips could not be decoded (listed in the report)")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")
