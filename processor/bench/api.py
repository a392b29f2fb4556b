"""HTTP benchmark of a running API, meant to run in a process of its own: upload throughput of
``POST /v1/jobs`` and requests per second of ``GET /v1/jobs/{id}``."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

# Enough concurrent readers to keep the server busy; more mostly queue up in the client.
GET_CONCURRENCY = 16


async def bench_api(
    base_url: str, api_key: str | None, video: Path, seconds: float
) -> dict[str, Any]:
    """Upload ``video`` again and again for ``seconds`` (one stream, each new job cancelled at
    once so the queue stays empty), then read one job back from ``GET_CONCURRENCY``
    connections for ``seconds``. MB are 10^6 bytes."""
    base = base_url.rstrip("/")
    headers = {"X-API-Key": api_key} if api_key else {}
    connector = aiohttp.TCPConnector(limit=GET_CONCURRENCY)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        upload, job_id = await _uploads(session, base, video, seconds)
        reads = await _reads(session, base, job_id, seconds)
    return {"base_url": base, "video": str(video), "upload": upload, "get_job": reads}


async def _uploads(
    session: aiohttp.ClientSession, base: str, video: Path, seconds: float
) -> tuple[dict[str, Any], str]:
    size = await asyncio.to_thread(os.path.getsize, video)
    statuses: Counter[int] = Counter()
    busy = 0.0  # time spent in POST requests only (not in the cancels)
    job_id: str | None = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or job_id is None:
        with video.open("rb") as body:
            start = time.perf_counter()
            async with session.post(
                f"{base}/v1/jobs",
                data=body,
                headers={"Content-Type": "application/octet-stream"},
            ) as r:
                doc = await r.json()
            busy += time.perf_counter() - start
        statuses[r.status] += 1
        if r.status not in (200, 201):
            raise RuntimeError(f"upload refused: {r.status} {doc}")
        if r.status == 201:
            job_id = doc["id"]
            async with session.delete(f"{base}/v1/jobs/{job_id}") as cancelled:
                await cancelled.read()  # 409 when a worker took it first: that is fine
    uploads = sum(statuses.values())
    return (
        {
            "uploads": uploads,
            "bytes": uploads * size,
            "seconds": round(busy, 3),
            "mb_per_s": round(uploads * size / busy / 1e6, 1),
            "statuses": dict(statuses),
        },
        job_id,
    )


async def _reads(
    session: aiohttp.ClientSession, base: str, job_id: str, seconds: float
) -> dict[str, Any]:
    url = f"{base}/v1/jobs/{job_id}"
    latencies: list[float] = []
    errors: Counter[int] = Counter()
    deadline = time.monotonic() + seconds

    async def reader() -> None:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            async with session.get(url) as r:
                await r.read()
            if r.status == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors[r.status] += 1

    start = time.perf_counter()
    await asyncio.gather(*(reader() for _ in range(GET_CONCURRENCY)))
    elapsed = time.perf_counter() - start
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "concurrency": GET_CONCURRENCY,
        "p50_ms": round(quantiles[49] * 1000, 2),
        "p99_ms": round(quantiles[98] * 1000, 2),
        "errors": dict(errors),
    }
