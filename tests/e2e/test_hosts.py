"""Two hosts on one machine: each daemon has its own var/ and sees none of the other's files;
they share only Postgres and an S3 endpoint (moto in server mode). Host A takes videos
(inbox and API), host B judges them. kill -9 B mid-batch and a third host finishes its jobs,
exactly once, after B's heartbeats stop (leases are far longer than the test waits)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
import requests
import yaml
from sqlalchemy import func, select

from processor.files import sha256_file
from storage.db import make_engine
from storage.models import JobResult
from storage.queue import JobQueue, JobState
from tests.conftest import _postgres_database
from tests.media import make_video
from tests.net import AWS_REGION, free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.postgres,
    # botocore and moto call deprecated datetime APIs; only those warnings are let through.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

DETECTOR = "color-cues-lstm-v1"
# Far longer than the test waits: a job of a killed worker must come back through missed
# heartbeats, not through its lease running out.
LEASE_S = 900


@pytest.fixture
def pg_url() -> Iterator[str]:
    from storage.db import upgrade

    with _postgres_database() as url:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url


class Host:
    """One daemon process with a var/ of its own."""

    def __init__(self, root: Path, name: str, role: str, config: dict[str, Any]) -> None:
        self.root = root / name
        self.root.mkdir()
        self.name = name
        self.role = role
        self.config_path = self.root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump({**config, "host_name": name}))
        self.log = self.root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str], hide: Path | None = None) -> None:
        """Start the daemon; ``hide`` (another host's folder) is covered by an empty tmpfs in
        a mount namespace of its own, so this host cannot read that host's files."""
        command = [
            sys.executable,
            "-m",
            "processor",
            "run",
            "--config",
            str(self.config_path),
            "--role",
            self.role,
        ]
        if hide is not None:
            script = f"mount -t tmpfs none {shlex.quote(str(hide))} && exec {shlex.join(command)}"
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=self.root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(60)

    def tail(self) -> str:
        return f"--- {self.name}\n" + self.log.read_text(errors="replace")[-3000:]


def _config(pg_url: str, moto: str, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "database": {"url": pg_url},
        "device": "cpu",
        "cpu_threads": 1,
        "inboxes": [{"name": "desk", "path": "var/inbox", "quiet_s": 0.3}],
        "detectors": {DETECTOR: {"weights": "dummy", "num_frames": 8}},
        "batching": {"max_videos": 4, "max_wait_s": 0.2, "prepare_workers": 1},
        "queue": {
            "lease_s": LEASE_S,
            "poll_s": 0.2,
            "heartbeat_s": 0.5,
            "dead_after_s": 3,
            "finalize_sweep_s": 0.5,
            "shutdown_grace_s": 5,
        },
        "blobs": {"kind": "s3", "bucket": bucket, "endpoint_url": moto, "prefix": "dk"},
        **extra,
    }


def _wait(cond: Callable[[], bool], timeout: float, what: str, hosts: list[Host]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n" + "\n".join(h.tail() for h in hosts))


def test_one_host_takes_videos_another_judges_them(
    tmp_path: Path, pg_url: str, moto_url: str
) -> None:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": AWS_REGION,
    }
    env.pop("AWS_PROFILE", None)
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name=AWS_REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    notified = _notify_queue(moto_url, bucket, s3)
    port = free_port()
    sqs = {
        "name": "bucket",
        "queue_url": notified,
        "endpoint_url": moto_url,
        "region": AWS_REGION,
        "prefixes": ["incoming/"],
        "wait_time_s": 1,
    }
    a = Host(
        tmp_path,
        "host-a",
        "ingest,api",
        _config(
            pg_url,
            moto_url,
            bucket,
            api={"port": port, "allow_unauthenticated": True},
            sqs=[sqs],
        ),
    )
    worker_config = _config(pg_url, moto_url, bucket, api={"enabled": False})
    b = Host(tmp_path, "host-b", "worker", worker_config)
    c = Host(tmp_path, "host-c", "worker", worker_config)
    hosts = [a, b, c]
    engine = make_engine(pg_url)
    queue = JobQueue(engine)
    try:
        a.start(env)
        _wait(lambda: _up(port), 120, "host A's API", hosts)
        clips = tmp_path / "clips"
        clips.mkdir()
        dropped = [
            make_video(clips / f"clip{i}.mp4", seconds=1.0, size=(96 + 16 * i, 96))
            for i in range(8)
        ]
        inbox = a.root / "var" / "inbox"
        for clip in dropped[:6]:
            os.replace(clip, inbox / clip.name)
        uploaded = []
        for clip in dropped[6:]:
            with clip.open("rb") as f:
                reply = requests.post(
                    f"http://127.0.0.1:{port}/v1/jobs", files={"video": (clip.name, f)}, timeout=30
                )
            assert reply.status_code == 201, reply.text
            uploaded.append(reply.json()["id"])
        _wait(lambda: len(queue.list(limit=100)) == 8, 60, "eight jobs queued", hosts)
        jobs = queue.list(limit=100)
        assert all(j.blob_url and j.blob_url.startswith(f"s3://{bucket}/dk/videos/") for j in jobs)
        # An S3-notified object is judged where it lies; replaced after its job was queued, it
        # is refused under the old hash and its new bytes get a job of their own.
        first, second = (
            make_video(clips / f"swap{i}.mp4", seconds=1.0, size=(80, 64 + 16 * i))
            for i in range(2)
        )
        s3.put_object(Bucket=bucket, Key="incoming/swap.mp4", Body=first.read_bytes())
        _wait(lambda: len(queue.list(limit=100)) == 9, 60, "the S3 object's job", hosts)
        s3.put_object(Bucket=bucket, Key="incoming/swap.mp4", Body=second.read_bytes())
        _wait(lambda: len(queue.list(limit=100)) == 10, 60, "the replacement's job", hosts)
        swapped = {j.video_sha256: j for j in queue.list(limit=100) if j.source_kind == "s3"}
        assert all(j.work_path is None for j in swapped.values())  # nothing copied to host A
        stale = swapped[sha256_file(first)].id

        # Nothing is judged on the host that took the videos.
        assert all(j.state is JobState.QUEUED for j in jobs)

        # B and C cannot see A's folders where mount namespaces are allowed (as root here).
        hide = a.root if _can_hide() else None
        b.start(env, hide)
        _wait(lambda: _running_on(queue, "host-b"), 120, "host B running jobs", hosts)
        b.kill()  # mid-batch: B holds leases it will never renew or give back
        held = [j.id for j in queue.list(limit=100) if j.state is JobState.RUNNING]
        assert held
        c.start(env, hide)
        _wait(lambda: _all_ended(queue), 180, "every job ended", hosts)
        _wait(lambda: _all_finalized(queue), 60, "every job finalized on host A", hosts)

        jobs = queue.list(limit=100)
        failed = [j for j in jobs if j.state is not JobState.DONE]
        assert [(j.id, j.error_code) for j in failed] == [(stale, "source_changed")]
        jobs = [j for j in jobs if j.id != stale]
        with engine.connect() as conn:
            per_job = dict(
                conn.execute(
                    select(JobResult.job_id, func.count()).group_by(JobResult.job_id)
                ).all()
            )
        assert per_job == {j.id: 1 for j in jobs}  # exactly once
        # The killed worker's jobs were finished by host C (not host B, which is gone).
        for job_id in held:
            finished = queue.get(job_id)
            assert finished is not None
            assert (finished.lease_owner or "").startswith("host-c:"), finished
        # A's done/ holds every inbox file and its sidecar; no other host placed anything.
        done = a.root / "var" / "done"
        assert sorted(p.name for p in done.iterdir() if p.suffix == ".mp4") == sorted(
            c.name for c in dropped[:6]
        )
        for job in jobs:
            key = f"dk/verdicts/{job.video_sha256}/{job.id}.json"
            doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            assert doc["job_id"] == job.id
            assert job.verdict is not None
            assert doc["verdict"]["label"] == job.verdict["label"]
            if job.source_kind == "folder":
                sidecar = json.loads((done / (doc["file"] + ".verdict.json")).read_text())
                assert sidecar["sha256"] == job.video_sha256
        for host in (b, c):
            assert not _files(host.root / "var" / "done")
        # C cleaned up after itself. B was killed, perhaps holding fetched bytes: gc removes
        # them (one such copy is made sure of here, whenever the kill came).
        assert not _files(c.root / "var" / "scratch")
        leftover = b.root / "var" / "scratch" / held[0] / "video.mp4"
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"fetched")
        gc = subprocess.run(
            [sys.executable, "-m", "processor", "gc", "--config", str(b.config_path)],
            cwd=b.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert gc.returncode == 0, gc.stderr
        assert "fetched bytes of a job no longer running" in gc.stdout
        assert not _files(b.root / "var" / "scratch")
        # The uploads' own copies on A are gone once their jobs ended.
        assert not list((a.root / "var" / "uploads").glob("*.video"))
        dead = [w for w in queue.workers(LEASE_S) if w.host == "host-b"]
        assert dead
        assert not any(w.alive for w in dead)
    finally:
        for host in hosts:
            if host.proc is not None and host.proc.poll() is None:
                host.kill(signal.SIGTERM)
        engine.dispose()


def _notify_queue(moto: str, bucket: str, s3: Any) -> str:
    """An SQS queue that receives the bucket's ObjectCreated events; its URL."""
    sqs = boto3.client(
        "sqs",
        endpoint_url=moto,
        region_name=AWS_REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    url = str(sqs.create_queue(QueueName=f"q-{bucket}")["QueueUrl"])
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    return url


def _can_hide() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "true"], timeout=30).returncode == 0
    except OSError:
        return False


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False  # not listening yet, or still starting


def _running_on(queue: JobQueue, host: str) -> bool:
    return any(
        j.state is JobState.RUNNING and (j.lease_owner or "").startswith(f"{host}:")
        for j in queue.list(limit=100)
    )


def _all_ended(queue: JobQueue) -> bool:
    return all(j.state not in (JobState.QUEUED, JobState.RUNNING) for j in queue.list(limit=100))


def _all_finalized(queue: JobQueue) -> bool:
    return all(j.finalized_at is not None for j in queue.list(limit=100))
