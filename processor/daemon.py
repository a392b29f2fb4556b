"""Wiring: configuration -> database, detectors, ingest, worker and API in one process."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy import Engine

from processor import systemd
from processor.api.app import init_app
from processor.api.app import runner as api_runner
from processor.blobs import open_blobs
from processor.config import Config
from processor.gc import gc_forever
from processor.ingest.folder import FolderWatcher
from processor.ingest.sqs import SqsSource
from processor.lifecycle import Lifecycle

# Part of the daemon's interface: what starts a worker builds and sets up detectors with these.
from processor.loader import build_detectors as build_detectors
from processor.loader import decode_limits as decode_limits
from processor.loader import load_pipeline as load_pipeline
from processor.loader import resolve_device as resolve_device
from processor.webhooks import Dispatcher
from processor.worker import Worker
from storage.db import make_engine, upgrade
from storage.queue import JobQueue

log = logging.getLogger(__name__)

ROLES = ("ingest", "worker", "api")
# "all", one of ROLES, or several joined by commas ("ingest,api").
Role = str


def parse_roles(role: Role) -> frozenset[str]:
    """The parts a process runs; ``ValueError`` names what is wrong with ``role``."""
    parts = {part.strip() for part in role.split(",")}
    if parts == {"all"}:
        return frozenset(ROLES)
    unknown = sorted(parts - set(ROLES))
    if unknown:
        raise ValueError(
            f"--role must be all, or some of {', '.join(ROLES)} joined by commas; "
            f"{role!r} names {', '.join(map(repr, unknown))}"
        )
    return frozenset(parts)


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
        roles = parse_roles(self.role)
        engine = open_database(self.config)
        queue = JobQueue(engine)
        worker: Worker | None = None
        blobs = open_blobs(self.config.blobs)
        lifecycle = Lifecycle.from_config(self.config, queue, blobs)
        runner: web.AppRunner | None = None
        watchers: list[FolderWatcher | SqsSource] = []
        stop_tasks: list[asyncio.Task[None]] = []
        try:
            if "worker" in roles:
                pipeline = await asyncio.to_thread(load_pipeline, self.config)
                worker_id = f"{self.config.host_name}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
                worker = Worker(
                    queue,
                    pipeline,
                    lifecycle,
                    self.config.batching,
                    self.config.queue,
                    worker_id,
                    self.config.fusion,
                    device=resolve_device(self.config.device),
                )
                lifecycle.on_enqueued = _threadsafe_setter(worker.wake)
            if "ingest" in roles:
                lifecycle.prepare_folders()
                await lifecycle.recover()
            if roles & {"ingest", "api"}:
                # The files of this host's jobs (inbox files, uploads) are placed here, also
                # for jobs that a worker on another host ended.
                stop_tasks.append(asyncio.create_task(lifecycle.sweep_forever()))
            if "ingest" in roles:
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
                        blobs=blobs,
                        host_name=self.config.host_name,
                    )
                    await sqs.start()
                    watchers.append(sqs)
            if "api" in roles and self.config.api.enabled:
                runner = api_runner(
                    init_app(self.config, queue, engine, worker, lifecycle=lifecycle),
                    self.config.api,
                )
                await runner.setup()
                site = web.TCPSite(runner, self.config.api.host, self.config.api.port)
                await site.start()
                log.info("API on http://%s:%d", self.config.api.host, self.config.api.port)
            # Every role sends: an event recorded by a process of one role (a cancel through
            # the API, a review) must not wait for a worker to start somewhere.
            if self.config.webhooks.targets:
                dispatcher = Dispatcher(queue, self.config.webhooks)
                stop_tasks.append(asyncio.create_task(dispatcher.run(stop)))
            stop_tasks.append(asyncio.create_task(gc_forever(self.config, queue)))
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
            lifecycle.close()
            for task in stop_tasks:
                task.cancel()
            await asyncio.gather(*stop_tasks, return_exceptions=True)
            for source in watchers:
                await source.stop()
            if runner is not None:
                await runner.cleanup()
            if blobs is not None:
                blobs.close()
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
