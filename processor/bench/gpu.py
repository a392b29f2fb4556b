"""The GPU path, proven in one short run on a CUDA host: ``python -m processor.bench.gpu``
(or ``drishtiksha bench gpu``).

First the CUDA tests (those that skip without CUDA: the CPU/CUDA agreement of siglip-lstm in
float32 and bfloat16, and the pipeline's split of a batch that runs out of device memory), then
the older service's three detectors with dummy weights over a few clips at each batch size. One
JSON line comes out (and goes to ``--out``): videos per second, GPU utilisation, decode time
and peak device memory per batch size.

Written for the GPU hosts seen so far: Python 3.12 with torch and transformers but no network
and none of PyAV, pydantic or dlib; ``drishtiksha bench gpu-bundle`` prepares those wheels, the
project, the tests and the clips beforehand. Its imports stay inside the detectors and the
pipeline (no database, no API), so those few wheels are all it needs. dlib's 100 MB landmark
model is too big to carry, so color-cues is timed on the GPU from its prepared input (the
histograms it builds on the CPU, made up here); its CPU stage is measured per core on a CPU
host (``drishtiksha bench detectors``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

SCHEMA = "drishtiksha.bench-gpu/1"
DETECTORS = ("siglip-lstm-v1", "siglip-lstm-v3", "color-cues-lstm-v1")
SIGLIP = DETECTORS[:2]
COLOR_CUES = DETECTORS[2]
# The CUDA tests: every test whose name says cuda, in the files that have them.
TEST_FILES = ("unit/test_siglip_lstm.py", "unit/test_pipeline.py")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
# The target clip: ten seconds of 720p.
CLIP_SECONDS = 10.0
CLIP_SIZE = (1280, 720)
CLIP_FPS = 25


class Refused(Exception):
    """This host cannot run the GPU benchmark; the message says why, in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, as every command of the project answers a mistake.
        self.exit(2, f"error: {self.prog}: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; a bad one exits 2 with one line on stderr."""
    parser = _Parser(
        prog="python -m processor.bench.gpu",
        description="CUDA tests, then siglip-lstm-v1/-v3 and color-cues-lstm-v1 with dummy "
        "weights at each batch size; prints one JSON line.",
    )
    parser.add_argument("--clips", type=Path, help="folder of clips (default: make three)")
    parser.add_argument("--batches", type=_batches, default=[1, 8, 32, 64], help="e.g. 1,8,32")
    parser.add_argument("--tests", type=Path, help="tests folder (default: ./tests)")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmark")
    parser.add_argument("--frames", type=int, default=32, help="frames siglip samples a video")
    parser.add_argument(
        "--decode-workers", type=int, default=os.cpu_count() or 1, help="decoding threads"
    )
    parser.add_argument(
        "--budget", type=float, default=420.0, help="seconds; later batch sizes are skipped"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON line here")
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cpu: a dry run of this script on a CPU host (no tests; its numbers mean nothing)",
    )
    args = parser.parse_args(argv)
    if args.frames < 1 or args.decode_workers < 1:
        parser.error("--frames and --decode-workers must be at least 1")
    return args


def _batches(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not whole numbers and commas") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes are whole numbers of at least 1")
    return sizes


def require_cuda() -> Any:
    """torch, with a CUDA device; ``Refused`` otherwise. Without a GPU driver the answer comes
    without importing torch (seconds)."""
    from processor.loader import _gpu_driver_present

    if not _gpu_driver_present():
        raise Refused("no CUDA device here (no NVIDIA driver); run this on a GPU host")
    try:
        import torch
    except ImportError as exc:
        raise Refused(f"torch cannot be imported: {exc}") from exc
    if not torch.cuda.is_available():
        raise Refused("torch sees no CUDA device (driver present; check CUDA_VISIBLE_DEVICES)")
    return torch


def synthetic_clip(
    path: Path, seconds: float = CLIP_SECONDS, size: tuple[int, int] = CLIP_SIZE, seed: int = 0
) -> Path:
    """An H.264 clip of a moving shape over grain, at a camera's bit rate (2.5 Mbit/s at 720p):
    it costs what footage costs to decode, and is free of anyone's rights."""
    import av
    import numpy as np

    width, height = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 200 // width, ys * 200 // height, np.full_like(xs, 90)], axis=-1)
    frames = round(seconds * CLIP_FPS)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = round(2_500_000 * width * height / (1280 * 720))
        stream.options = {"preset": "veryfast"}
        for i in range(frames):
            image = base + rng.integers(-20, 21, (height, width, 3))
            cx = int((0.2 + 0.6 * i / frames) * width)
            image[height // 3 : 2 * height // 3, max(0, cx - width // 16) : cx + width // 16] = (
                200,
                170,
                150,
            )
            frame = av.VideoFrame.from_ndarray(image.clip(0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def run_cuda_tests(tests: Path) -> dict[str, Any]:
    """Run the CUDA tests with pytest; they must all run (none skipped) and pass."""
    files = [str(tests / f) for f in TEST_FILES if (tests / f).is_file()]
    if not files:
        return {"ok": False, "summary": f"no test files under {tests}"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", *files]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv, cwd=tests.parent, capture_output=True, text=True, timeout=300, check=False
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "summary": "the CUDA tests took over 300 s"}
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else done.stderr.strip()[-300:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    return {
        "ok": done.returncode == 0 and counts.get("passed", 0) >= 3 and not counts.get("skipped"),
        "returncode": done.returncode,
        "counts": counts,
        "summary": summary,
        "seconds": round(time.perf_counter() - start, 1),
        "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:10],
    }


class GpuSampler:
    """GPU utilisation (percent) sampled every ``period_s`` while running: from nvidia-smi,
    else torch's NVML reading, else nothing (None)."""

    def __init__(self, torch: Any, period_s: float = 0.2) -> None:
        self._torch = torch
        self._period_s = period_s
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._smi = shutil.which("nvidia-smi")

    def _read(self) -> float | None:
        if self._smi is not None:
            done = subprocess.run(
                [self._smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            # One line per GPU: a one-GPU host is what this is run on; take the busiest.
            values = [float(v) for v in done.stdout.split() if v.strip().isdigit()]
            return max(values) if values else None
        try:
            return float(self._torch.cuda.utilization())
        except Exception:  # no pynvml: utilisation is reported as unknown
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self._period_s):
            value = self._read()
            if value is not None:
                self._samples.append(value)

    @contextmanager
    def sampling(self) -> Iterator[list[float]]:
        """Sample while the block runs; yields the list the samples go into."""
        self._samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        try:
            yield self._samples
        finally:
            self._stop.set()
            self._thread.join()


def built_detectors(frames: int) -> dict[str, Any]:
    """The three detectors with dummy weights, built but not set up (no device touched)."""
    from detectors import registry

    sections: dict[str, dict[str, Any]] = {
        key: {"weights": "dummy", "num_frames": frames} for key in SIGLIP
    }
    sections[COLOR_CUES] = {"weights": "dummy"}
    return {key: registry.build(key, section) for key, section in sections.items()}


class Device:
    """Where the networks run, and the GPU readings that only CUDA has (None on the CPU)."""

    def __init__(self, torch: Any, name: str) -> None:
        self.torch = torch
        self.name = name
        self.cuda = name == "cuda"

    def synchronize(self) -> None:
        """Wait for the device's queued work, so the clock reads what it cost."""
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        """Start counting peak memory afresh."""
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        """Peak memory allocated by tensors since ``reset_peak``."""
        if not self.cuda:
            return None
        peak: int = self.torch.cuda.max_memory_allocated()
        return round(peak / 2**20, 1)


def _siglip_pipeline(built: dict[str, Any], device: str) -> Any:
    """v1 and v3 with the daemon's default limits; they share one backbone."""
    from processor.config import Config
    from processor.loader import decode_limits
    from processor.pipeline import Pipeline

    for key in SIGLIP:
        built[key].setup(device)
    config = Config()
    return Pipeline(
        {key: built[key] for key in SIGLIP}, decode_limits(config), config.decode.max_side
    )


def _color_cues(det: Any, device: str) -> str:
    """Set color-cues up; what its CPU stage can do here. Its setup loads the landmark model
    last, for the CPU stage; where that model is missing (the GPU hosts), the network is ready
    all the same and is timed alone."""
    try:
        det.setup(device)
    except FileNotFoundError as exc:
        _log(f"color-cues: {exc}; its network alone is timed")
        return f"not run: {exc} (measured per core on a CPU host)"
    return "not run: its histograms are made up here; measured per core on a CPU host"


def _color_cues_inputs(det: Any, count: int, seed: int) -> list[Any]:
    """Prepared inputs as the CPU stage makes them: one histogram per sampled frame."""
    import numpy as np

    from detectors.color_cues import ColorCuesInput, window_starts

    cfg = det.config
    rng = np.random.default_rng(seed)
    n = cfg.num_frames
    return [
        ColorCuesInput(
            histograms=rng.uniform(0, 255, (n, det.input_size)).astype(np.float32),
            timestamps=tuple(i / CLIP_FPS for i in range(n)),
            window_starts=window_starts(n, cfg.sequence_length, cfg.window_stride),
            frames_sampled=n,
        )
        for _ in range(count)
    ]


def bench_batch(
    device: Device,
    pipeline: Any,
    color_cues: Any,
    videos: list[Path],
    workers: int,
    sampler: GpuSampler | None,
) -> dict[str, Any]:
    """One batch through decode, SigLIP v1 + v3 (one shared backbone) and color-cues."""
    from detectors.base import DetectorResult
    from detectors.siglip_lstm import forget_embeddings

    # The clips repeat from batch to batch: each batch must embed its frames anew.
    forget_embeddings()
    device.synchronize()
    device.reset_peak()
    cc_inputs = _color_cues_inputs(color_cues, len(videos), len(videos))
    sampling: AbstractContextManager[list[float]] = (
        sampler.sampling() if sampler is not None else nullcontext([])
    )
    with sampling as utilisation:
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            prepared = list(pool.map(lambda v: pipeline.prepare(v, list(SIGLIP)), videos))
        decoded = time.perf_counter()
        predicted = pipeline.predict(prepared)
        device.synchronize()
        siglip_done = time.perf_counter()
        cc_results = color_cues.predict(cc_inputs)
        device.synchronize()
        end = time.perf_counter()
    failed = [
        f"{key}: {outcome}"
        for p in predicted
        for key, outcome in p.outcomes.items()
        if not isinstance(outcome, DetectorResult)
    ] + [str(r) for r in cc_results if not isinstance(r, DetectorResult)]
    wall = end - start
    return {
        "batch": len(videos),
        "wall_s": round(wall, 3),
        "videos_per_s": round(len(videos) / wall, 2),
        "decode_wall_s": round(decoded - start, 3),
        "decode_cpu_s": round(sum(p.decode_s for p in prepared), 3),
        "prepare_cpu_s": round(sum(sum(p.prepare_s.values()) for p in prepared), 3),
        "siglip_predict_s": round(siglip_done - decoded, 3),
        "color_cues_predict_s": round(end - siglip_done, 4),
        "gpu_util_mean": round(statistics.fmean(utilisation), 1) if utilisation else None,
        "gpu_util_max": max(utilisation) if utilisation else None,
        "peak_memory_mib": device.peak_mib(),
        "failed": failed[:5],
    }


def _clips(folder: Path | None, scratch: Path) -> list[Path]:
    if folder is not None:
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not found:
            raise Refused(f"no clips in {folder}")
        return found
    return [synthetic_clip(scratch / f"clip{i}.mp4", seed=i) for i in range(3)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run; the report as one JSON-ready mapping."""
    started = time.perf_counter()
    if args.device == "cuda":
        torch = require_cuda()
    else:
        import torch
    device = Device(torch, args.device)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if device.cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": " ".join(["python -m processor.bench.gpu", *args.argv]),
    }
    if device.cuda and not args.skip_tests:
        _log("CUDA tests ...")
        report["tests"] = run_cuda_tests(args.tests or Path("tests"))
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        clips = _clips(args.clips, Path(scratch))
        report["clips"] = [p.name for p in clips]
        _log(f"setting up {', '.join(DETECTORS)} (dummy weights) on {args.device} ...")
        built = built_detectors(args.frames)
        pipeline = _siglip_pipeline(built, args.device)
        color_cues = built[COLOR_CUES]
        report["color_cues_prepare"] = _color_cues(color_cues, args.device)
        sampler = GpuSampler(torch) if device.cuda else None
        # Warm-up: CUDA context, kernels chosen, allocator grown; not reported.
        bench_batch(device, pipeline, color_cues, clips[:1], 1, sampler)
        rows = []
        for size in args.batches:
            if time.perf_counter() - started > args.budget:
                rows.append({"batch": size, "skipped": f"over the {args.budget:.0f} s budget"})
                continue
            _log(f"batch of {size} ...")
            videos = [clips[i % len(clips)] for i in range(size)]
            rows.append(
                bench_batch(device, pipeline, color_cues, videos, args.decode_workers, sampler)
            )
        report["batches"] = rows
    report["frames_per_video"] = args.frames
    report["decode_workers"] = args.decode_workers
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    tests_ok = report.get("tests", {"ok": True})["ok"]
    report["ok"] = bool(tests_ok) and all(not r.get("failed") for r in rows)
    return report


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 when the tests passed and every batch ran, 1 when not, 2 when this host
    cannot run it (one line on stderr)."""
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    try:
        report = run(args)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    line = json.dumps(report)
    print(line, flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
