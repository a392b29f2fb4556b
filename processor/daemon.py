"""Wiring: configuration -> database, detectors, ingest, worker and API in one process."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import Engine

from detectors import registry
from detectors.base import Detector
from detectors.frames import DecodeLimits
from processor import systemd
from processor.api import init_app
from processor.api import runner as api_runner
from processor.config import Config, ConfigError, describe_errors
from processor.ingest import FolderWatcher
from processor.lifecycle import Lifecycle
from processor.pipeline import Pipeline
from processor.sqs import SqsSource
from processor.webhooks import Dispatcher
from processor.worker import Worker
from storage.db import make_engine, upgrade
from storage.queue import JobQueue

log = logging.getLogger(__name__)

Role = Literal["all", "ingest", "worker", "api"]


def resolve_device(device: str) -> str:
    """``auto`` means the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device} requested but CUDA is not available")
    return device


def decode_limits(config: Config) -> DecodeLimits:
    """The configured limits in the decoder's terms."""
    lim = config.limits
    return DecodeLimits(
        max_file_bytes=lim.max_file_bytes,
        max_duration_s=lim.max_duration_s,
        max_pixels=lim.max_pixels,
        max_decoded_frames=lim.max_decoded_frames,
    )


def build_detectors(config: Config, keys: list[str]) -> dict[str, Detector[Any]]:
    """Validate each detector's section (errors name the key) and build it, not yet loaded."""
    built: dict[str, Detector[Any]] = {}
    for key in keys:
        try:
            built[key] = registry.build(key, config.detectors[key])
        except ValidationError as exc:
            model = registry.available()[key].config_class
            problems = "; ".join(describe_errors(exc, model, f"detectors.{key}."))
            raise ConfigError(f"invalid detector configuration: {problems}") from exc
        except registry.UnknownDetector as exc:
            raise ConfigError(f"detectors.{key}: {exc}") from exc
    return built


def load_pipeline(config: Config) -> Pipeline:
    """Build and set up every detector the inboxes use, on the configured device."""
    device = resolve_device(config.device)
    if device == "cpu" and config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    detectors = build_detectors(config, config.all_detector_keys())
    for key, det in detectors.items():
        det.setup(device)
        if det.weights_id == "dummy":
            log.warning(
                "detector %s %s runs with weights: dummy (seeded random weights): its verdicts "
                "are meaningless and every one is labelled so",
                key,
                det.version,
            )
        else:
            log.info("detector %s %s on %s, weights %s", key, det.version, device, det.weights_id)
    return Pipeline(detectors, decode_limits(config), config.decode.max_side)


def open_database(config: Config) -> Engine:
    """Engine for the configured URL, migrated to the current schema. On Postgres several hosts
    may start at once; ``upgrade`` serialises them with an advisory lock."""
    engine = make_engine(config.database.url)
    upgrade(engine)
    return engine


@dataclass
class Daemon:
    """The running parts of one process, for a role."""

    config: Config
    role: Role = "all"

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (SIGTERM/SIGINT in ``main``), then shut down in order:
        ingest first, then the worker's grace period, then the API."""
        engine = open_database(self.config)
        queue = JobQueue(engine)
        worker: Worker | None = None
        lifecycle = Lifecycle(
            queue,
            self.config.inboxes,
            self.config.queue,
            webhooks=self.config.webhooks,
            max_file_bytes=self.config.limits.max_file_bytes,
            keep_uploads_bytes=self.config.api.keep_uploads_bytes,
        )
        runner: web.AppRunner | None = None
        watchers: list[FolderWatcher | SqsSource] = []
        stop_tasks: list[asyncio.Task[None]] = []
        try:
            if self.role in ("all", "worker"):
                pipeline = await asyncio.to_thread(load_pipeline, self.config)
                worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
                worker = Worker(
                    queue,
                    pipeline,
                    lifecycle,
                    self.config.batching,
                    self.config.queue,
                    worker_id,
                    self.config.fusion,
                )
                lifecycle.on_enqueued = _threadsafe_setter(worker.wake)
            if self.role in ("all", "ingest"):
                lifecycle.prepare_folders()
                await lifecycle.recover()
                stop_tasks.append(asyncio.create_task(lifecycle.sweep_forever()))
                for inbox in self.config.inboxes:
                    watcher = FolderWatcher(
                        inbox.path,
                        functools.partial(lifecycle.accept, inbox),
                        quiet_s=inbox.quiet_s,
                        rescan_s=inbox.rescan_s,
                        polling=inbox.polling,
                        polling_interval_s=inbox.polling_interval_s,
                        recursive=inbox.recursive,
                        open_write_wait_s=inbox.open_write_wait_s,
                    )
                    await watcher.start()
                    watchers.append(watcher)
                for sqs_config in self.config.sqs:
                    sqs = SqsSource(
                        sqs_config,
                        queue,
                        max_file_bytes=self.config.limits.max_file_bytes,
                        max_attempts=self.config.queue.max_attempts,
                        on_enqueued=lifecycle.on_enqueued,
                    )
                    await sqs.start()
                    watchers.append(sqs)
            if self.role in ("all", "api") and self.config.api.enabled:
                runner = api_runner(init_app(self.config, queue, engine, worker), self.config.api)
                await runner.setup()
                site = web.TCPSite(runner, self.config.api.host, self.config.api.port)
                await site.start()
                log.info("API on http://%s:%d", self.config.api.host, self.config.api.port)
            if self.role in ("all", "worker") and self.config.webhooks.targets:
                dispatcher = Dispatcher(queue, self.config.webhooks)
                stop_tasks.append(asyncio.create_task(dispatcher.run(stop)))
            log.info("drishtiksha ready (role %s)", self.role)
            systemd.notify(f"READY=1\nSTATUS=running, role {self.role}")
            period = systemd.watchdog_period()
            if period is not None:
                watchdog = asyncio.create_task(
                    systemd.watchdog(period, worker.alive if worker else lambda: True)
                )
                stop_tasks.append(watchdog)
            if worker is not None:
                worker_task = asyncio.create_task(worker.run(stop))
                await stop.wait()
                for source in watchers:
                    await source.stop()
                watchers.clear()
                await worker_task
            else:
                await stop.wait()
        finally:
            systemd.notify("STOPPING=1")
            for task in stop_tasks:
                task.cancel()
            await asyncio.gather(*stop_tasks, return_exceptions=True)
            for source in watchers:
                await source.stop()
            if runner is not None:
                await runner.cleanup()
            engine.dispose()
            log.info("drishtiksha stopped")


def _threadsafe_setter(event: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()

    def set_event() -> None:
        loop.call_soon_threadsafe(event.set)

    return set_event


async def serve(config: Config, role: Role) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Daemon(config, role).run(stop)
