"""Workers on many hosts: declaring silent ones dead, noticing jobs nobody can run, and which GPU
a worker started from the systemd template uses.

Every worker heartbeats every ``queue.heartbeat_s``; any process that finds one silent for its
``dead_after_s`` ends its leases (``JobQueue.expire_dead``), so its jobs come back within
seconds instead of when their leases run out. Each worker does this in its claim loop, and the
ingest side does it in its sweep, so it happens even while every worker is busy or gone.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor

from processor.config import QueueConfig
from storage.errors import StorageError
from storage.queue import DeadWorker, JobQueue

log = logging.getLogger(__name__)

# An instance name of drishtiksha-worker@.service: a GPU index, then optionally "-" and a name
# for another worker on the same GPU ("0", "0-b"). CUDA's own values (lists, GPU-/MIG- UUIDs)
# never start with digits and a dash.
_INSTANCE = re.compile(r"(\d+)-[^,]+")


def gpu_of_instance(visible: str) -> str:
    """The CUDA_VISIBLE_DEVICES value for ``visible`` as the worker template sets it from its
    instance name: "0-b" (a second worker on GPU 0) becomes "0"; anything else is CUDA's own
    and stays as it is."""
    match = _INSTANCE.fullmatch(visible.strip())
    return match.group(1) if match else visible


def pin_gpu(environ: MutableMapping[str, str]) -> str | None:
    """Rewrite an instance-style CUDA_VISIBLE_DEVICES in ``environ`` (see ``gpu_of_instance``)
    before anything initialises CUDA; returns the value in force (None: not set)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    environ["CUDA_VISIBLE_DEVICES"] = gpu_of_instance(visible)
    return environ["CUDA_VISIBLE_DEVICES"]


def reap(queue: JobQueue, qc: QueueConfig, *, spare: str | None = None) -> list[DeadWorker]:
    """Declare dead the workers silent past their ``dead_after_s`` (``queue.lease_s`` for rows
    of workers that record none), logging each; ``spare`` is the caller's own id."""
    dead = queue.expire_dead(qc.lease_s, spare=spare)
    for worker in dead:
        log.warning(
            "worker %s (pid %d on %s) is dead: no heartbeat since %s; %d of its jobs can be "
            "claimed now",
            worker.id,
            worker.pid,
            worker.host,
            worker.heartbeat_at.isoformat(timespec="seconds"),
            worker.leases_ended,
        )
    return dead


def describe_stranded(stranded: dict[str, int]) -> str:
    """One line for queued jobs no live worker can run, by detector set."""
    parts = [
        f"{n} needing {keys.replace(',', ' + ') or '(no detectors)'}"
        for keys, n in stranded.items()
    ]
    return "queued jobs no live worker can run (none has loaded all their detectors): " + (
        "; ".join(parts)
    )


async def watch_forever(queue: JobQueue, qc: QueueConfig) -> None:
    """Every ``queue.heartbeat_s``, declare silent workers dead; every ``queue.finalize_sweep_s``,
    warn about queued jobs no live worker can run, once per change. On its own thread, so that
    hashing on the default pool never holds it up."""
    pool = ThreadPoolExecutor(1, "fleet")
    loop = asyncio.get_running_loop()
    warned: dict[str, int] = {}
    next_check = time.monotonic() + qc.finalize_sweep_s
    try:
        while True:
            await asyncio.sleep(qc.heartbeat_s)
            try:
                await loop.run_in_executor(pool, lambda: reap(queue, qc))
                if time.monotonic() < next_check:
                    continue
                next_check = time.monotonic() + qc.finalize_sweep_s
                stranded = await loop.run_in_executor(pool, queue.stranded, qc.lease_s)
            except StorageError as exc:
                log.warning("looking for dead workers failed, will retry: %s", exc)
                continue
            except Exception:
                log.exception("looking for dead workers failed, will retry")
                continue
            if stranded and set(stranded) != set(warned):
                log.warning("%s", describe_stranded(stranded))
            warned = stranded
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
