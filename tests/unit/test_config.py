"""Configuration: defaults, YAML, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.config import ConfigError, load_config
from processor.daemon import build_detectors


def test_embedded_defaults_when_no_file_resolve_against_the_start_directory(tmp_path: Path) -> None:
    cfg = load_config(None, environ={}, base=tmp_path)
    assert cfg.database.url == f"sqlite:///{tmp_path / 'var' / 'drishtiksha.db'}"
    [inbox] = cfg.inboxes
    assert inbox.path == tmp_path / "var" / "inbox"
    assert inbox.done == tmp_path / "var" / "done"
    assert cfg.api.port == 8000
    # An inbox that names no detectors uses every configured one.
    assert inbox.detectors == list(cfg.detectors) == ["face-cues-v1", "c2pa-provenance"]
    assert cfg.detectors["face-cues-v1"] == {"weights": "manifest"}
    assert cfg.api.default_model == "face-cues-v1"  # the first inbox's first detector


def test_sources_without_detectors_take_every_configured_one(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "detectors:\n  c2pa-provenance: {}\n"
        "inboxes:\n  - {name: all}\n  - {name: one, path: in2, detectors: [c2pa-provenance]}\n"
        "sqs:\n  - {name: q, queue_url: 'http://127.0.0.1:1/q'}\n"
    )
    cfg = load_config(path, environ={}, base=tmp_path)
    assert [i.detectors for i in cfg.inboxes] == [["c2pa-provenance"], ["c2pa-provenance"]]
    assert cfg.sqs[0].detectors == ["c2pa-provenance"]


def test_the_shipped_default_file_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "default.yaml", environ={}, base=root)
    assert cfg.detectors["face-cues-v1"]["weights"] == "manifest"
    built = build_detectors(cfg, cfg.all_detector_keys())
    # The shipped weights load, with the operating point measured for them.
    built["face-cues-v1"].setup("cpu")
    assert built["face-cues-v1"].weights_id != "dummy"
    assert built["face-cues-v1"].operating.held_out is not None


def test_environment_overrides_nested_keys(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        environ={"DRISHTIKSHA_API__PORT": "9100", "DRISHTIKSHA_DEVICE": "cpu"},
        base=tmp_path,
    )
    assert cfg.api.port == 9100
    assert cfg.device == "cpu"


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("batching:\n  max_video: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={}, base=tmp_path)
    assert "batching.max_video" in str(err.value)
    assert str(path) in str(err.value)


def test_bad_value_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("database:\n  url: mysql://x\n")
    with pytest.raises(ConfigError, match=r"database\.url"):
        load_config(path, environ={}, base=tmp_path)


def test_bad_environment_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"api\.port"):
        load_config(None, environ={"DRISHTIKSHA_API__PORT": "many"}, base=tmp_path)


def test_inbox_must_name_configured_detectors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("inboxes:\n  - name: a\n    detectors: [siglip-lstm-v9]\n")
    with pytest.raises(ConfigError, match="siglip-lstm-v9"):
        load_config(path, environ={}, base=tmp_path)


def test_detector_section_errors_name_the_detector_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("detectors:\n  color-cues-lstm-v1:\n    num_frame: 3\n")
    cfg = load_config(path, environ={}, base=tmp_path)
    with pytest.raises(ConfigError, match=r"detectors\.color-cues-lstm-v1\.num_frame"):
        build_detectors(cfg, ["color-cues-lstm-v1"])


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={}, base=tmp_path)


def test_no_detector_at_all_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("detectors: {}\n")
    with pytest.raises(ConfigError, match="'default' has no detectors"):
        load_config(path, environ={}, base=tmp_path)


def test_the_file_is_found_in_order_and_named(tmp_path: Path) -> None:
    system = tmp_path / "etc.yaml"
    system.write_text("device: cpu\n")
    local = tmp_path / "configs" / "default.yaml"
    local.parent.mkdir()
    local.write_text("device: auto\n")
    env_file = tmp_path / "env.yaml"
    env_file.write_text("device: cpu\n")
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("device: cpu\n")
    env = {"DRISHTIKSHA_CONFIG": str(env_file)}

    def source(path: Path | None, environ: dict[str, str], etc: Path) -> str:
        return load_config(path, environ=environ, base=tmp_path, system=etc).source

    assert source(explicit, env, system) == f"{explicit} (--config)"
    assert source(None, env, system) == f"{env_file} (DRISHTIKSHA_CONFIG)"
    assert source(None, {}, system) == str(system)
    assert source(None, {}, tmp_path / "none.yaml") == str(local)
    local.unlink()
    assert source(None, {}, tmp_path / "none.yaml") == "embedded defaults"
    with pytest.raises(ConfigError, match="DRISHTIKSHA_CONFIG"):
        source(None, {"DRISHTIKSHA_CONFIG": str(tmp_path / "gone.yaml")}, system)
