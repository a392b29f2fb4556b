"""The desk at scale (``drishtiksha bench desk``): a fresh database filled with many finished
jobs by bulk inserts against the real schema, the real application served on a loopback port
(no worker, no keys), and the desk's pages and the API's list timed over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import html
import math
import random
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, create_engine, insert, make_url, text

from storage.models import Job, JobResult, Review, Video

# The budget for what a browser fetches to show the first page.
FIRST_LOAD_LIMIT_BYTES = 200_000
DETECTORS = ("color-cues-lstm-v1", "face-cues-v1", "siglip-lstm-v3")
_CHUNK = 2000
_FRAMES = 16  # frame scores stored per result, as a 16-frame detector writes them
_OLDER = re.compile(r'href="(/desk/\?[^"]*before=[0-9a-f]+)"')
_ASSET = re.compile(r'(?:href|src)="(/desk/static/[^"]+)"')
_JOB_LINK = re.compile(r'href="/desk/jobs/([0-9a-f]+)"')


def _percentile(values: list[float], p: float) -> float:
    """Nearest rank: with few repetitions p95 is the slowest but one (or the slowest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def _split(total: int, shares: dict[str, float], rng: random.Random) -> list[str]:
    """``total`` values drawn with these shares, in random order."""
    names = list(shares)
    return rng.choices(names, weights=[shares[n] for n in names], k=total)


def fill(engine: Engine, jobs: int, seed: int = 0) -> tuple[dict[str, int], str]:
    """Bulk-insert ``jobs`` jobs (one video each, created a minute apart, newest now) with
    their results, stored verdicts and a few reviews, through SQLAlchemy core in chunks.
    Returns the row counts and the sha256 of the middle job (for the prefix search)."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    first = now - dt.timedelta(minutes=jobs)
    states = _split(jobs, {"done": 0.95, "failed": 0.03, "cancelled": 0.01, "queued": 0.01}, rng)
    labels = {"FAKE": 0.2, "REAL": 0.6, "UNCERTAIN": 0.15, "ABSTAIN": 0.05}
    counts = {"jobs": 0, "results": 0, "reviews": 0}
    done_ids: list[str] = []
    middle_sha = ""
    with engine.begin() as conn:
        for start in range(0, jobs, _CHUNK):
            videos: list[dict[str, Any]] = []
            rows: list[dict[str, Any]] = []
            results: list[dict[str, Any]] = []
            for i in range(start, min(jobs, start + _CHUNK)):
                job_id = uuid.UUID(int=rng.getrandbits(128)).hex
                sha = hashlib.sha256(job_id.encode()).hexdigest()
                if i == jobs // 2:
                    middle_sha = sha
                created = first + dt.timedelta(minutes=i, seconds=rng.randrange(60))
                keys = rng.sample(DETECTORS, rng.choice((1, 1, 2, 3)))
                kind = rng.choice(("folder", "folder", "upload", "s3", "cli"))
                name = f"{rng.choice(('interview', 'clip', 'rally', 'speech', 'call'))}_{i:06d}"
                ref = {
                    "folder": f"/srv/drishtiksha/inbox/desk-{i % 7}/{name}.mp4",
                    "upload": f"{name}.mp4",
                    "s3": f"s3://media-ingest/2026/{i % 12 + 1:02d}/{name}.mp4",
                    "cli": f"/home/analyst/videos/{name}.mov",
                }[kind]
                state = states[i]
                finished = created + dt.timedelta(seconds=rng.uniform(5, 90))
                label = _split(1, labels, rng)[0] if state == "done" else None
                verdict = None
                if label is not None:
                    p = None if label == "ABSTAIN" else round(rng.random(), 4)
                    verdict = {"label": label, "fake_probability": p, "rule": "any_fake"}
                    done_ids.append(job_id)
                    for key in keys:
                        results.append(_result(job_id, key, label, p, finished, rng))
                videos.append(
                    {
                        "sha256": sha,
                        "size_bytes": rng.randrange(100_000, 80_000_000),
                        "container": "mov,mp4,m4a,3gp,3g2,mj2",
                        "codec": "h264",
                        "width": 1280,
                        "height": 720,
                        "fps": 25.0,
                        "duration_s": round(rng.uniform(2, 120), 2),
                        "first_seen": created,
                    }
                )
                rows.append(
                    {
                        "id": job_id,
                        "video_sha256": sha,
                        "source_kind": kind,
                        "source_ref": ref,
                        "inbox": f"desk-{i % 7}" if kind == "folder" else None,
                        "work_path": None,
                        "output_path": None,
                        "detectors": keys,
                        "state": state,
                        "priority": 0,
                        "attempts": 0 if state in ("queued", "cancelled") else 1,
                        "max_attempts": 3,
                        "run_after": created,
                        "error_code": "corrupt_video" if state == "failed" else None,
                        "error_message": "moov atom not found" if state == "failed" else None,
                        "cached": False,
                        "solo": False,
                        "verdict_label": label,
                        "verdict": verdict,
                        "created_at": created,
                        "started_at": None if state in ("queued", "cancelled") else created,
                        "finished_at": None if state == "queued" else finished,
                        "finalized_at": None if state == "queued" else finished,
                    }
                )
            conn.execute(insert(Video), videos)
            conn.execute(insert(Job), rows)
            if results:
                conn.execute(insert(JobResult), results)
            counts["jobs"] += len(rows)
            counts["results"] += len(results)
        reviews = _reviews(rng, done_ids, now)
        for start in range(0, len(reviews), _CHUNK):
            conn.execute(insert(Review), reviews[start : start + _CHUNK])
        counts["reviews"] = len(reviews)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return counts, middle_sha


def _result(
    job_id: str, key: str, label: str, p: float | None, at: dt.datetime, rng: random.Random
) -> dict[str, Any]:
    scores = [
        {"t": round(k * 0.5, 2), "p": round(rng.random(), 4)}
        for k in range(_FRAMES if p is not None else 0)
    ]
    return {
        "job_id": job_id,
        "detector": key,
        "version": "1",
        "weights_id": f"{key}-bench",
        "label": label,
        "fake_probability": p,
        "threshold": 0.5,
        "frame_scores": scores,
        "details": {"faces": rng.randrange(0, 3)},
        "elapsed_s": round(rng.uniform(0.2, 4.0), 3),
        "cached_from_job": None,
        "created_at": at,
    }


def _reviews(rng: random.Random, done: list[str], now: dt.datetime) -> list[dict[str, Any]]:
    """About 3% of the done jobs reviewed (a few thousand at 100k), one in ten of them twice
    (a change of mind); row ids follow time, as the audit trail's do."""
    picked = rng.sample(done, max(1, len(done) * 3 // 100)) if done else []
    rows: list[dict[str, Any]] = []
    decisions = {"confirmed_fake": 0.35, "confirmed_real": 0.5, "second_look": 0.15}
    for job_id in picked:
        for _ in range(2 if rng.random() < 0.1 else 1):
            rows.append(
                {
                    "job_id": job_id,
                    "decision": _split(1, decisions, rng)[0],
                    "note": rng.choice(("", "lip sync off", "checked the source", "blurry")),
                    "reviewer": rng.choice(("anna", "ravi", "meera")),
                }
            )
    start = now - dt.timedelta(minutes=len(rows))
    for n, row in enumerate(rows):
        row["created_at"] = start + dt.timedelta(minutes=n)
    return rows


@contextlib.contextmanager
def scratch_database(url: str | None, work: Path) -> Iterator[str]:
    """An empty database: a SQLite file in ``work``, or a new database on the Postgres server
    ``url`` names (its database is only used to create and at the end drop the new one)."""
    if url is None:
        yield f"sqlite:///{work / 'bench-desk.db'}"
        return
    server = make_url(url)
    if server.get_backend_name() != "postgresql":
        raise ValueError("--database-url: a postgresql:// server URL (SQLite is the default)")
    if server.drivername == "postgresql":
        server = server.set(drivername="postgresql+psycopg")
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"drishtiksha_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[float, int, bytes]:
    start = time.perf_counter()
    async with session.get(url) as r:
        body = await r.read()
    return (time.perf_counter() - start) * 1000, r.status, body


async def _measure(
    session: aiohttp.ClientSession, base: str, path: str, repeats: int
) -> dict[str, Any]:
    """One untimed request to warm caches, then ``repeats`` timed ones, one after another."""
    _, status, body = await _get(session, base + path)
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
    times = [(await _get(session, base + path))[0] for _ in range(repeats)]
    return {
        "path": path,
        "p50_ms": round(_percentile(times, 0.5), 1),
        "p95_ms": round(_percentile(times, 0.95), 1),
        "max_ms": round(max(times), 1),
        "bytes": len(body),
        # Jobs listed (each row links to its job twice); None for pages that are no list.
        "rows": len(set(_JOB_LINK.findall(body.decode())))
        if path.startswith(("/desk/?", "/desk/queue")) or path == "/desk/"
        else None,
    }


async def measure_desk(base: str, repeats: int, *, search: str, sha_prefix: str) -> dict[str, Any]:
    """Time the desk's pages and the API's list at ``base``; the 50th page is reached by
    following each page's "Older" link, as a person would."""
    async with aiohttp.ClientSession() as session:
        _, status, first = await _get(session, f"{base}/desk/")
        if status != 200:
            raise RuntimeError(f"GET /desk/: {status} {first[:300]!r}")
        page, walk, page_50 = first, [], None
        for _ in range(49):
            older = _OLDER.search(page.decode())
            if older is None:
                break  # fewer than 50 pages
            page_50 = html.unescape(older.group(1))
            took, status, page = await _get(session, base + page_50)
            walk.append(took)
        if len(walk) < 49:
            page_50 = None
        assets: dict[str, int] = {}
        for path in dict.fromkeys(_ASSET.findall(first.decode())):
            _, status, body = await _get(session, base + html.unescape(path))
            assets[path] = len(body)
        job = _JOB_LINK.search(first.decode())
        paths = {
            "list_first_page": "/desk/",
            "list_label_fake": "/desk/?show=FAKE",
            "list_review_confirmed_fake": "/desk/?review=confirmed_fake",
            "search_file_name": f"/desk/?q={search}",
            "search_sha256_prefix": f"/desk/?q={sha_prefix}",
            "review_queue": "/desk/queue",
            "job_page": f"/desk/jobs/{job.group(1) if job else ''}",
            "api_jobs_label_fake": "/v1/jobs?label=FAKE&limit=50",
        }
        if page_50 is not None:
            paths = {"list_first_page": "/desk/", "list_page_50": page_50, **paths}
        requests = {name: await _measure(session, base, p, repeats) for name, p in paths.items()}
    return {"requests": requests, "walk": walk, "assets": assets, "first_html": len(first)}


async def _serve(url: str, work: Path) -> tuple[web.AppRunner, str]:
    """The real application over ``url``: no worker, no keys (so the desk is open), on a free
    loopback port."""
    from processor.api.app import init_app, runner
    from processor.config import Config
    from storage.db import make_engine
    from storage.queue import JobQueue

    config = Config.model_validate(
        {
            "database": {"url": url},
            "device": "cpu",
            "inboxes": [
                {"name": "bench", "path": str(work / "inbox"), "detectors": list(DETECTORS)}
            ],
            "detectors": {key: {"weights": "dummy"} for key in DETECTORS},
            "api": {"host": "127.0.0.1", "port": 0, "upload_dir": str(work / "uploads")},
        }
    ).resolved(work)
    engine = make_engine(url)
    served = runner(init_app(config, JobQueue(engine), engine, None, environ={}), config.api)
    await served.setup()
    await web.TCPSite(served, "127.0.0.1", 0).start()
    return served, f"http://127.0.0.1:{served.addresses[0][1]}"


async def bench_desk(
    database_url: str | None, jobs: int, repeats: int, seed: int = 0
) -> dict[str, Any]:
    """Fill a scratch database with ``jobs`` jobs, serve the application over it and time the
    desk: the report ``drishtiksha bench desk`` prints (``--json``: as is)."""
    from storage.db import make_engine, upgrade

    with (
        tempfile.TemporaryDirectory(prefix="drishtiksha-bench-desk-") as tmp,
        scratch_database(database_url, Path(tmp)) as url,
    ):
        work = Path(tmp)
        engine = make_engine(url)
        try:
            start = time.perf_counter()
            upgrade(engine)
            counts, middle_sha = await asyncio.to_thread(fill, engine, jobs, seed)
            fill_s = time.perf_counter() - start
        finally:
            engine.dispose()
        served, base = await _serve(url, work)
        try:
            measured = await measure_desk(
                base, repeats, search=f"_{jobs // 2:06d}", sha_prefix=middle_sha[:12]
            )
        finally:
            await served.cleanup()
    first_load = measured["first_html"] + sum(measured["assets"].values())
    walk = measured["walk"]
    return {
        "backend": make_url(url).get_backend_name(),
        "rows": counts,
        "fill_s": round(fill_s, 1),
        "repeats": repeats,
        "requests": measured["requests"],
        "walk_to_page_50": {
            "pages": len(walk),
            "p50_ms": round(_percentile(walk, 0.5), 1) if walk else None,
            "p95_ms": round(_percentile(walk, 0.95), 1) if walk else None,
        },
        "first_load": {
            "html_bytes": measured["first_html"],
            "assets": measured["assets"],
            "total_bytes": first_load,
            "limit_bytes": FIRST_LOAD_LIMIT_BYTES,
            "within_limit": first_load < FIRST_LOAD_LIMIT_BYTES,
        },
    }


def print_report(console: Console, report: dict[str, Any]) -> None:
    """The report as a table."""
    rows = report["rows"]
    console.print(f"machine: {report['machine']}")
    console.print(
        f"{report['backend']}: {rows['jobs']} jobs, {rows['results']} results, "
        f"{rows['reviews']} reviews, filled in {report['fill_s']} s; "
        f"{report['repeats']} timed requests per page"
    )
    table = Table("request", "path", "p50 ms", "p95 ms", "bytes")
    for name, r in report["requests"].items():
        table.add_row(name, r["path"], f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", str(r["bytes"]))
    console.print(table)
    walk = report["walk_to_page_50"]
    if walk["pages"]:
        console.print(
            f"walking Older links to page 50: {walk['pages']} pages, "
            f"p50 {walk['p50_ms']} ms, p95 {walk['p95_ms']} ms"
        )
    load = report["first_load"]
    console.print(
        f"first load: {load['total_bytes']} bytes (HTML {load['html_bytes']}, "
        + ", ".join(f"{path} {n}" for path, n in load["assets"].items())
        + f"); limit {load['limit_bytes']}: {'within' if load['within_limit'] else 'OVER'}"
    )
