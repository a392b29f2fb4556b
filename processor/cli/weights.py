"""``weights``: checkpoints and the weights manifest."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

# typer carries its own copy of click (since 0.2x); its errors are that copy's classes.
from processor.cli.common import (
    ConfigOpt,
    _config,
    err,
    out,
)

if TYPE_CHECKING:
    pass


weights_app = typer.Typer(no_args_is_help=True, help="Checkpoints and the weights manifest.")


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
