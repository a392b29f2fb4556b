"""Prometheus metrics for ``/metrics``.

Job counts, queue depth, the oldest queued job and webhook deliveries not yet delivered come from
the database at scrape time, so they are true for every process sharing the queue. Detector
latencies, verdicts and failures are counted from the jobs that finished since this process
started, read back from the database at each scrape (the worker may be another process). Batch
sizes can only be seen where the batches run: in a process with a worker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from processor.pipeline import Pipeline, Predicted, PreparedVideo
from storage.deliveries import Deliveries
from storage.errors import StorageError
from storage.queue import JobQueue, JobState, JobView

# A job's finish time is taken in Python just before its transaction commits, so a job can
# become visible with a finish time slightly in the past; each scrape looks back this far and
# skips the jobs it has already counted.
_LOOK_BACK = dt.timedelta(seconds=60)
_PAGE = 500
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_FINAL = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class ApiMetrics:
    """The metric families of one API process, in their own registry."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.deliveries = Deliveries(queue)
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "drishtiksha_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "drishtiksha_http_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            registry=r,
        )
        self.uploads_in_progress = Gauge(
            "drishtiksha_uploads_in_progress", "Uploads being received now.", registry=r
        )
        self.database_up = Gauge(
            "drishtiksha_database_up", "1 when the last scrape could read the database.", registry=r
        )
        self.jobs = Gauge(
            "drishtiksha_jobs", "Jobs in the database, by state.", ["state"], registry=r
        )
        self.queue_depth = Gauge("drishtiksha_queue_depth", "Jobs waiting to run.", registry=r)
        self.webhook_deliveries = Gauge(
            "drishtiksha_webhook_deliveries",
            "Webhook deliveries not delivered yet, by state: pending (to be tried again) or "
            "dead (failed for the whole retry period, parked until sent again by hand).",
            ["state"],
            registry=r,
        )
        self.oldest_queued = Gauge(
            "drishtiksha_queue_oldest_age_seconds",
            "Age of the oldest job waiting to run (0 when none waits).",
            registry=r,
        )
        self.detector_seconds = Histogram(
            "drishtiksha_detector_seconds",
            "Detector time per video (its preparation plus its share of the batch), from the "
            "results of jobs finished since this process started; reused results are left out.",
            ["detector"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.results = Counter(
            "drishtiksha_detector_results",
            "Detector results of jobs finished since this process started, by label.",
            ["detector", "label"],
            registry=r,
        )
        self.verdicts = Counter(
            "drishtiksha_verdicts",
            "Overall verdicts of jobs finished since this process started, by label.",
            ["label"],
            registry=r,
        )
        self.failures = Counter(
            "drishtiksha_job_failures",
            "Jobs failed since this process started, by error code.",
            ["code"],
            registry=r,
        )
        self.batch_size = Histogram(
            "drishtiksha_batch_videos",
            "Videos per inference batch run by this process's worker.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        # Where the next scrape starts reading finished jobs.
        self._scan_from = dt.datetime.now(dt.UTC)
        self._counted: dict[str, dt.datetime] = {}
        self._lock = asyncio.Lock()

    async def render(self) -> bytes:
        """Refresh from the database and return the text exposition."""
        async with self._lock:  # concurrent scrapes must not count the same job twice
            try:
                await asyncio.to_thread(self._refresh)
                self.database_up.set(1)
            except StorageError:
                self.database_up.set(0)
            return generate_latest(self.registry)

    def _refresh(self) -> None:
        counts = self.queue.counts()
        for state, n in counts.items():
            self.jobs.labels(state).set(n)
        self.queue_depth.set(counts.get(JobState.QUEUED.value, 0))
        oldest = self.queue.list(state=JobState.QUEUED, limit=1, oldest_first=True)
        now = dt.datetime.now(dt.UTC)
        age = (now - oldest[0].created_at).total_seconds() if oldest else 0.0
        self.oldest_queued.set(max(0.0, age))
        for delivery_state, n in self.deliveries.counts().items():
            self.webhook_deliveries.labels(delivery_state.value).set(n)
        self._count_finished(now)

    def _count_finished(self, now: dt.datetime) -> None:
        cursor: str | None = None
        while True:
            page = self.queue.list(finished_since=self._scan_from, limit=_PAGE, before=cursor)
            for job in page:
                if job.state in _FINAL and job.id not in self._counted and job.finished_at:
                    self._count(job)
                    self._counted[job.id] = job.finished_at
            if len(page) < _PAGE:
                break
            cursor = page[-1].id
        self._scan_from = now - _LOOK_BACK
        self._counted = {k: t for k, t in self._counted.items() if t >= self._scan_from}

    def _count(self, job: JobView) -> None:
        if job.state is JobState.FAILED:
            self.failures.labels(job.error_code or "unknown").inc()
            return
        if job.state is not JobState.DONE:
            return
        self.verdicts.labels((job.verdict or {}).get("label", "unknown")).inc()
        for r in job.results:
            self.results.labels(r.detector, r.label).inc()
            if r.cached_from_job is None:
                self.detector_seconds.labels(r.detector).observe(r.elapsed_s)

    def observe_batches(self, pipeline: Pipeline) -> Callable[[], None]:
        """Count the size of every batch ``pipeline`` runs; returns the undo.

        The worker offers no hook for its batches, so its pipeline's ``predict`` is wrapped:
        the worker looks the method up on each batch, and the wrapper changes nothing else.
        """
        original = pipeline.predict

        def predict(videos: Sequence[PreparedVideo]) -> list[Predicted]:
            self.batch_size.observe(len(videos))
            return original(videos)

        pipeline.predict = predict  # type: ignore[method-assign]

        def undo() -> None:
            pipeline.predict = original  # type: ignore[method-assign]

        return undo

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_seconds.labels(route).observe(seconds)
