"""The daemon as a subprocess: real inbox, real decoding of real clips, real HTTP, kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.credentials import AI, CAPTURE, action, make_credentials, sign_video
from tests.media import SHARED_VIDEOS, make_text_as_mp4, make_truncated, make_video
from tests.net import free_port

pytestmark = pytest.mark.e2e

CLIPS = sorted((SHARED_VIDEOS / "real").glob("*.mp4")) if SHARED_VIDEOS.is_dir() else []
needs_clips = pytest.mark.skipif(len(CLIPS) < 10, reason="../shared/videos is not present")


class Daemon:
    """`drishtiksha run` in a subprocess, with its log kept for failure messages."""

    def __init__(
        self, root: Path, database_url: str, detectors: dict[str, Any] | None = None, **extra: Any
    ) -> None:
        detectors = detectors or {"color-cues-lstm-v1": {"weights": "dummy", "num_frames": 16}}
        self.root = root
        self.port = free_port()
        self.config = root / "config.yaml"
        self.log = root / "daemon.log"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "database": {"url": database_url},
                    "device": "cpu",
                    "cpu_threads": 1,
                    "inboxes": [
                        {
                            "name": "e2e",
                            "path": str(root / "inbox"),
                            "work": str(root / "work"),
                            "done": str(root / "done"),
                            "failed": str(root / "failed"),
                            "detectors": list(detectors),
                            "quiet_s": 0.5,
                            "rescan_s": 2,
                        }
                    ],
                    "detectors": detectors,
                    "batching": {"max_videos": 4, "max_wait_s": 0.3, "prepare_workers": 2},
                    "queue": {"lease_s": 3, "poll_s": 0.2, "retry_base_s": 0.5},
                    "api": {"host": "127.0.0.1", "port": self.port},
                    **extra,
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "processor", "run", "--config", str(self.config)],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        # Imports and detector set-up have taken over two minutes on a busy two-CPU machine.
        wait_for(lambda: self.health() is not None, 300, self, "the daemon to become healthy")

    def health(self) -> dict[str, Any] | None:
        try:
            return self.get("/health")
        except OSError:
            return None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.load(r)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(60)
        self.proc = None
        return rc

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def wait_for(cond: Callable[[], bool], timeout: float, daemon: Daemon, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.proc is not None and daemon.proc.poll() is not None:
            pytest.fail(
                f"daemon exited ({daemon.proc.returncode}) waiting for {what}:\n{daemon.tail()}"
            )
        if cond():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{daemon.tail()}")


@pytest.fixture
def daemon(tmp_path: Path, database_url: str) -> Iterator[Daemon]:
    d = Daemon(tmp_path, database_url)
    yield d
    if d.proc is not None:
        d.proc.kill()
        d.proc.wait()


def sidecars(folder: Path, suffix: str) -> dict[str, dict[str, Any]]:
    if not folder.is_dir():
        return {}
    return {p.name: json.loads(p.read_text()) for p in folder.glob("*" + suffix)}


def drop(src: Path, inbox: Path, name: str) -> None:
    """Write as an editor's copy would: a temporary name, then a rename into place."""
    tmp = inbox / (name + ".part")
    shutil.copyfile(src, tmp)
    os.rename(tmp, inbox / name)


