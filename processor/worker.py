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
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from detectors.base import DetectorResult
from detectors.errors import DetectorError, MediaError
from processor import fleet
from processor.blobs import StoreUnavailable, Unreachable, drop_scratch, scratch_dir
from processor.config import BatchingConfig, FusionConfig, QueueConfig
from processor.gc import prune_scratch
from processor.lifecycle import Lifecycle
from processor.pipeline import Outcome, Pipeline, PreparedVideo
from processor.verdict import overall_verdict
from storage.errors import StorageError
from storage.queue import Claimed, JobQueue, NewResult, WorkerView

log = logging.getLogger(__name__)

T = TypeVar("T")

# After finding a job's bytes out of its reach, a worker claims nothing for this long: another
# worker may take the job meanwhile, and a misconfigured one does not spin on it.
UNREACHABLE_PAUSE_S = 30.0


def _suffix(job: Claimed) -> str:
    """The original file's extension (sniffing by name, as c2pa's reader does, needs it)."""
    suffix = Path(job.source_ref.split("?", 1)[0]).suffix
    return suffix if suffix[1:].isalnum() and len(suffix) <= 9 else ""


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


def capabilities(pipeline: Pipeline, device: str | None) -> dict[str, Any]:
    """What a worker can run, published with every heartbeat: each loaded detector's version
    and weights, the device, and this package's version."""
    try:
        version = metadata.version("drishtiksha")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "detectors": {
            key: {
                "version": det.version,
                "weights_id": det.weights_id,
                "num_frames": det.num_frames,
            }
            for key, det in pipeline.detectors.items()
        },
        "device": device,
        "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "version": version,
    }


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
        *,
        device: str | None = None,
    ) -> None:
        self.queue = queue
        self.pipeline = pipeline
        self.lifecycle = lifecycle
        self.batching = batching
        self.qc = queue_config
        self.worker_id = worker_id
        self.fusion = fusion
        self.device = device
        self._capabilities: dict[str, Any] = {}  # filled in when it starts
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
        # Heartbeats and lease renewals each have a thread of their own: queued behind hashing
        # or rendering on the shared pool, a live worker would be declared dead.
        self._beat_pool = ThreadPoolExecutor(1, "heartbeat")
        self._lease_pool = ThreadPoolExecutor(1, "lease")
        self._renew_now = asyncio.Event()
        self._next_reap = 0.0  # time.monotonic() of the claim loop's next look for the dead
        # Why this worker cannot read jobs' bytes (its own setup), until it reads some again;
        # while set it is not ready, and it claims nothing until ``_pause_until``.
        self.problem: str | None = None
        # The name this host goes by in the queue (``host_name``; the machine's by default).
        self._host = lifecycle.host_name or socket.gethostname()
        self._pause_until = 0.0

    def alive(self) -> bool:
        """The claim, batch, lease and heartbeat loops all run, and a heartbeat was recorded
        within ``queue.dead_after_s`` (past that, other processes declare this worker dead)."""
        beat = self.last_heartbeat
        return (
            bool(self._loops)
            and not any(task.done() for task in self._loops)
            and beat is not None
            and time.monotonic() - beat < self.qc.dead_after_s
        )

    def _drop(self, job_id: str) -> None:
        """Forget a job this worker no longer holds, and the bytes it fetched for it."""
        self.held.pop(job_id, None)
        if self.lifecycle.blobs is not None:
            drop_scratch(self.lifecycle.blobs_config, job_id)
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
        self._capabilities = capabilities(self.pipeline, self.device)
        await self._heartbeat()
        try:
            await self._io(self._reclaim_from_the_dead)
            await self._io(self._prune_scratch)
        except StorageError as exc:
            log.warning("could not look for dead workers on this host: %s", exc)
        loops = self._loops = [
            asyncio.create_task(self._claim_loop(stop), name="claim"),
            asyncio.create_task(self._batch_loop(), name="batch"),
            asyncio.create_task(self._lease_loop(), name="lease"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
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
                # On the heartbeat's thread, after any beat still in flight, which would
                # otherwise mark the worker alive again.
                await asyncio.get_running_loop().run_in_executor(
                    self._beat_pool, self.queue.worker_stopped, self.worker_id
                )
            for pool in (self._prepare_pool, self._device_pool, self._beat_pool, self._lease_pool):
                pool.shutdown(wait=False, cancel_futures=True)

    def _prune_scratch(self) -> None:
        """Bytes fetched by a worker of this host that died mid-job are nobody's now."""
        if self.lifecycle.blobs is not None:
            for item in prune_scratch(self.lifecycle.blobs_config.scratch, self.queue):
                log.info("removed %s: %s", item.path, item.why)

    def _reclaim_from_the_dead(self) -> None:
        """After a crash (kill -9, out of memory) the restarted worker would otherwise wait a
        whole lease before redoing the dead one's jobs."""
        for dead in gone_here(self.queue.workers(self.qc.lease_s), self._host):
            ended = self.queue.expire_leases(dead.id)
            log.warning(
                "worker %s (pid %d on this host) is gone; %d of its jobs can be claimed now",
                dead.id,
                dead.pid,
                ended,
            )

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        capacity = self.batching.max_videos * 2
        loaded = sorted(self.pipeline.detectors)
        while not stop.is_set():
            await self._reap()
            # A solo job (its last worker died with others held) runs with nothing beside it.
            solo = any(job.solo for job in self.held.values())
            paused = time.monotonic() < self._pause_until
            free = 0 if solo or paused else capacity - len(self.held)
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
                            detectors=loaded,
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

    async def _reap(self) -> None:
        """At most once per heartbeat, declare silent workers dead so that their jobs can be
        claimed now."""
        if time.monotonic() < self._next_reap:
            return
        self._next_reap = time.monotonic() + self.qc.heartbeat_s
        try:
            await self._io(functools.partial(fleet.reap, self.queue, self.qc, spare=self.worker_id))
        except StorageError as exc:
            log.warning("looking for dead workers failed, will retry: %s", exc)

    async def _heartbeat(self) -> None:
        beat = functools.partial(
            self.queue.heartbeat,
            self.worker_id,
            self._host,
            os.getpid(),
            "worker",
            # A copy: the event loop may change the document while the beat thread writes it.
            capabilities=dict(self._capabilities),
            dead_after_s=self.qc.dead_after_s,
        )
        started = time.monotonic()
        try:
            revived = await asyncio.get_running_loop().run_in_executor(self._beat_pool, beat)
        except StorageError as exc:
            log.warning("heartbeat failed, will retry: %s", exc)
            return
        self.last_heartbeat = started
        if revived:
            # Silent too long (paused, cut off from the database): another process declared it
            # dead and ended its leases. It goes on; its held jobs are dropped at once.
            log.warning(
                "this worker was declared dead after a silence of over %g s; its jobs are "
                "lost to other workers",
                self.qc.dead_after_s,
            )
            self._renew_now.set()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.qc.heartbeat_s)
            await self._heartbeat()

    async def _lease_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), self.qc.lease_s / 3)
            self._renew_now.clear()
            ids = list(self.held)
            if not ids:
                continue
            try:
                still = await loop.run_in_executor(
                    self._lease_pool, self.queue.renew, self.worker_id, ids, self.qc.lease_s
                )
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
            loop = asyncio.get_running_loop()
            path = await loop.run_in_executor(self._prepare_pool, self._bytes_of, job)
            self._set_problem(None)
            prepared = await loop.run_in_executor(
                self._prepare_pool, self.pipeline.prepare, path, remaining
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
        except (Unreachable, StoreUnavailable) as exc:
            await self._unreachable(job, exc)
        except DetectorError as exc:
            await self._failed(job, exc)
        except StorageError as exc:
            await self._failed(job, exc)
        except Exception as exc:
            log.exception("job %s: unexpected error while preparing", job.id)
            await self._failed(job, DetectorError(f"internal error: {type(exc).__name__}: {exc}"))

    def _bytes_of(self, job: Claimed) -> Path:
        """Where this worker reads the job's bytes: the file itself when the job came from this
        host, else a copy fetched from the object store into scratch (sha256 checked)."""
        local = Path(job.work_path) if job.work_path else None
        # The file itself wherever it can be seen (this host's, or a folder shared with its
        # host); a missing file of this host's own job fails as a broken video would.
        if local is not None and (
            local.exists() or (job.blob_url is None and self.lifecycle.mine(job.origin))
        ):
            return local
        if job.blob_url is not None:
            blobs = self.lifecycle.blobs
            if blobs is None:
                raise Unreachable(
                    f"its bytes are at {job.blob_url} and this worker has blobs.kind local; "
                    "give every host the same blobs section"
                )
            dest = scratch_dir(self.lifecycle.blobs_config, job.id) / ("video" + _suffix(job))
            try:
                blobs.fetch(job.blob_url, job.blob_etag, job.video_sha256, dest)
            except OSError as exc:
                # A full or unwritable scratch disk is this host's problem, not the video's.
                raise Unreachable(f"cannot write to blobs.scratch: {exc}") from exc
            return dest
        if local is None:
            raise MediaError("the job has no file to read")
        raise Unreachable(
            f"its file {local} is on host {job.origin}, which this worker cannot read; "
            "use blobs.kind s3 on every host (or run workers on that host)"
        )

    def _set_problem(self, problem: str | None) -> None:
        self.problem = problem
        if problem is None:
            self._capabilities.pop("problem", None)
        else:
            self._capabilities["problem"] = problem

    async def _unreachable(self, job: Claimed, exc: Unreachable | StoreUnavailable) -> None:
        """The job's bytes are out of this worker's reach through no fault of the video (its
        setup, or the store failing): give the job back uncharged for a worker that can read
        them, and stop claiming a while. A store that stays down holds jobs queued; it never
        fails good videos."""
        log.error(
            "job %s: this worker cannot read its bytes: %s; released for another worker "
            "(attempt not counted), no claims for %.0f s",
            job.id,
            exc,
            UNREACHABLE_PAUSE_S,
        )
        self._set_problem(str(exc))
        self._pause_until = time.monotonic() + UNREACHABLE_PAUSE_S
        await self._release([job.id])

    async def _release(self, job_ids: list[str]) -> None:
        """Give jobs back to the queue with their attempt, and forget them."""
        try:
            await self._io(self.queue.release, self.worker_id, job_ids)
        except StorageError:
            log.exception("could not release %s; their leases will run out", ", ".join(job_ids))
        for job_id in job_ids:
            self._drop(job_id)

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
                try:
                    await self._run_batch(batch)
                except Exception:
                    # A bug must not stop the loop with jobs held and renewed forever: they go
                    # back to the queue, and the worker carries on.
                    log.exception(
                        "batch of %d failed unexpectedly; its jobs are released", len(batch)
                    )
                    await self._release([item.job.id for item in batch])

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
        code, message, retryable = exc.code, str(exc), exc.retryable
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
        except Exception:
            # The job row is final; the finalize sweep of the job's host tries again (the move,
            # the verdict's write-back to the object store). Nothing here may end the loops.
            log.exception("job %s: could not finalize it; the sweep will try again", job_id)
