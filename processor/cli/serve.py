"""The daemon and its upkeep: ``run``, ``config check``, ``db``, ``detectors``, ``gc``,
``workers``."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

# typer carries its own copy of click (since 0.2x); its errors are that copy's classes.
from processor.cli.common import (
    ConfigOpt,
    _config,
    _fail,
    _queue,
    err,
    log,
    out,
)
from processor.config import Config, ConfigError
from processor.logs import setup_logging
from storage.errors import StorageError

if TYPE_CHECKING:
    pass


db_app = typer.Typer(no_args_is_help=True, help="Database maintenance.")
config_app = typer.Typer(no_args_is_help=True, help="Configuration.")


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