@needs_clips
def test_good_and_bad_files_then_kill_9(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"

    for i, clip in enumerate(CLIPS[:3]):
        drop(clip, inbox, f"good{i}.mp4")
    (inbox / "empty.mp4").write_bytes(b"")
    make_text_as_mp4(inbox / "notes.mp4")
    make_truncated(CLIPS[3], tmp_path / "cut.mp4", 0.4)
    drop(tmp_path / "cut.mp4", inbox, "cut.mp4")

    wait_for(
        lambda: (
            len(sidecars(done, ".verdict.json")) == 3 and len(sidecars(failed, ".error.json")) == 3
        ),
        240,
        daemon,
        "3 verdicts and 3 errors",
    )
    verdicts = sidecars(done, ".verdict.json")
    assert sorted(verdicts) == [f"good{i}.mp4.verdict.json" for i in range(3)]
    for i, doc in verdicts.items():
        assert (done / i.removesuffix(".verdict.json")).is_file()
        [result] = doc["detectors"]
        assert result["weights"] == "dummy"
        assert "dummy" in doc["warning"]
        assert doc["video"]["width"] > 0
    errors = sidecars(failed, ".error.json")
    codes = {name: doc["error"]["code"] for name, doc in errors.items()}
    assert codes["empty.mp4.error.json"] == "empty_file"
    assert codes["notes.mp4.error.json"] == "not_a_video"
    assert codes["cut.mp4.error.json"] == "corrupt_video"
    for name in ("empty.mp4", "notes.mp4", "cut.mp4"):
        assert (failed / name).is_file(), "a rejected file is kept, never deleted"
    assert (failed / "empty.mp4").stat().st_size == 0
    health = daemon.health()
    assert health is not None
    assert health["status"] == "healthy"
    assert list(inbox.iterdir()) == []

    # Second wave: kill -9 while jobs are running, restart, and count every file exactly once.
    wave = CLIPS[4:12]
    for i, clip in enumerate(wave):
        drop(clip, inbox, f"wave{i}.mp4")
    wait_for(
        lambda: bool(daemon.get("/v1/jobs?state=running")["jobs"]), 120, daemon, "a running job"
    )
    daemon.stop(signal.SIGKILL)
    daemon.start()
    names = [f"wave{i}.mp4" for i in range(len(wave))]
    wait_for(
        lambda: (
            all((done / n).exists() or (failed / n).exists() for n in names)
            and len(sidecars(done, ".verdict.json")) + len(sidecars(failed, ".error.json"))
            == 6 + len(wave)
        ),
        300,
        daemon,
        "every file of the second wave to finish",
    )
    jobs = daemon.get("/v1/jobs?limit=500")["jobs"]
    per_source: dict[str, int] = {}
    for job in jobs:
        per_source[Path(job["source"]["ref"]).name] = (
            per_source.get(Path(job["source"]["ref"]).name, 0) + 1
        )
        assert len({r["detector"] for r in job["results"]}) == len(job["results"])
    assert all(per_source[n] == 1 for n in names), per_source
    assert len(jobs) == 6 + len(wave)
    for n in names:
        assert (done / n).exists() != (failed / n).exists()
    assert sorted(p.name for p in done.iterdir() if not p.name.endswith(".json")) == sorted(
        [f"good{i}.mp4" for i in range(3)] + [n for n in names if (done / n).exists()]
    )
    assert not any((tmp_path / "work").iterdir()), "the work area is empty when all is done"
    assert daemon.stop() == 0, daemon.tail()


@needs_clips
def test_same_bytes_reuse_the_stored_result(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    drop(CLIPS[0], inbox, "first.mp4")
    wait_for(lambda: len(sidecars(done, ".verdict.json")) == 1, 120, daemon, "the first verdict")
    drop(CLIPS[0], inbox, "first.mp4")  # the same name again: it must not overwrite
    wait_for(lambda: len(sidecars(done, ".verdict.json")) == 2, 120, daemon, "the second verdict")
    first = sidecars(done, ".verdict.json")["first.mp4.verdict.json"]
    second = sidecars(done, ".verdict.json")["first-1.mp4.verdict.json"]
    assert not first["cached"]
    assert second["cached"]
    assert second["detectors"][0]["cached_from_job"] == first["job_id"]
    assert second["detectors"][0]["fake_probability"] == first["detectors"][0]["fake_probability"]
    assert daemon.stop() == 0


def test_content_credentials_decide_the_overall_verdict(tmp_path: Path, database_url: str) -> None:
    """A signed generative-AI declaration makes the stored, reported and filtered verdict FAKE
    even under weighted_mean; a tampered manifest and none at all leave the verdict to the
    other detector."""
    detectors = {
        "color-cues-lstm-v1": {"weights": "dummy", "num_frames": 8},
        "c2pa-provenance": {},
    }
    daemon = Daemon(tmp_path, database_url, detectors, fusion={"rule": "weighted_mean"})
    media = tmp_path / "media"
    media.mkdir()
    clip = make_video(media / "clip.mp4", seconds=1.0, fps=15)
    creds = make_credentials()
    sign_video(clip, media / "ai.mp4", creds, [action("c2pa.created", AI)])
    sign_video(clip, media / "camera.mp4", creds, [action("c2pa.created", CAPTURE)])
    tampered = bytearray((media / "camera.mp4").read_bytes())
    tampered[tampered.index(b"mdat") + 64] ^= 0x01
    (media / "tampered.mp4").write_bytes(tampered)
    try:
        daemon.start()
        inbox, done = tmp_path / "inbox", tmp_path / "done"
        for name in ("ai.mp4", "camera.mp4", "tampered.mp4", "clip.mp4"):
            drop(media / name, inbox, name)
        wait_for(lambda: len(sidecars(done, ".verdict.json")) == 4, 120, daemon, "4 verdicts")
        docs = {
            k.removesuffix(".verdict.json"): v for k, v in sidecars(done, ".verdict.json").items()
        }
        provenance = {
            name: next(r for r in doc["detectors"] if r["detector"] == "c2pa-provenance")
            for name, doc in docs.items()
        }
        assert docs["ai.mp4"]["verdict"]["label"] == "FAKE"
        assert docs["ai.mp4"]["verdict"]["decided_by"] == "c2pa-provenance"
        assert "trainedAlgorithmicMedia" in docs["ai.mp4"]["verdict"]["reason"]
        assert provenance["camera.mp4"]["details"]["reason"] == "no_generative_ai_declared"
        assert provenance["tampered.mp4"]["details"]["reason"] == "invalid_manifest"
        assert provenance["clip.mp4"]["details"]["reason"] == "no_manifest"
        for name in ("camera.mp4", "tampered.mp4", "clip.mp4"):
            verdict = docs[name]["verdict"]
            assert "decided_by" not in verdict
            # Only the (dummy) colour detector votes, so its score is the verdict's.
            colour = next(r for r in docs[name]["detectors"] if r["detector"] != "c2pa-provenance")
            assert verdict["fake_probability"] == pytest.approx(colour["fake_probability"])
            assert verdict["rule"] == "weighted_mean"

        jobs = {Path(j["source"]["ref"]).name: j for j in daemon.get("/v1/jobs")["jobs"]}
        fakes = {j["id"] for j in daemon.get("/v1/jobs?label=FAKE")["jobs"]}
        assert jobs["ai.mp4"]["id"] in fakes
        for name, job in jobs.items():
            assert job["verdict"] == docs[name]["verdict"], name
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None:
            daemon.proc.kill()
            daemon.proc.wait()
