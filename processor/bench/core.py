"""Benchmarks run from the CLI (``drishtiksha bench ...``); results go to docs/benchmarks.md."""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from detectors.errors import DetectorError
from detectors.frames import DecodeLimits, decode_by_seeking, decode_sampled
from processor.config import BlobsConfig
from processor.pipeline import Pipeline
from processor.verdict import overall_verdict

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}


def video_files(folder: Path) -> list[Path]:
    """Every video file under ``folder``, sorted for repeatable runs."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)


@dataclass
class DecodeRow:
    video: Path
    sequential_s: float
    seeking_s: float
    frames: int


def machine() -> str:
    """A one-line description of the machine a benchmark ran on."""
    import os

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_decode(
    videos: list[Path], num_frames: int, limits: DecodeLimits, max_side: int
) -> Iterator[DecodeRow | tuple[Path, DetectorError]]:
    """Per video: our one sequential decode against the older service's seek per sample, run
    back to back on the same file so the page cache treats both alike."""
    for video in videos:
        try:
            decode_sampled(video, num_frames, limits, max_side)  # warm the page cache
            seq = _timed(partial(decode_sampled, video, num_frames, limits, max_side))
            seek = _timed(partial(decode_by_seeking, video, num_frames))
        except DetectorError as exc:
            yield video, exc
            continue
        yield DecodeRow(video, seq, seek, num_frames)


def summarise(rows: list[DecodeRow]) -> dict[str, float]:
    """Totals and the per-video median ratio (seeking time / sequential time)."""
    seq = sum(r.sequential_s for r in rows)
    seek = sum(r.seeking_s for r in rows)
    return {
        "videos": len(rows),
        "sequential_total_s": seq,
        "seeking_total_s": seek,
        "ratio_total": seek / seq if seq else float("nan"),
        "ratio_median": statistics.median(r.seeking_s / r.sequential_s for r in rows)
        if rows
        else float("nan"),
    }


def _queue_worker(
    url: str, worker_id: str, batch: int, start_at: float, store: BlobsConfig | None
) -> tuple[int, list[float], float, float]:
    """One benchmark process: claim and complete until the queue is empty; with ``store``,
    also fetch each job's bytes (sha256 checked) and write its verdict back, as a worker on
    another host does."""
    import shutil
    import tempfile

    from processor.blobs import S3Blobs
    from storage.db import make_engine
    from storage.queue import JobQueue, NewResult

    engine = make_engine(url)
    queue = JobQueue(engine)
    blobs = S3Blobs(store) if store is not None else None
    scratch = Path(tempfile.mkdtemp(prefix="bench-scratch-"))
    noop = NewResult(
        detector="noop",
        version="0",
        weights_id="dummy",
        label="ABSTAIN",
        fake_probability=None,
        threshold=0.5,
        frame_scores=[],
        details={},
        elapsed_s=0.0,
    )
    verdict = overall_verdict([noop])
    latencies: list[float] = []
    done = 0
    while time.time() < start_at:
        time.sleep(0.001)
    first = time.time()
    while True:
        t0 = time.perf_counter()
        claimed = queue.claim(worker_id, batch, 60)
        latencies.append(time.perf_counter() - t0)
        if not claimed:
            break
        for job in claimed:
            if blobs is not None and job.blob_url is not None:
                blobs.fetch(job.blob_url, None, job.video_sha256, scratch / job.id / "video")
                shutil.rmtree(scratch / job.id)
            if queue.complete(job.id, worker_id, [noop], verdict):
                done += 1
                if blobs is not None:
                    blobs.put_verdict(job.video_sha256, job.id, {"job_id": job.id, **verdict}, None)
    last = time.time()
    engine.dispose()
    shutil.rmtree(scratch, ignore_errors=True)
    return done, latencies, first, last


@dataclass
class QueueRun:
    workers: int
    jobs: int
    seconds: float
    claim_p50_ms: float
    claim_p95_ms: float
    claim_p99_ms: float
    put_ms_per_job: float | None = None  # ingest side: storing each video, when a store is used

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


def bench_queue(
    url: str,
    jobs: int,
    workers: int,
    batch: int,
    store: BlobsConfig | None = None,
    video_bytes: int = 0,
) -> QueueRun:
    """Fill the queue with ``jobs`` jobs, then time ``workers`` processes draining it with a
    no-op in place of inference: claim, then complete with one result row, per job. With
    ``store``, each job's ``video_bytes`` of distinct bytes are put in the object store while
    filling (timed apart), and workers fetch them and write a verdict back."""
    import concurrent.futures
    import hashlib
    import multiprocessing
    import tempfile
    import uuid

    from processor.blobs import S3Blobs
    from storage.db import make_engine, upgrade
    from storage.queue import JobQueue

    engine = make_engine(url)
    upgrade(engine)
    queue = JobQueue(engine)
    blobs = S3Blobs(store) if store is not None else None
    put_s = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-videos-") as tmp:
        for _ in range(jobs):
            sha256, blob_url = uuid.uuid4().hex * 2, None
            if blobs is not None:
                video = Path(tmp) / "video"
                video.write_bytes(os.urandom(video_bytes))
                sha256 = hashlib.sha256(video.read_bytes()).hexdigest()
                t0 = time.perf_counter()
                blob_url = blobs.put_file(video, sha256, video_bytes)
                put_s += time.perf_counter() - t0
            queue.enqueue(
                job_id=uuid.uuid4().hex,
                sha256=sha256,
                size_bytes=max(video_bytes, 1),
                source_kind="bench",
                source_ref="bench",
                detectors=["noop"],
                blob_url=blob_url,
            )
    engine.dispose()
    # Every process starts claiming at the same moment, once all have imported and connected.
    start_at = time.time() + 5.0
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [
            pool.submit(_queue_worker, url, f"bench-{i}", batch, start_at, store)
            for i in range(workers)
        ]
        results = [f.result() for f in futures]
    seconds = max(r[3] for r in results) - min(r[2] for r in results)
    done = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

    put_ms = put_s / jobs * 1000 if blobs is not None and jobs else None
    return QueueRun(workers, done, seconds, pct(0.5), pct(0.95), pct(0.99), put_ms)


@dataclass
class PipelineRun:
    """Seconds per stage summed over all videos (with several preparing threads these overlap,
    so they add up to more than the wall time), and the wall time of our way."""

    videos: int
    batch: int
    workers: int
    decode_s: float
    prepare_s: dict[str, float]
    predict_s: dict[str, float]
    wall_s: float

    @property
    def videos_per_s(self) -> float:
        return self.videos / self.wall_s


# The detectors the older service had, for which its way of running them can be timed.
SEED_DETECTORS = frozenset({"color-cues-lstm-v1", "siglip-lstm-v1", "siglip-lstm-v3"})


def bench_pipeline(
    pipeline: Pipeline,
    videos: list[Path],
    batch: int,
    workers: int,
    advance: Callable[[int], None] | None = None,
) -> PipelineRun:
    """Our way, as a worker runs it: ``workers`` threads decode each video once for all
    detectors and prepare it, while the calling thread runs each detector over batches of
    ``batch`` prepared videos; the next videos are prepared while a batch is predicted.
    ``advance(n)`` is told of every n videos done (progress)."""
    keys = list(pipeline.detectors)
    run = PipelineRun(
        len(videos), batch, workers, 0.0, dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0.0), 0.0
    )
    start = time.perf_counter()
    with ThreadPoolExecutor(workers, "bench-prepare") as pool:
        # map submits every video at once and yields them in order: preparing runs ahead.
        ready = pool.map(lambda v: pipeline.prepare(v, keys), videos)
        for _ in range(0, len(videos), batch):
            prepared = list(itertools.islice(ready, batch))
            for p in prepared:
                run.decode_s += p.decode_s
                for key in keys:
                    run.prepare_s[key] += p.prepare_s.get(key, 0.0)
            for key, det in pipeline.detectors.items():
                inputs = [p.inputs[key] for p in prepared if key in p.inputs]
                run.predict_s[key] += _timed(partial(det.predict, inputs)) if inputs else 0.0
            if advance is not None:
                advance(len(prepared))
    run.wall_s = time.perf_counter() - start
    return run


def bench_seed_way(
    pipeline: Pipeline, videos: list[Path], advance: Callable[[int], None] | None = None
) -> float:
    """Wall seconds of the older service's way: for every video and every detector, a seek per
    sampled frame, then that detector alone on that one video, one thread. SigLIP backbones run
    on torch, each detector its own pass, as the older service ran them."""
    from detectors.siglip_lstm import SiglipLSTMBase, forget_embeddings

    older = [
        det.on_torch() if isinstance(det, SiglipLSTMBase) else det
        for det in pipeline.detectors.values()
    ]
    start = time.perf_counter()
    for video in videos:
        for det in older:
            frames = decode_by_seeking(video, det.num_frames)
            # v3 must not find v1's embeddings of the same frames in the shared memo.
            forget_embeddings()
            try:
                det.predict([det.prepare(frames)])
            except DetectorError:
                continue  # e.g. no face: the older service stopped here too
        if advance is not None:
            advance(1)
    return time.perf_counter() - start


# The SigLIP backbone's runtimes compared by ``runtime_agreement``: (name, settings).
RUNTIMES: tuple[tuple[str, dict[str, str]], ...] = (
    ("torch", {"runtime": "torch"}),
    ("onnx-float32", {"runtime": "onnx", "quantize": "none"}),
    ("onnx-int8", {"runtime": "onnx", "quantize": "int8"}),
)


def runtime_agreement(
    videos: list[Path],
    settings: Mapping[str, Any],
    limits: DecodeLimits,
    max_side: int,
    advance: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """``siglip-lstm-v1`` with ``settings`` run by each of ``RUNTIMES`` on the same sampled
    frames of every clip: how far each one's calibrated P(fake) and frame scores stray from
    torch's, how many labels flip, and the seconds per frame each spent in ``predict`` (from
    the second clip on: the first pays each runtime's warm-up)."""
    from detectors.base import DetectorResult
    from detectors.siglip_lstm import SiglipLSTMConfig, SiglipLSTMv1, forget_embeddings

    load_before = os.getloadavg()
    detectors = {}
    for name, runtime in RUNTIMES:
        det = SiglipLSTMv1(SiglipLSTMConfig.model_validate({**settings, **runtime}))
        det.setup("cpu")
        detectors[name] = det
    num_frames = detectors["torch"].num_frames
    seconds = dict.fromkeys(detectors, 0.0)
    frames_timed = 0
    clips: list[dict[str, Any]] = []
    failed: list[str] = []
    for video in videos:
        try:
            sampled = decode_sampled(video, num_frames, limits, max_side)
        except DetectorError as exc:
            failed.append(f"{video.name}: {exc}")
            continue
        prepared = detectors["torch"].prepare(sampled)
        row: dict[str, Any] = {"video": video.name, "frames": len(sampled.frames)}
        for name, det in detectors.items():
            # Every runtime embeds the clip itself, never from another's memo or a rerun's.
            forget_embeddings()
            start = time.perf_counter()
            [outcome] = det.predict([prepared])
            if clips:
                seconds[name] += time.perf_counter() - start
            if not isinstance(outcome, DetectorResult):
                raise DetectorError(f"{video.name}: {name}: {outcome}")
            row[name] = {
                "p_fake": outcome.fake_probability,
                "label": str(outcome.label),
                "frame_scores": [s.fake_probability for s in outcome.frame_scores],
                "runtime": outcome.details["backbone_runtime"],
                "dtype": outcome.details["backbone_dtype"],
            }
        frames_timed += row["frames"] if clips else 0
        clips.append(row)
        if advance is not None:
            advance(1)
    return {
        "machine": machine(),
        "settings": dict(settings),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "clips": len(clips),
        "frames_per_clip": num_frames,
        "runtimes": {
            name: _agreement(clips, name, seconds[name], frames_timed) for name in detectors
        },
        "failed": failed,
        "per_clip": [
            {
                "video": row["video"],
                "p_fake": {name: round(row[name]["p_fake"], 6) for name in detectors},
                "label": {name: row[name]["label"] for name in detectors},
            }
            for row in clips
        ],
    }


def _agreement(
    clips: list[dict[str, Any]], name: str, seconds: float, frames: int
) -> dict[str, Any]:
    """One runtime against torch over ``clips`` (rows of ``runtime_agreement``)."""
    p_delta = [abs(row[name]["p_fake"] - row["torch"]["p_fake"]) for row in clips]
    frame_delta = [
        abs(a - b)
        for row in clips
        for a, b in zip(row[name]["frame_scores"], row["torch"]["frame_scores"], strict=True)
    ]
    ran = {(row[name]["runtime"], row[name]["dtype"]) for row in clips}
    return {
        "backbone": [f"{runtime} {dtype}" for runtime, dtype in sorted(ran)],
        "max_abs_delta_p_fake": max(p_delta, default=0.0),
        "mean_abs_delta_p_fake": statistics.fmean(p_delta) if p_delta else 0.0,
        "max_abs_delta_frame_score": max(frame_delta, default=0.0),
        "label_flips": sum(row[name]["label"] != row["torch"]["label"] for row in clips),
        "predict_s_per_frame": seconds / frames if frames else None,
    }
