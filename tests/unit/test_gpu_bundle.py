"""The GPU bundle's layout, size limit and offline installer, with the package index and the
wheel build stood in for (the real download is run by hand: docs/benchmarks.md)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import pytest

from processor.bench import gpu_bundle
from processor.bench.gpu import TEST_FILES, synthetic_clip
from processor.bench.gpu_bundle import CARRIED, BundleError, build_bundle, pins


def _fake_download(requirements: Sequence[str], dest: Path, python_version: str) -> None:
    assert python_version == "3.12"
    for requirement in requirements:
        name, ver = requirement.split("==")
        (dest / f"{name.replace('-', '_')}-{ver}-cp312-cp312-manylinux2014_x86_64.whl").write_bytes(
            b"wheel"
        )


def _fake_wheel(root: Path, dest: Path) -> None:
    assert (root / "pyproject.toml").is_file()
    (dest / "drishtiksha-0.1.0-py3-none-any.whl").write_bytes(b"project")


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for i, seconds in enumerate([0.8, 0.2, 0.4]):
        synthetic_clip(folder / f"v{i}.mp4", seconds=seconds, size=(96, 64), seed=i)
    return folder


def test_pins_are_the_versions_installed_here() -> None:
    assert pins() == [f"{name}=={version(name)}" for name in CARRIED]


def test_the_bundle_holds_wheels_tests_clips_and_an_offline_installer(
    tmp_path: Path, videos: Path
) -> None:
    out = tmp_path / "bundle"
    bundle = build_bundle(
        out, videos=videos, clips=2, download=_fake_download, build_wheel=_fake_wheel
    )
    names = {path for path, _ in bundle.files}
    wheels = {n for n in names if n.startswith("wheels/")}
    assert len(wheels) == len(CARRIED) + 1
    assert "wheels/drishtiksha-0.1.0-py3-none-any.whl" in wheels
    assert {f"tests/{f}" for f in TEST_FILES} <= names
    assert {"tests/__init__.py", "tests/unit/__init__.py", "tests/media.py"} <= names
    # The two smallest clips.
    assert {n for n in names if n.startswith("clips/")} == {"clips/v1.mp4", "clips/v2.mp4"}
    assert bundle.total_bytes == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    run_sh = (out / "run.sh").read_text()
    assert len(run_sh.splitlines()) == 2, "a shebang and one command"
    assert "pip install --quiet --no-index --find-links wheels" in run_sh
    assert "-m processor.bench.gpu --clips clips --tests tests" in run_sh
    assert os.access(out / "run.sh", os.X_OK)
    assert "pythonpath = ." in (out / "pytest.ini").read_text()


def test_a_bundle_over_64_mib_is_refused(tmp_path: Path, videos: Path) -> None:
    def big_download(requirements: Sequence[str], dest: Path, python_version: str) -> None:
        with (dest / "av-0-cp312-cp312-manylinux2014_x86_64.whl").open("wb") as f:
            f.truncate(gpu_bundle.LIMIT_BYTES + 1)  # sparse: no disk is used

    with pytest.raises(BundleError, match="over the 64 MiB"):
        build_bundle(
            tmp_path / "b", videos=videos, clips=1, download=big_download, build_wheel=_fake_wheel
        )


def test_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="not empty"):
        build_bundle(tmp_path, download=_fake_download, build_wheel=_fake_wheel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
