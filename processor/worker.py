"""The batching worker: claim jobs under leases, prepare videos on CPU threads, gather prepared
videos into batches (up to ``max_videos`` or until ``max_wait_s``, as LitServe collates
requests), run the detectors, and record results with a lease-conditional update."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from detectors.base import DetectorResult
from detectors.errors import DetectorError, MediaError
from processor.config import BatchingConfig, FusionConfig, QueueConfig
from processor.lifecycle import Lifecycle
from processor.pipeline import Outcome, Pipeline, PreparedVideo
from processor.verdict import overall_verdict
from storage.errors import StorageError
from storage.queue import Claimed, JobQueue, NewResult, WorkerView

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Ready:
    job: Claimed
    prepared: PreparedVideo
    cached: list[NewResult]


def _new_result(key: str, pipeline: Pipeline, outcome: Outcome, elapsed: float) -> NewResult:
    det = pipeline.detectors[key]
    if isinstance(outcome, DetectorResult):
        return NewResult(
            detector=key,
            version=det.version,
            weights_id=det.weights_id,
            label=outcome.label.value,
            fake_probability=outcome.fake_probability,
            threshold=outcome.threshold,
            frame_scores=[
                {"t": round(s.timestamp, 3), "p": round(s.fake_probability, 5)}
                for s in outcome.frame_scores
            ],
            details=outcome.details,
            elapsed_s=elapsed,
        )
    # A detector that cannot judge this video abstains with its reason; the video itself was
    # readable, so the other detectors' verdicts still stand.
    return NewResult(
        detector=key,
        version=det.version,
        weights_id=det.weights_id,
        label="ABSTAIN",
        fake_probability=None,
        threshold=det.threshold,
        frame_scores=[],
        details={"reason": outcome.code, "message": outcome.message},
        elapsed_s=elapsed,
    )


def gone_here(workers: list[WorkerView], host: str) -> list[WorkerView]:
    """Workers on ``host`` that never stopped cleanly and whose process no longer exists. (In
    another PID namespace under the same host name a live worker would look gone: it then only
    loses its leases, and its completions are refused, so work is redone, never recorded
    twice.)"""
    return [w for w in workers if w.host == host and w.stopped_at is None and not _running(w.pid)]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class Worker:
    """One worker process's job loop."""

    def __init__(
        self,
        queue: JobQueue,
        pipeline: Pipeline,
        lifecycle: Lifecycle,
        batching: BatchingConfig,
        queue_config: QueueConfig,
        worker_id: str,
        fusion: FusionConfig,
    ) -> None:
        self.queue = queue
        self.pipeline = pipeline
        self.lifecycle = lifecycle
        self.batching = batching
        self.qc = queue_config
        self.worker_id = worker_id
        self.fusion = fusion
        self.wake = asyncio.Event()
        self._drained = asyncio.Event()
        self.held: dict[str, Claimed] = {}
        self.batches_run = 0
        self.last_heartbeat: float | None = None  # time.monotonic() of the last recorded beat
        self._loops: list[asyncio.Task[None]] = []
        self._ready: asyncio.Queue[_Ready] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._prepare_pool = ThreadPoolExecutor(batching.prepare_workers, "prepare")
        # One device thread: batches run one after another, so the device is never shared.
        self._device_pool = ThreadPoolExecutor(1, "device")

    def alive(self) -> bool:
        """The claim, batch and lease loops all run and the last heartbeat is within a lease."""
        beat = self.last_heartbeat
        return (
            bool(self._loops)
            and not any(task.done() for task in self._loops)
            and beat is not None
            and time.monotonic() - beat < self.qc.lease_s
        )

    def _drop(self, job_id: str) -> None:
        """Forget a job this worker no longer holds."""
        self.held.pop(job_id, None)
        if not self.held:
            self._drained.set()

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then drain for the grace period and release the rest."""
        await self._heartbeat()
        try:
            await self._io(self._reclaim_from_the_dead)
        except StorageError as exc:
            log.warning("could not look for dead workers on this host: %s", exc)
        loops = self._loops = [
            asyncio.create_task(self._claim_loop(stop), name="claim"),
            asyncio.create_task(self._batch_loop(), name="batch"),
            asyncio.create_task(self._lease_loop(), name="lease"),
        ]
        try:
            await stop.wait()
            self.wake.set()
            await loops[0]
            if self.held:
                self._drained.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drained.wait(), self.qc.shutdown_grace_s)
        finally:
            for task in [*loops, *self._tasks]:
                task.cancel()
            await asyncio.gather(*loops, *self._tasks, return_exceptions=True)
            if self.held:
                log.info("releasing %d unfinished jobs", len(self.held))
                with contextlib.suppress(StorageError):
                    await self._io(self.queue.release, self.worker_id, list(self.held))
                self.held.clear()
            with contextlib.suppress(StorageError):
                await self._io(self.queue.worker_stopped, self.worker_id)
            self._prepare_pool.shutdown(wait=False, cancel_futures=True)
            self._device_pool.shutdown(wait=False, cancel_futures=True)

    def _reclaim_from_the_dead(self) -> None:
        """After a crash (kill -9, out of memory) the restarted worker would otherwise wait a
        whole lease before redoing the dead one's jobs."""
        for dead in gone_here(self.queue.workers(self.qc.lease_s), socket.gethostname()):
            ended = self.queue.expire_leases(dead.id)
            log.warning(
                "worker %s (pid %d on this host) is gone; %d of its jobs can be claimed now",
                dead.id,
                dead.pid,
                ended,
            )

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        capacity = self.batching.max_videos * 2
        while not stop.is_set():
            # A solo job (its last worker died with others held) runs with nothing beside it.
            solo = any(job.solo for job in self.held.values())
            free = 0 if solo else capacity - len(self.held)
            claimed: list[Claimed] = []
            if free > 0:
                try:
                    claimed = await self._io(
                        functools.partial(
                            self.queue.claim,
                            self.worker_id,
                            free,
                            self.qc.lease_s,
                            busy=bool(self.held),
                        )
                    )
                except StorageError as exc:
                    log.warning("claim failed, will retry: %s", exc)
            for job in claimed:
                self.held[job.id] = job
                log.info(
                    "job %s running (attempt %d%s): %s",
                    job.id,
                    job.attempts,
                    ", alone after a worker was lost" if job.solo else "",
                    job.source_ref,
                )
                self._spawn(self._prepare(job))
            if not claimed or len(claimed) == free:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.qc.poll_s)

    async def _heartbeat(self) -> None:
        try:
            await self._io(
                self.queue.heartbeat, self.worker_id, socket.gethostname(), os.getpid(), "worker"
            )
            self.last_heartbeat = time.monotonic()
        except StorageError as exc:
            log.warning("heartbeat failed, will retry: %s", exc)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.qc.lease_s / 3)
            await self._heartbeat()
            ids = list(self.held)
            if not ids:
                continue
            try:
                still = await self._io(self.queue.renew, self.worker_id, ids, self.qc.lease_s)
            except StorageError as exc:
                log.warning("lease renewal failed, will retry: %s", exc)
                continue
            for job_id in set(ids) - still:
                log.warning("job %s: lease lost; another worker will finish it", job_id)
                self._drop(job_id)

    async def _prepare(self, job: Claimed) -> None:
        try:
            cached, remaining = await self._io(self._cached_results, job)
            if not remaining:
                await self._complete(job, cached)
                return
            if job.work_path is None:
                raise MediaError("the job has no file to read")
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(
                self._prepare_pool, self.pipeline.prepare, Path(job.work_path), remaining
            )
            info = prepared.info
            await self._io(
                lambda: self.queue.update_video(
                    job.video_sha256,
                    container=info.container,
                    codec=info.codec,
                    width=info.width,
                    height=info.height,
                    fps=info.fps,
                    duration_s=info.duration_s,
                )
            )
            await self._ready.put(_Ready(job, prepared, cached))
        except DetectorError as exc:
            await self._failed(job, exc)
        except StorageError as exc:
            await self._failed(job, exc)
        except Exception as exc:
            log.exception("job %s: unexpected error while preparing", job.id)
            await self._failed(job, DetectorError(f"internal error: {type(exc).__name__}: {exc}"))

    def _cached_results(self, job: Claimed) -> tuple[list[NewResult], list[str]]:
        """Reuse stored results for the same bytes, detector version and weights."""
        cached: list[NewResult] = []
        remaining: list[str] = []
        for key in job.detectors:
            det = self.pipeline.detectors[key]
            hit = self.queue.find_cached(
                job.video_sha256, key, det.version, det.weights_id, det.final_abstentions
            )
            if hit is None:
                remaining.append(key)
                continue
            cached.append(
                NewResult(
                    detector=key,
                    version=hit.version,
                    weights_id=hit.weights_id,
                    label=hit.label,
                    fake_probability=hit.fake_probability,
                    threshold=hit.threshold,
                    frame_scores=hit.frame_scores,
                    details=hit.details,
                    elapsed_s=0.0,
                    cached_from_job=hit.cached_from_job or hit.job_id,
                )
            )
        return cached, remaining

    async def _batch_loop(self) -> None:
        while True:
            batch = [await self._ready.get()]
            deadline = time.monotonic() + self.batching.max_wait_s
            while len(batch) < self.batching.max_videos:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._ready.get(), timeout))
                except TimeoutError:
                    break
            batch = [item for item in batch if item.job.id in self.held]
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Ready]) -> None:
        loop = asyncio.get_running_loop()
        predicted = await loop.run_in_executor(
            self._device_pool, self.pipeline.predict, [item.prepared for item in batch]
        )
        self.batches_run += 1
        log.debug("batch of %d videos done", len(batch))
        for item, pred in zip(batch, predicted, strict=True):
            transient = [
                o for o in pred.outcomes.values() if isinstance(o, DetectorError) and o.retryable
            ]
            if transient:
                await self._failed(item.job, transient[0])
                continue
            results = item.cached + [
                _new_result(key, self.pipeline, outcome, pred.elapsed_s.get(key, 0.0))
                for key, outcome in pred.outcomes.items()
            ]
            await self._complete(item.job, results)

    async def _complete(self, job: Claimed, results: list[NewResult]) -> None:
        try:
            verdict = overall_verdict(results, self.fusion)
            ok = await self._io(self.queue.complete, job.id, self.worker_id, results, verdict)
        except StorageError as exc:
            await self._failed(job, exc)
            return
        self._drop(job.id)
        if not ok:
            log.warning("job %s: lease lost before completion; result discarded", job.id)
            return
        await self._finalize(job.id)
        self.wake.set()

    async def _failed(self, job: Claimed, exc: DetectorError | StorageError) -> None:
        code = getattr(exc, "code", "storage_busy")
        message = str(exc)
        retryable = getattr(exc, "retryable", True)
        try:
            if retryable:
                delay = self.qc.retry_base_s * 2 ** (job.attempts - 1)
                ok = await self._io(
                    self.queue.retry_later, job.id, self.worker_id, code, message, delay
                )
                log.warning("job %s: %s (%s); retry in %.0f s", job.id, code, message, delay)
            else:
                ok = await self._io(self.queue.fail, job.id, self.worker_id, code, message)
                log.warning("job %s failed: %s: %s", job.id, code, message)
        except StorageError:
            log.exception("job %s: could not record the failure; the lease will expire", job.id)
            self._drop(job.id)
            return
        self._drop(job.id)
        if ok:
            await self._finalize(job.id)

    async def _finalize(self, job_id: str) -> None:
        view = await self._io(self.queue.get, job_id)
        if view is None or view.state.value in ("queued", "running"):
            return
        try:
            await self._io(self.lifecycle.finalize, view)
        except (OSError, StorageError):
            # The job row is final; the finalize sweep retries the file move.
            log.exception("job %s: could not move its file", job_id)
