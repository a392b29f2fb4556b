"""``train`` and ``eval``: fit detectors on labelled clips and measure them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

# typer carries its own copy of click (since 0.2x); its errors are that copy's classes.
from processor.cli.common import (
    ConfigOpt,
    _code_version,
    _config,
    _fail,
    _set_up,
    _with_detectors,
    err,
    out,
)
from processor.config import Config
from processor.logs import setup_logging
from processor.progress import Steps

if TYPE_CHECKING:
    from processor.pipeline import Pipeline
    from processor.verdict import DetectorVote


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

    from detectors import registry
    from detectors import training as tr
    from detectors.weights import WeightsError

    cfg = _config(config)
    setup_logging("WARNING", "text")
    cls = registry.find(detector)
    trainer = registry.trainer(detector)
    if cls is None or trainer is None:
        _fail(f"{detector!r} cannot be trained; these can: {', '.join(registry.trainable())}")
    if cross_validate and not trainer.cross_validates:
        _fail(f"--cross-validate: {detector} has no leave-one-group-out recipe")
    # The configured feature settings, with the weights and operating point left out: features
    # do not depend on them, and training must not need an existing checkpoint.
    section = trainer.section(
        {
            k: v
            for k, v in cfg.detectors.get(detector, {}).items()
            if k not in ("weights", "threshold", "uncertain_band", "manifest")
        }
    )
    try:
        det_cfg = cls.config_class.model_validate(section)
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
        + trainer.command_options(params, l2)
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
    extractor = cls(det_cfg)
    pipeline, cache = _feature_source(cfg, extractor, cache_dir)
    try:
        prepare = trainer.feature_maker(extractor, _preparer(pipeline, detector))
    except WeightsError as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    with Steps(err) as steps:
        task = steps.add("features", total=len(clips))
        features = tr.extract_features(clips, cache, prepare, workers, task.advance)
        fit = steps.add("training", total=epochs) if trainer.by_epochs else None

        def on_epoch(record: dict[str, float]) -> None:
            if fit is not None:
                fit.update(
                    completed=int(record["epoch"]),
                    description=f"training (val loss {record['val_loss']:.3f})",
                )

        job = tr.TrainJob(
            clips, splits, features, det_cfg, params, settings, l2, state_dir, resume, on_epoch
        )
        try:
            if cross_validate:
                pooled = trainer.cross_validate(job)
                out.print(
                    f"leave one group out: {pooled['groups']} groups, {pooled['unusable']} "
                    "clips without usable cues left out"
                )
                _print_reports({"every clip, its group held out": pooled})
                return
            report = trainer.train(job)
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


def _feature_source(cfg: Config, detector: Any, cache_dir: Path) -> tuple[Any, Any]:
    """The daemon's pipeline for one detector, and the feature cache for its settings."""

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
    pipeline = _set_up(cfg, keys)
    with Steps(err) as steps:
        task = steps.add("evaluating", total=len(clips))
        outcomes = _evaluate(cfg, pipeline, clips, None if no_cache else cache_dir, task.advance)
    report = _eval_report(cfg, pipeline.detectors, clips, outcomes, resamples, seed)
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
    pipeline: Pipeline,
    clips: list[Any],
    cache_dir: Path | None,
    advance: Any,
) -> list[dict[str, DetectorVote]]:
    """Each clip's vote per detector, through ``Pipeline.prepare`` and
    ``Pipeline.predict`` in batches as the worker runs them. With a single cacheable detector,
    its cached prepared inputs stand in for ``prepare`` (they are its output for these bytes)."""
    from detectors import registry
    from detectors.base import DetectorResult
    from detectors.errors import DetectorError
    from detectors.training import Failed, FeatureCache, Features
    from processor.pipeline import PreparedVideo
    from processor.verdict import DetectorVote

    built = pipeline.detectors
    keys = list(built)
    cache: FeatureCache | None = None
    # A trainer's cached features stand in for prepare only where they are the detector's own
    # prepared inputs (SigLIP's cache holds embeddings).
    trainer = registry.trainer(keys[0]) if len(keys) == 1 else None
    if cache_dir is not None and trainer is not None and trainer.features_are_inputs:
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
