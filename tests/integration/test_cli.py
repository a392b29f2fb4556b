"""The command line, invoked in-process with typer's runner on real files and databases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from processor.cli import app
from tests.media import make_text_as_mp4, make_video

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": f"sqlite:///{tmp_path / 'd.db'}"},
                "device": "cpu",
                "detectors": {"color-cues-lstm-v1": {"weights": "dummy", "num_frames": 8}},
            }
        )
    )
    return path


def test_analyze_judges_good_and_bad_files_without_moving_them(
    tmp_path: Path, config: Path
) -> None:
    good = make_video(tmp_path / "face.mp4", seconds=1.0, fps=10, size=(320, 240), face=True)
    bad = make_text_as_mp4(tmp_path / "notes.mp4")
    result = runner.invoke(app, ["analyze", str(good), str(bad), "--json", "-c", str(config)])
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    by_file = {Path(d["file"]).name: d for d in docs}
    [res] = by_file["face.mp4"]["detectors"]
    assert res["weights"] == "dummy"
    assert res["label"] in ("REAL", "FAKE")
    assert 0.0 <= res["fake_probability"] <= 1.0
    # One detector: the fused verdict is its own.
    verdict = by_file["face.mp4"]["verdict"]
    assert (verdict["label"], verdict["fake_probability"]) == (
        res["label"],
        res["fake_probability"],
    )
    assert by_file["notes.mp4"]["error"]["code"] == "not_a_video"
    assert good.exists()
    assert bad.exists()


def test_config_check_names_the_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("queue:\n  lease: 5\n")
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    assert "queue.lease" in result.output
    assert str(path) in result.output


def test_config_check_accepts_a_good_file(config: Path) -> None:
    result = runner.invoke(app, ["config", "check", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["device"] == "cpu"


def test_db_upgrade_then_jobs_list_is_empty(config: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade", "-c", str(config)]).exit_code == 0
    result = runner.invoke(app, ["jobs", "list", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "state" in result.stdout
    missing = runner.invoke(app, ["jobs", "show", "0" * 32, "-c", str(config)])
    assert missing.exit_code == 1


def test_detectors_lists_color_cues(config: Path) -> None:
    result = runner.invoke(app, ["detectors", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "color-cues-lstm-v1" in result.stdout


def test_workers_lists_heartbeating_workers(config: Path) -> None:
    from processor.config import load_config
    from storage.db import make_engine
    from storage.queue import JobQueue

    assert runner.invoke(app, ["db", "upgrade", "-c", str(config)]).exit_code == 0
    engine = make_engine(load_config(config).database.url)
    JobQueue(engine).heartbeat("host-a:42:abc", "host-a", 42, "worker")
    engine.dispose()
    result = runner.invoke(app, ["workers", "-c", str(config)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "host-a:42:abc" in result.stdout
    assert "yes" in result.stdout


def test_workers_shows_what_each_has_loaded_and_jobs_nobody_can_run(config: Path) -> None:
    from processor.config import load_config
    from storage.db import make_engine
    from storage.queue import JobQueue

    assert runner.invoke(app, ["db", "upgrade", "-c", str(config)]).exit_code == 0
    engine = make_engine(load_config(config).database.url)
    queue = JobQueue(engine)
    caps = {
        "detectors": {"det-a": {"version": "1", "weights_id": "w"}},
        "device": "cuda",
        "visible_devices": "1",
        "version": "0.0.0",
    }
    queue.heartbeat("gpu-host:7:abc", "gpu-host", 7, "worker", capabilities=caps, dead_after_s=9)
    queue.enqueue(
        job_id="f" * 32,
        sha256="0" * 64,
        size_bytes=1,
        source_kind="cli",
        source_ref="/v.mp4",
        detectors=["det-a", "det-b"],
    )
    engine.dispose()
    result = runner.invoke(app, ["workers", "-c", str(config)], terminal_width=240)
    assert result.exit_code == 0, result.output
    assert "cuda (GPU 1)" in result.stdout
    assert "det-a" in result.stdout
    assert "1 needing det-a + det-b" in result.stderr


def test_bench_queue_drains_every_job_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    result = runner.invoke(
        app,
        ["bench", "queue", "--database-url", url, "--jobs", "30", "--workers", "2"],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("│ 2 "))
    assert row.split("│")[2].strip() == "30"


def test_bench_faces_writes_a_report_per_finder(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    make_video(tmp_path / "real" / "face.mp4", seconds=1.0, fps=10)
    (tmp_path / "labels.csv").write_text("file,label\nreal/face.mp4,REAL\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"detectors": {"face-cues-v1": {"run_frames": 8}}}))
    report = tmp_path / "faces.json"

    args = ["--finders", "hog,hog+blazeface", "--pad-to", "1920x1080", "--json", str(report)]
    result = runner.invoke(
        app,
        ["bench", "faces", "--data", str(tmp_path), *args, "--config", str(config)],
        terminal_width=200,
    )

    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert list(written["finders"]) == ["hog", "hog+blazeface"]
    assert written["finders"]["hog"]["clips_with_face"] == 0
    assert written["finders"]["hog+blazeface"]["clips_with_face"] == 1
    assert "--pad-to 1920x1080" in written["command"]
    assert "hog: no face in real/face.mp4" in result.stdout
    bad = runner.invoke(app, ["bench", "faces", "--data", str(tmp_path), "--pad-to", "4k"])
    assert bad.exit_code == 2
    assert "WIDTHxHEIGHT" in bad.output


def test_bench_detectors_reports_each_batch_size_and_the_older_way(
    tmp_path: Path, config: Path
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        make_video(videos / f"v{i}.mp4", seconds=1.0, fps=10, size=(320, 240), face=True)
    report = tmp_path / "bench.json"
    args = ["--videos", str(videos), "--detectors", "color-cues-lstm-v1", "--limit", "3"]
    args += ["--batch", "1,2", "--workers", "2", "--json", str(report), "-c", str(config)]
    result = runner.invoke(
        app,
        ["bench", "detectors", *args],
        terminal_width=200,
    )

    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert [(r["batch"], r["workers"]) for r in written["runs"]] == [(1, 2), (2, 2)]
    for run in written["runs"]:
        assert run["stages_s"]["predict color-cues-lstm-v1"] > 0
        assert run["videos_per_s"] == pytest.approx(3 / run["wall_s"], rel=1e-2)
    assert written["seed_way"]["videos_per_s"] > 0
    best = min(r["wall_s"] for r in written["runs"])
    assert written["ratio"] == pytest.approx(written["seed_way"]["wall_s"] / best, rel=1e-2)
    assert "--batch 1,2 --workers 2" in written["command"]
    bad = runner.invoke(app, ["bench", "detectors", "--batch", "0,2", "-c", str(config)])
    assert bad.exit_code == 2
    assert "--batch" in bad.output


def _tiny_siglip() -> dict[str, object]:
    return {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        "lstm_hidden": 16,
        "num_frames": 4,
    }


def test_weights_import_checks_registers_and_the_detector_loads_it(tmp_path: Path) -> None:
    import torch

    from detectors import registry
    from detectors.manifest import read_manifest

    section = _tiny_siglip()
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": f"sqlite:///{tmp_path / 'd.db'}"},
                "detectors": {"color-cues-lstm-v1": {}, "siglip-lstm-v1": section},
            }
        )
    )
    # A network with real tensors, as a seed checkpoint would hold: the dummy-weights one.
    dummy = registry.build("siglip-lstm-v1", {**section, "weights": "dummy", "seed": 3})
    dummy.setup("cpu")
    net = dummy._net  # type: ignore[attr-defined]
    assert net is not None
    ckpt = tmp_path / "seed.pth"
    torch.save({"model_state_dict": net.state_dict()}, ckpt)
    manifest = tmp_path / "weights" / "manifest.json"
    args = ["weights", "import", str(ckpt), "--detector", "siglip-lstm-v1"]
    result = runner.invoke(app, [*args, "--manifest", str(manifest), "-c", str(cfg_path)])
    assert result.exit_code == 0, result.output
    [entry] = read_manifest(manifest).entries
    copied = manifest.parent / entry.file
    assert copied.read_bytes() == ckpt.read_bytes()
    det = registry.build("siglip-lstm-v1", {**section, "weights": str(copied)})
    det.setup("cpu")
    assert det.weights_id == entry.sha256

    broken = net.state_dict()
    del broken["video_classifier.bias"]
    broken["lstm.extra"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(broken, bad)
    refused = runner.invoke(
        app,
        [*args[:2], str(bad), *args[3:], "--manifest", str(manifest), "-c", str(cfg_path)],
        terminal_width=300,
    )
    assert refused.exit_code == 1
    assert "video_classifier.bias" in refused.output
    assert "lstm.extra" in refused.output
    assert len(read_manifest(manifest).entries) == 1
