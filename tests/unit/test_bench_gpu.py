"""The GPU benchmark's parts that run anywhere: its command line, its clean refusal without
CUDA, the clips it makes, and that what it imports is what a GPU host has plus the bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from detectors.frames import DecodeLimits, probe
from processor.bench import gpu as bench_gpu
from processor.bench.gpu_bundle import CARRIED, NOT_ON_GPU_HOSTS
from processor.loader import _gpu_driver_present

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_issue_s_batch_sizes() -> None:
    args = bench_gpu.parse_args([])
    assert args.batches == [1, 8, 32, 64]
    assert args.frames == 32
    assert args.clips is None
    assert not args.skip_tests


def test_batch_sizes_and_options_parse() -> None:
    args = bench_gpu.parse_args(["--batches", "2,4", "--skip-tests", "--out", "x/b.json"])
    assert args.batches == [2, 4]
    assert args.skip_tests
    assert args.out == Path("x/b.json")


@pytest.mark.parametrize(
    "bad", [["--batches", "0,8"], ["--batches", "a"], ["--frames", "0"], ["--device", "tpu"]]
)
def test_a_bad_command_line_exits_2_with_one_line(
    bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench_gpu.parse_args(bad)
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: python -m processor.bench.gpu: ")


@pytest.mark.skipif(_gpu_driver_present(), reason="this host has a GPU driver")
def test_without_cuda_it_refuses_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "processor.bench.gpu", "--out", "never.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: no CUDA device here")
    assert not (ROOT / "never.json").exists()


def test_its_imports_need_only_the_carried_wheels() -> None:
    """Building the three detectors and importing the CUDA tests, as the GPU host does, loads
    every carried wheel's module and none of the project's other dependencies a GPU host
    lacks (SQLAlchemy, watchdog, boto, ...)."""
    probe_code = (
        "import json, sys\n"
        "from processor.bench import gpu as bench_gpu\n"
        "bench_gpu.built_detectors(4)\n"
        "import tests.unit.test_siglip_lstm, tests.unit.test_pipeline\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe_code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert set(CARRIED.values()) <= loaded, "each carried wheel is needed"
    assert not loaded & NOT_ON_GPU_HOSTS


def test_the_synthetic_clip_decodes(tmp_path: Path) -> None:
    path = bench_gpu.synthetic_clip(tmp_path / "c.mp4", seconds=0.4, size=(160, 96), seed=1)
    info = probe(path, DecodeLimits(10**8, 60, 10**7, 10**4))
    assert (info.width, info.height) == (160, 96)
    assert info.duration_s == pytest.approx(0.4, abs=0.1)


def test_a_cpu_dry_run_goes_through_every_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The benchmark's own code, run on the CPU with tiny clips, so that a GPU host's first run
    does not find its bugs: decode, both SigLIP detectors, color-cues, the JSON line."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(2):
        bench_gpu.synthetic_clip(clips / f"c{i}.mp4", seconds=0.4, size=(96, 64), seed=i)
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--clips", str(clips), "--batches", "1,3", "--frames", "2"]
    assert bench_gpu.main([*argv, "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert json.loads(line) == json.loads(out.read_text())
    report = json.loads(line)
    assert report["ok"]
    assert "tests" not in report, "the CUDA tests run on CUDA only"
    assert [row["batch"] for row in report["batches"]] == [1, 3]
    for row in report["batches"]:
        assert row["failed"] == []
        assert row["videos_per_s"] > 0
        assert row["peak_memory_mib"] is None
