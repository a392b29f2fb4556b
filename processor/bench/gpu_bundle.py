"""``drishtiksha bench gpu-bundle``: everything ``processor.bench.gpu`` needs on a GPU host that
has no network, prepared here in one folder of at most 64 MiB.

The GPU hosts seen have Python 3.12 with torch, transformers, NumPy, OpenCV, PyYAML, rich,
typer and pytest, and none of PyAV, SQLAlchemy, watchdog, pydantic or dlib. The
benchmark's imports stay in the detectors and the pipeline, so it needs only the wheels in
``CARRIED`` (a test checks that each is imported and that nothing else missing there is). The
folder holds those wheels (the versions installed here, built for the host's Python), this
project's wheel, the CUDA tests, a few clips and ``run.sh``, which installs the wheels offline
into a folder of their own and runs the benchmark.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

LIMIT_BYTES = 64 * 2**20
# Distribution -> the module the benchmark imports from it. PyAV decodes; pydantic (with its
# core and helpers) validates detector settings; dlib is imported by the face finder that
# color-cues builds.
CARRIED = {
    "av": "av",
    "pydantic": "pydantic",
    "pydantic-core": "pydantic_core",
    "annotated-types": "annotated_types",
    "typing-inspection": "typing_inspection",
    "dlib-bin": "dlib",
}
# Modules the project uses that GPU hosts lack and the benchmark must therefore never import.
NOT_ON_GPU_HOSTS = frozenset(
    {
        "sqlalchemy",
        "alembic",
        "watchdog",
        "aiobotocore",
        "botocore",
        "c2pa",
        "prometheus_client",
        "psycopg",
        "matplotlib",
        "face_recognition_models",
        "onnxruntime",
        "ai_edge_litert",
        "sklearn",
        "skimage",
        "aiohttp_jinja2",
    }
)
# Beside processor.bench.gpu's TEST_FILES, the package files those tests import.
TEST_SUPPORT = ("__init__.py", "unit/__init__.py", "media.py")
# The manylinux tags the hosts' glibc takes (2014 = 2_17).
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
PYTEST_INI = """[pytest]
pythonpath = .
addopts = -p no:cacheprovider
"""
# Run from anywhere; installs into ./site (never into the host's Python) and leaves the JSON
# line in $OUT when that is set (the device runner's folder that comes back), else here.
RUN_SH = """#!/bin/sh
cd "$(dirname "$0")" && "${PYTHON:-python3}" -m pip install --quiet --no-index \
--find-links wheels --no-deps --target site wheels/*.whl && PYTHONPATH="$PWD/site" \
"${PYTHON:-python3}" -m processor.bench.gpu --clips clips --tests tests \
--out "${OUT:-.}/bench-gpu.json" "$@"
"""


class BundleError(Exception):
    """The bundle cannot be made; the message says what to do."""


@dataclass
class Bundle:
    """What was written: (path relative to the folder, bytes) per file."""

    folder: Path
    files: list[tuple[str, int]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """The folder's size."""
        return sum(size for _, size in self.files)


def pins() -> list[str]:
    """``name==version`` of each carried wheel, as installed here (what the tests ran on)."""
    return [f"{name}=={version(name)}" for name in CARRIED]


def _pip() -> list[str]:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found is not None:
            return [found]
    uvx = shutil.which("uvx")
    if uvx is not None:
        return [uvx, "pip"]
    raise BundleError("no pip here (nor uvx): install pip to download the wheels")


def download_wheels(requirements: Sequence[str], dest: Path, python_version: str) -> None:
    """Binary wheels of exactly ``requirements`` (no dependencies) for CPython
    ``python_version`` on manylinux x86_64, from the package index."""
    abi = "cp" + python_version.replace(".", "")
    argv = [*_pip(), "download", "--quiet", "--only-binary=:all:", "--no-deps"]
    argv += ["--python-version", python_version, "--implementation", "cp", "--abi", abi]
    for platform in PLATFORMS:
        argv += ["--platform", platform]
    argv += ["--dest", str(dest), *requirements]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-2:])
        raise BundleError(f"pip download failed: {tail}")


def source_root() -> Path:
    """The source checkout this module runs from; a wheel is built from it."""
    # processor/bench/ sits two levels below the checkout.
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or 'name = "drishtiksha"' not in pyproject.read_text():
        raise BundleError(f"{root} is not the project's source checkout: run this from one")
    return root


def project_wheel(root: Path, dest: Path) -> None:
    """Build the project's wheel from ``root`` into ``dest`` (uv, else pip)."""
    uv = shutil.which("uv")
    if uv is not None:
        argv = [uv, "build", "--wheel", "--quiet", "--out-dir", str(dest), str(root)]
    else:
        argv = [*_pip(), "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(root)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-2:])
        raise BundleError(f"building the project's wheel failed: {tail}")


def _pick_clips(videos: Path, count: int, dest: Path) -> None:
    from processor.bench.gpu import VIDEO_SUFFIXES

    # Small ones first: the whole folder has 64 MiB, and PyAV's wheel takes half of it.
    found = sorted(
        (p for p in videos.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES),
        key=lambda p: (p.stat().st_size, p.name),
    )
    if len(found) < count:
        raise BundleError(f"{videos} holds {len(found)} clips; {count} wanted")
    for path in found[:count]:
        shutil.copyfile(path, dest / path.name)


def build_bundle(
    out: Path,
    *,
    videos: Path | None = None,
    clips: int = 3,
    python_version: str = "3.12",
    download: Callable[[Sequence[str], Path, str], None] = download_wheels,
    build_wheel: Callable[[Path, Path], None] = project_wheel,
) -> Bundle:
    """Fill ``out`` (new or empty): wheels/, tests/, clips/, pytest.ini and run.sh. Clips
    come from ``videos`` (the smallest) or are generated (ten seconds of 720p each). Raises
    ``BundleError`` when a step fails or the folder exceeds ``LIMIT_BYTES``."""
    from processor.bench.gpu import TEST_FILES, synthetic_clip

    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} is not empty")
    root = source_root()
    tests = root / "tests"
    for name in (*TEST_SUPPORT, *TEST_FILES):
        if not (tests / name).is_file():
            raise BundleError(f"{tests / name} is missing")
    out.mkdir(parents=True, exist_ok=True)
    wheels = out / "wheels"
    wheels.mkdir()
    download(pins(), wheels, python_version)
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as scratch:
        build_wheel(root, Path(scratch))
        built = sorted(Path(scratch).glob("drishtiksha-*.whl"))
        if len(built) != 1:
            raise BundleError(f"expected one drishtiksha wheel, found {len(built)}")
        shutil.copyfile(built[0], wheels / built[0].name)
    for name in (*TEST_SUPPORT, *TEST_FILES):
        (out / "tests" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tests / name, out / "tests" / name)
    (out / "clips").mkdir()
    if videos is not None:
        _pick_clips(videos, clips, out / "clips")
    else:
        for i in range(clips):
            synthetic_clip(out / "clips" / f"clip{i}.mp4", seed=i)
    (out / "pytest.ini").write_text(PYTEST_INI)
    run_sh = out / "run.sh"
    run_sh.write_text(RUN_SH)
    run_sh.chmod(0o755)
    bundle = Bundle(out)
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        bundle.files.append((path.relative_to(out).as_posix(), path.stat().st_size))
    if bundle.total_bytes > LIMIT_BYTES:
        raise BundleError(
            f"{out} holds {bundle.total_bytes / 2**20:.1f} MiB, over the 64 MiB a GPU run may "
            "carry: take fewer or smaller clips"
        )
    return bundle
