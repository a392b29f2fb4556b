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
