"""Which GPU a templated worker uses, and the heartbeat settings a configuration may hold."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from processor.config import ConfigError, QueueConfig, load_config
from processor.fleet import gpu_of_instance, pin_gpu


@pytest.mark.parametrize(
    ("visible", "gpu"),
    [
        ("0", "0"),  # drishtiksha-worker@0
        ("0-b", "0"),  # a second worker on GPU 0
        ("3-second", "3"),
        ("12-1", "12"),
        ("0,1", "0,1"),  # CUDA's own values pass untouched
        ("GPU-8f1b6a52-1f0e-4b6c-9e0e-1a2b3c4d5e6f", "GPU-8f1b6a52-1f0e-4b6c-9e0e-1a2b3c4d5e6f"),
        ("MIG-3a2b1c0d-0000-1111-2222-333344445555", "MIG-3a2b1c0d-0000-1111-2222-333344445555"),
        ("", ""),
        ("-1", "-1"),  # CUDA's "no GPU"
    ],
)
def test_the_gpu_is_the_instance_name_before_the_dash(visible: str, gpu: str) -> None:
    assert gpu_of_instance(visible) == gpu


def test_pin_gpu_rewrites_only_an_instance_style_value() -> None:
    environ = {"CUDA_VISIBLE_DEVICES": "1-b", "OTHER": "x"}
    assert pin_gpu(environ) == "1"
    assert environ == {"CUDA_VISIBLE_DEVICES": "1", "OTHER": "x"}
    unset: dict[str, str] = {}
    assert pin_gpu(unset) is None
    assert unset == {}


def test_heartbeat_defaults_fit_any_lease() -> None:
    default = QueueConfig()
    assert (default.heartbeat_s, default.dead_after_s, default.lease_s) == (2.0, 10.0, 120.0)
    short = QueueConfig(lease_s=3)
    assert short.dead_after_s == 1.5
    assert short.heartbeat_s == 0.5
    assert QueueConfig(lease_s=60, dead_after_s=30, heartbeat_s=10).dead_after_s == 30


@pytest.mark.parametrize(
    ("queue", "message"),
    [
        ({"heartbeat_s": 30}, "heartbeat_s (30) must be at most a third of dead_after_s (10)"),
        ({"dead_after_s": 90}, "dead_after_s (90) must be at most half of lease_s (120)"),
        ({"lease_s": 10, "dead_after_s": 6}, "dead_after_s (6) must be at most half of lease_s"),
    ],
)
def test_heartbeats_that_do_not_fit_fail_in_one_line(
    tmp_path: Path, queue: dict[str, float], message: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"queue": queue}))
    with pytest.raises(ConfigError) as failed:
        load_config(path, environ={}, base=tmp_path, system=tmp_path / "absent.yaml")
    [line] = str(failed.value).splitlines()
    assert line.startswith(f"{path} (--config): queue: ")
    assert message in line
