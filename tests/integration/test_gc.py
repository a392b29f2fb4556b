"""``drishtiksha gc``: what is kept only for a while goes; what a running job reads, and every
user's file, stays."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from sqlalchemy import Engine
from typer.testing import CliRunner

from processor.cli import app
from processor.config import Config
from processor.gc import collect
from storage.db import upgrade
from storage.queue import JobQueue

DAY = 24 * 3600


def _config(tmp_path: Path, engine: Engine) -> Config:
    return Config.model_validate(
        {
            "database": {"url": engine.url.render_as_string(hide_password=False)},
            "inboxes": [{"name": "x", "path": "var/inbox"}],
            "detectors": {"c2pa-provenance": {}},
            "api": {"artefacts_max_files": 1},
            "sqs": [{"name": "s", "queue_url": "http://127.0.0.1:9/q", "work": "var/work-s3"}],
        }
    ).resolved(tmp_path)


def _job(queue: JobQueue, job_id: str) -> None:
    queue.enqueue(
        job_id=job_id,
        sha256=uuid.uuid4().hex * 2,
        size_bytes=1,
        source_kind="s3",
        source_ref="s3://b/k",
        detectors=["c2pa-provenance"],
    )


def _file(path: Path, age_s: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_gc_removes_what_is_kept_only_for_a_while(tmp_path: Path, engine: Engine) -> None:
    upgrade(engine)
    queue = JobQueue(engine)
    config = _config(tmp_path, engine)
    running, finished, open_ = (uuid.uuid4().hex for _ in range(3))
    for job_id in (running, finished, open_):
        _job(queue, job_id)
    assert [c.id for c in queue.claim("w", 3, 600)] == [running, finished, open_]
    assert queue.complete(finished, "w", [], {"label": "ABSTAIN"})
    queue.mark_finalized(finished)
    assert queue.complete(open_, "w", [], {"label": "ABSTAIN"})  # done, not yet finalized

    scratch = config.blobs.scratch
    kept = [
        _file(scratch / running / "video.mp4"),  # a worker is reading it
        _file(config.sqs[0].work / open_ / "clip.mp4"),  # its job is not finalized yet
        _file(config.inboxes[0].path / "new.mp4", DAY * 9),  # a user's file, however old
        _file(config.api.upload_dir / f"{running}.video", DAY * 2),  # its job exists
    ]
    artefacts = config.api.upload_dir.parent / "artefacts"
    newest = _file(artefacts / running / "a.annotated.mp4")
    kept.append(newest)
    gone = [
        _file(scratch / finished / "video.mp4"),
        _file(scratch / uuid.uuid4().hex / "video.mp4"),  # a job that never existed here
        _file(config.sqs[0].work / finished / "clip.mp4"),
        _file(config.api.upload_dir / f"{uuid.uuid4().hex}.part", DAY * 2),
        _file(artefacts / finished / "a.annotated.mp4", 60),
    ]

    dry = CliRunner().invoke(
        app, ["gc", "--dry-run"], env={"DRISHTIKSHA_CONFIG": _write(tmp_path, config)}
    )
    assert dry.exit_code == 0, dry.output
    assert "3 would go" in dry.output  # the dry run lists folders only, removes nothing
    assert all(p.exists() for p in kept + gone)

    removed = collect(config, queue)
    assert {r.path for r in removed} >= {scratch / finished, config.sqs[0].work / finished}
    assert all(p.exists() for p in kept), [p for p in kept if not p.exists()]
    assert not any(p.exists() for p in gone), [p for p in gone if p.exists()]


def _write(tmp_path: Path, config: Config) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(config.model_dump_json())  # JSON is YAML
    return str(path)
