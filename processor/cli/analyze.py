"""``analyze``: judge files now, in this process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

# typer carries its own copy of click (since 0.2x); its errors are that copy's classes.
from processor.cli.common import (
    ConfigOpt,
    _config,
    _set_up,
    _video_files,
    _with_detectors,
    err,
    out,
)
from processor.logs import setup_logging
from processor.progress import Steps

if TYPE_CHECKING:
    pass


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
    cfg = _config(config)
    files = _video_files(paths)
    setup_logging("WARNING", "text")
    cfg, keys = _with_detectors(cfg, detectors)
    pipeline = _set_up(cfg, keys)
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
