"""``bench startup``'s scratch configuration: the same detectors, never the live state."""

from __future__ import annotations

from pathlib import Path

from processor.bench.startup import Timing, scratch_config
from processor.config import Config


def test_scratch_config_keeps_the_detectors_and_replaces_all_state(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "cc.pt").write_bytes(b"x")
    raw = {
        "database": {"url": "postgresql+psycopg://live@db/prod"},
        "device": "cpu",
        "inboxes": [
            {
                "name": "newsroom",
                "path": "/srv/inbox",
                "work": "/srv/work",
                "done": "/srv/done",
                "failed": "/srv/failed",
                "detectors": ["color-cues-lstm-v1"],
            }
        ],
        "detectors": {
            "color-cues-lstm-v1": {"weights": "models/cc.pt", "num_frames": 16},
            "face-cues-v1": {"weights": "manifest"},
        },
        "api": {"host": "0.0.0.0", "port": 80, "health_requires_key": True},
        "sqs": [{"name": "q", "queue_url": "https://sqs.example/q", "work": "/srv/sqs"}],
        "webhooks": {"targets": [{"url": "https://hooks.example/x"}]},
        "blobs": {"kind": "s3", "bucket": "live"},
    }

    config = scratch_config(raw, 18123, tmp_path)

    assert config["database"] == {"url": "sqlite:///var/drishtiksha.db"}
    [inbox] = config["inboxes"]
    assert inbox["detectors"] == ["color-cues-lstm-v1"]
    assert {inbox[k] for k in ("path", "work", "done", "failed")} == {
        "var/newsroom/path",
        "var/newsroom/work",
        "var/newsroom/done",
        "var/newsroom/failed",
    }
    assert config["api"] == {"host": "127.0.0.1", "port": 18123, "health_requires_key": False}
    assert not {"sqs", "webhooks", "blobs"} & set(config)
    cc = config["detectors"]["color-cues-lstm-v1"]
    assert cc == {"weights": str(tmp_path / "models" / "cc.pt"), "num_frames": 16}
    assert config["detectors"]["face-cues-v1"] == {"weights": "manifest"}
    # What the scratch daemon is started with validates as a configuration.
    Config.model_validate(config)


def test_embedded_defaults_get_a_scratch_inbox() -> None:
    config = scratch_config({}, 18124, Path("/nowhere"))
    assert config["inboxes"][0]["path"] == "var/default/path"
    Config.model_validate(config)


def test_a_timing_reports_its_median_and_target() -> None:
    timing = Timing("config check", ["drishtiksha", "config", "check"], 2.0, [1.2, 0.9, 3.1])
    summary = timing.summary()
    assert summary["median_s"] == 1.2
    assert (summary["min_s"], summary["max_s"]) == (0.9, 3.1)
    assert summary["within_target"] is True
    assert summary["runs"] == 3
