"""A misused command answers in one line with a non-zero exit; config discovery, pasteable job
ids and retrying failed jobs. Real databases and files; the one-line property is checked on
the real entry point, in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from typer.testing import CliRunner

from processor.api.app import init_app, runner
from processor.cli import app
from processor.cli.common import LabelChoice, StateChoice
from processor.config import load_config
from processor.files import ERROR_SUFFIX
from processor.lifecycle import Lifecycle
from storage.db import make_engine, upgrade
from storage.queue import VERDICT_LABELS, JobQueue, JobState
from tests.media import make_video

cli = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def drishtiksha(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    """The installed command line as a user runs it (``python -m processor``)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DRISHTIKSHA_")}
    environ["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "processor", *args],
        cwd=cwd,
        env=environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def write_config(tmp_path: Path, **sections: Any) -> Path:
    path = tmp_path / "c.yaml"
    body: dict[str, Any] = {
        "database": {"url": f"sqlite:///{tmp_path / 'd.db'}"},
        "device": "cpu",
        "inboxes": [
            {
                "name": "t",
                "path": str(tmp_path / "inbox"),
                "work": str(tmp_path / "work"),
                "done": str(tmp_path / "done"),
                "failed": str(tmp_path / "failed"),
            }
        ],
        "detectors": {"color-cues-lstm-v1": {"weights": "dummy", "num_frames": 8}},
    }
    path.write_text(yaml.safe_dump(body | sections))
    return path


def test_cli_choices_are_the_queue_states_and_labels() -> None:
    assert [s.value for s in StateChoice] == [s.value for s in JobState]
    assert tuple(label.value for label in LabelChoice) == VERDICT_LABELS


# --- 7: analyze names what it cannot read, and judges folders ---------------------------------


def test_analyze_refuses_a_missing_path_at_once(tmp_path: Path) -> None:
    done = drishtiksha("analyze", "/no/such.mp4", "-c", str(write_config(tmp_path)), cwd=tmp_path)
    assert done.returncode == 1
    assert one_line(done.stderr) == "error: /no/such.mp4: no such file or folder"


def test_analyze_judges_the_files_of_a_folder(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    folder = tmp_path / "clips"
    folder.mkdir()
    make_video(folder / "face.mp4", seconds=1.0, fps=10, size=(320, 240), face=True)
    for junk in (".hidden.mp4", "face.mp4.verdict.json", "copy.mp4.part"):
        (folder / junk).write_bytes(b"x")
    (folder / "sub").mkdir()
    make_video(folder / "sub" / "deeper.mp4", seconds=1.0, fps=10, size=(320, 240))
    result = cli.invoke(app, ["analyze", str(folder), "--json", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert [Path(json.loads(line)["file"]).name for line in result.stdout.splitlines()] == [
        "face.mp4"
    ]
    assert f"{folder}: 1 files" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"x")
    result = cli.invoke(app, ["analyze", str(empty), "-c", str(config)])
    assert result.exit_code == 1
    assert "no video files in this folder" in result.stderr


# --- 8: a busy port fails before anything starts ----------------------------------------------


def test_run_refuses_a_busy_port_before_starting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, api={"port": port})
        done = drishtiksha("run", "--config", str(config), cwd=tmp_path)
    assert done.returncode != 0
    line = one_line(done.stderr)
    assert f"api.port {port}" in line
    assert "127.0.0.1" in line
    assert not (tmp_path / "d.db").exists(), "nothing started: no migration, no database"
    assert not (tmp_path / "inbox").exists()


# --- 9 and 14: choices, version, help, did you mean -------------------------------------------


def test_an_unknown_state_is_refused_with_the_valid_ones(tmp_path: Path) -> None:
    done = drishtiksha("jobs", "list", "--state", "finished", cwd=tmp_path)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "'finished' is not one of" in line
    assert all(state.value in line for state in JobState)


def test_version_clean_help_and_did_you_mean(tmp_path: Path) -> None:
    version = drishtiksha("--version", cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.strip().startswith("drishtiksha 0.")
    for command in ([], ["analyze"], ["jobs", "retry"], ["eval"]):
        text = cli.invoke(app, [*command, "--help"], terminal_width=100).stdout
        assert "``" not in text, text
    bad = tmp_path / "bad.yaml"
    bad.write_text("queue:\n  lease: 5\ndetectors:\n  c2pa-provenance: {timeout: 3}\n")
    result = cli.invoke(app, ["config", "check", "-c", str(bad)])
    assert result.exit_code == 2
    assert f"{bad} (--config): queue.lease: unknown key (did you mean queue.lease_s?)" in (
        result.stderr
    )
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("detectors:\n  c2pa-provenance: {timeout: 3}\n")
    result = cli.invoke(app, ["config", "check", "-c", str(fixed)])
    assert result.exit_code == 2
    assert "detectors.c2pa-provenance.timeout: unknown key (did you mean " in result.stderr
    assert "detectors.c2pa-provenance.timeout_s?)" in result.stderr


# --- 10: config discovery; read commands never create a database ------------------------------


def test_read_commands_never_create_a_database(tmp_path: Path) -> None:
    for command in (["jobs", "list"], ["jobs", "show", "0" * 12], ["workers"]):
        done = drishtiksha(*command, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        line = one_line(done.stderr)
        assert f"no job database at {tmp_path / 'var' / 'drishtiksha.db'}" in line
        assert "embedded defaults" in line
    assert list(tmp_path.iterdir()) == [], "nothing created"


def test_config_check_says_which_file_it_found(tmp_path: Path) -> None:
    done = drishtiksha("config", "check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "configuration: embedded defaults"
    config = write_config(tmp_path)
    done = drishtiksha("config", "check", cwd=tmp_path, env={"DRISHTIKSHA_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"configuration: {config} (DRISHTIKSHA_CONFIG)"
    assert json.loads(done.stdout)["inboxes"][0]["name"] == "t"
    (tmp_path / "configs").mkdir()
    config.rename(tmp_path / "configs" / "default.yaml")
    done = drishtiksha("config", "check", cwd=tmp_path)
    assert done.stderr.strip() == f"configuration: {tmp_path / 'configs' / 'default.yaml'}"
    assert not (tmp_path / "d.db").exists()


# --- 11: files a configuration names ----------------------------------------------------------


def test_missing_files_are_named_by_their_keys(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        detectors={
            "color-cues-lstm-v1": {"weights": str(tmp_path / "gone.pt")},
            "face-cues-v1": {"weights": "manifest", "manifest": str(tmp_path / "m.json")},
            "c2pa-provenance": {"trust_anchors": str(tmp_path / "roots.pem")},
        },
    )
    for command in (["config", "check"], ["detectors"]):
        result = cli.invoke(app, [*command, "-c", str(config)])
        assert result.exit_code == 2, result.output
        assert sorted(result.stderr.splitlines()[-3:]) == [
            f"error: detectors.c2pa-provenance.trust_anchors: {tmp_path / 'roots.pem'} does "
            "not exist",
            f"error: detectors.color-cues-lstm-v1.weights: {tmp_path / 'gone.pt'} does not exist",
            f"error: detectors.face-cues-v1.manifest: {tmp_path / 'm.json'} does not exist",
        ]


# --- 12: pasteable ids, prefixes, filters -----------------------------------------------------


def _seeded(tmp_path: Path) -> tuple[Path, JobQueue]:
    config = write_config(tmp_path)
    engine = make_engine(load_config(config).database.url)
    upgrade(engine)
    return config, JobQueue(engine)


def test_jobs_list_shows_ids_that_jobs_show_accepts(tmp_path: Path) -> None:
    config, queue = _seeded(tmp_path)
    names = ["a-very-long-file-name-from-the-newsroom-share.mp4", "Short.MP4", "other.mp4"]
    ids = ["abcdef0123456789" + "0" * 16, "abcdef0123456789" + "1" * 16, "1234abcd" + "2" * 24]
    for n, (job_id, name) in enumerate(zip(ids, names, strict=True)):
        queue.enqueue(
            job_id=job_id,
            sha256=f"{n:064x}",
            size_bytes=1,
            source_kind="folder",
            source_ref=f"/srv/inbox/{name}",
            detectors=["color-cues-lstm-v1"],
        )
    queue.engine.dispose()
    listed = cli.invoke(app, ["jobs", "list", "-c", str(config)], terminal_width=80)
    assert listed.exit_code == 0, listed.output
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    shown = [line.split()[0] for line in listed.stdout.splitlines() if "queued" in line]
    # Two ids share their first 16 characters: they are shown long enough to tell apart.
    assert sorted(shown) == sorted([ids[0][:20], ids[1][:20], ids[2][:12]]), listed.stdout
    for visible in shown:
        doc = cli.invoke(app, ["jobs", "show", visible, "-c", str(config)])
        assert doc.exit_code == 0, doc.output
        assert json.loads(doc.stdout)["id"].startswith(visible)
    ambiguous = cli.invoke(app, ["jobs", "show", "abcdef01", "-c", str(config)])
    assert ambiguous.exit_code == 2
    assert "several job ids" in ambiguous.stderr
    short = cli.invoke(app, ["jobs", "show", "abc", "-c", str(config)])
    assert short.exit_code == 2
    assert "8 to 32" in short.stderr
    named = cli.invoke(app, ["jobs", "list", "--name", "short", "-c", str(config)])
    assert [line.split()[0] for line in named.stdout.splitlines() if "queued" in line] == [
        ids[1][:20]
    ]
    fakes = cli.invoke(app, ["jobs", "list", "--label", "fake", "-c", str(config)])
    assert fakes.exit_code == 0, fakes.output
    assert "queued" not in fakes.stdout


# --- 13: any registered detector, configured or not -------------------------------------------


def test_analyze_runs_a_registered_detector_that_has_no_section(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.mp4", seconds=1.0, fps=10, size=(320, 240))
    config = write_config(tmp_path)
    result = cli.invoke(
        app,
        ["analyze", str(clip), "--json", "--detectors", "c2pa-provenance", "-c", str(config)],
    )
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["detector"] for r in row["detectors"]] == ["c2pa-provenance"]
    assert row["detectors"][0]["details"]["reason"] == "no_manifest"
    unknown = cli.invoke(
        app, ["analyze", str(clip), "--detectors", "color-cues-lstm-v1,nope", "-c", str(config)]
    )
    assert unknown.exit_code == 2
    assert "unknown detector 'nope'; registered: c2pa-provenance, color-cues-lstm-v1" in (
        unknown.stderr
    )


# --- 15: retry -------------------------------------------------------------------------------


def _failed_folder_job(config_path: Path, name: str) -> tuple[JobQueue, str]:
    """A job that went the whole way: dropped in the inbox, claimed, failed, moved to failed/."""
    cfg = load_config(config_path)
    engine = make_engine(cfg.database.url)
    upgrade(engine)
    queue = JobQueue(engine)
    lifecycle = Lifecycle(queue, cfg.inboxes, cfg.queue)
    lifecycle.prepare_folders()
    inbox = cfg.inboxes[0]
    (inbox.path / name).write_bytes(b"not really a video")
    asyncio.run(lifecycle.accept(inbox, inbox.path / name))
    [claimed] = queue.claim("w", 1, 30)
    queue.fail(claimed.id, "w", "corrupt_video", "moov atom not found")
    job = queue.get(claimed.id)
    assert job is not None
    lifecycle.finalize(job)
    assert (inbox.failed / name).exists()
    assert (inbox.failed / (name + ERROR_SUFFIX)).exists()
    return queue, claimed.id


def test_jobs_retry_takes_the_file_back_and_queues_the_job(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    queue, job_id = _failed_folder_job(config, "clip.mp4")
    result = cli.invoke(app, ["jobs", "retry", job_id[:12], "-c", str(config)])
    assert result.exit_code == 0, result.output
    job = queue.get(job_id)
    assert job is not None
    assert (job.state, job.attempts, job.error_code, job.output_path) == (
        JobState.QUEUED,
        0,
        None,
        None,
    )
    assert Path(job.work_path or "").read_bytes() == b"not really a video"
    assert list((tmp_path / "failed").iterdir()) == []
    again = cli.invoke(app, ["jobs", "retry", job_id, "-c", str(config)])
    assert again.exit_code == 1
    assert "is queued; only a failed or cancelled job can be retried" in again.stderr
    # An upload's copy is removed when its job ends: nothing to run again.
    queue.enqueue(
        job_id="f" * 32,
        sha256="f" * 64,
        size_bytes=1,
        source_kind="upload",
        source_ref="clip.mp4",
        detectors=["color-cues-lstm-v1"],
        work_path=str(tmp_path / "uploads" / "gone.video"),
    )
    queue.cancel("f" * 32)
    queue.mark_finalized("f" * 32)
    every = cli.invoke(app, ["jobs", "retry", "--all-failed", "-c", str(config)])
    assert every.exit_code == 1
    assert "no failed job" in every.stderr
    gone = cli.invoke(app, ["jobs", "retry", "f" * 8, "-c", str(config)])
    assert gone.exit_code == 1
    assert "gone" in gone.stderr
    queue.engine.dispose()


def test_retry_all_failed_with_a_code(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    queue, job_id = _failed_folder_job(config, "one.mp4")
    other = cli.invoke(
        app, ["jobs", "retry", "--all-failed", "--code", "too_long", "-c", str(config)]
    )
    assert other.exit_code == 1
    result = cli.invoke(
        app, ["jobs", "retry", "--all-failed", "--code", "corrupt_video", "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "1 of 1 failed jobs queued again" in result.stdout
    job = queue.get(job_id)
    assert job is not None
    assert job.state is JobState.QUEUED
    queue.engine.dispose()


async def test_api_retry(tmp_path: Path) -> None:
    config_path = write_config(tmp_path, api={"upload_dir": str(tmp_path / "uploads")})
    queue, job_id = await asyncio.to_thread(_failed_folder_job, config_path, "clip.mp4")
    cfg = load_config(config_path)
    served = runner(init_app(cfg, queue, queue.engine, None, environ={}), cfg.api)
    await served.setup()
    try:
        await web.TCPSite(served, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{served.addresses[0][1]}"
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/v1/jobs/{job_id}/retry") as r:
                assert r.status == 200, await r.text()
                doc = await r.json()
            assert (doc["id"], doc["state"], doc["attempts"], doc["error"]) == (
                job_id,
                "queued",
                0,
                None,
            )
            assert (tmp_path / "work" / job_id / "clip.mp4").exists()
            async with session.post(f"{base}/v1/jobs/{job_id}/retry") as r:
                assert r.status == 409
                assert (await r.json())["error"]["code"] == "not_retryable"
            async with session.post(f"{base}/v1/jobs/{'0' * 32}/retry") as r:
                assert r.status == 404
    finally:
        await served.cleanup()
        queue.engine.dispose()
