"""Detectors from the configuration: validated, built and set up on a device.

Kept apart from the daemon's wiring so that commands which only check or run detectors
(``config check``, ``analyze``, the benchmarks) start without the API, the queue and the ingest.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from detectors import registry
from detectors.frames import DecodeLimits
from processor.config import Config, ConfigError, describe_errors

if TYPE_CHECKING:
    from detectors.base import Detector
    from processor.pipeline import Pipeline

log = logging.getLogger(__name__)

# Where a GPU driver shows itself (NVIDIA; ROCm's kernel driver). Without one, CUDA cannot be
# available, and asking torch would cost seconds of import for the same answer.
_GPU_DRIVER_PATHS = (Path("/proc/driver/nvidia"), Path("/dev/nvidiactl"), Path("/dev/kfd"))


def _gpu_driver_present() -> bool:
    return any(p.exists() for p in _GPU_DRIVER_PATHS)


def resolve_device(device: str) -> str:
    """``auto`` means the first CUDA device when there is one, else the CPU."""
    if device == "cpu" or (device == "auto" and not _gpu_driver_present()):
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device} requested but CUDA is not available")
    return device


def decode_limits(config: Config) -> DecodeLimits:
    """The configured limits in the decoder's terms."""
    lim = config.limits
    return DecodeLimits(
        max_file_bytes=lim.max_file_bytes,
        max_duration_s=lim.max_duration_s,
        max_pixels=lim.max_pixels,
        max_decoded_frames=lim.max_decoded_frames,
    )


def build_detectors(config: Config, keys: list[str]) -> dict[str, Detector[Any]]:
    """Validate each detector's section (errors name the key) and build it, not yet loaded.
    Only the plugins of ``keys`` are imported."""
    built: dict[str, Detector[Any]] = {}
    for key in keys:
        try:
            built[key] = registry.build(key, config.detectors[key])
        except ValidationError as exc:
            cls = registry.find(key)
            assert cls is not None  # build validated with this class
            problems = "; ".join(describe_errors(exc, cls.config_class, f"detectors.{key}."))
            raise ConfigError(f"invalid detector configuration: {problems}") from exc
        except registry.UnknownDetector as exc:
            raise ConfigError(f"detectors.{key}: {exc}") from exc
    return built


def load_pipeline(config: Config, keys: list[str] | None = None) -> Pipeline:
    """Build and set up the detectors ``keys`` (default: every one the inboxes use) on the
    configured device, in the pipeline every entry point runs them through. Raises
    ConfigError for a bad section and DetectorError for weights that do not load."""
    from processor.pipeline import Pipeline

    device = resolve_device(config.device)
    detectors = build_detectors(config, config.all_detector_keys() if keys is None else keys)
    for key, det in detectors.items():
        det.setup(device)
        if det.weights_id == "dummy":
            log.warning(
                "detector %s %s runs with weights: dummy (seeded random weights): its verdicts "
                "are meaningless and every one is labelled so",
                key,
                det.version,
            )
        else:
            log.info("detector %s %s on %s, weights %s", key, det.version, device, det.weights_id)
    # After setup, which imports torch for the detectors that have a network: the others
    # never need it, and the setting matters for inference.
    if device == "cpu" and config.cpu_threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(config.cpu_threads)
    return Pipeline(detectors, decode_limits(config), config.decode.max_side)
