"""``drishtiksha bench startup``, ``bench gpu`` and ``bench gpu-bundle``: thin layers over
``processor.bench_startup``, ``processor.bench_gpu`` and ``processor.gpu_bundle``.

Registered on the ``bench`` group by ``processor.cli``; the consoles and the failure helper are
that module's, imported when a command runs (it imports this one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table


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

    from processor.bench import machine
    from processor.bench_startup import COMMANDS, StartupBenchError, bench_startup
    from processor.cli import _fail, err, out
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
    from processor.bench_gpu import main

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
    from processor.cli import _fail, out
    from processor.gpu_bundle import BundleError, build_bundle

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
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report to this JSON file.")
    ] = None,
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
    from processor.bench import machine
    from processor.bench_faces import bench_faces, parse_finders, parse_size
    from processor.cli import _config, _fail, err, out
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
