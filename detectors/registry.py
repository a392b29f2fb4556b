"""Detectors by key. Each plugin module is imported on demand and on its own, so a backend that
cannot load (a missing wheel, a broken CUDA library) takes only its own detectors down."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detectors.base import Detector
from detectors.errors import DetectorError

# key -> module that defines the detector class with that key.
_PLUGINS: dict[str, str] = {
    "c2pa-provenance": "detectors.provenance",
    "color-cues-lstm-v1": "detectors.color_cues",
    "face-cues-v1": "detectors.face_cues",
    "siglip-lstm-v1": "detectors.siglip_lstm",
    "siglip-lstm-v3": "detectors.siglip_lstm",
}


class UnknownDetector(DetectorError, KeyError):
    """No detector is registered under this key."""

    code = "unknown_detector"

    def __str__(self) -> str:
        # KeyError would quote the message like a key.
        return self.message


def _load() -> tuple[dict[str, type[Detector[Any]]], dict[str, str]]:
    found: dict[str, type[Detector[Any]]] = {}
    failed: dict[str, str] = {}
    for key, module_name in _PLUGINS.items():
        try:
            module = importlib.import_module(module_name)
        # torch raises OSError, not ImportError, when one of its shared libraries is broken.
        except (ImportError, OSError) as exc:
            failed[key] = f"cannot import {module_name}: {exc}"
            continue
        classes = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, Detector)
            and getattr(obj, "key", None) == key
        ]
        if len(classes) == 1:
            found[key] = classes[0]
        else:
            failed[key] = f"{module_name} defines {len(classes)} detector classes with key {key}"
    return found, failed


def available() -> dict[str, type[Detector[Any]]]:
    """Detector classes that imported, by key."""
    return _load()[0]


def unavailable() -> dict[str, str]:
    """Why each registered detector that did not import is missing, by key."""
    return _load()[1]


def build(key: str, raw_config: Mapping[str, Any]) -> Detector[Any]:
    """A detector for ``key`` with ``raw_config`` validated by its config class.

    A pydantic ``ValidationError`` propagates as is; the caller adds file and key context.
    """
    found, failed = _load()
    cls = found.get(key)
    if cls is None:
        known = ", ".join(sorted(found)) or "none"
        message = f"unknown detector {key!r}; available: {known}"
        if key in failed:
            message = f"detector {key!r} is unavailable ({failed[key]}); available: {known}"
        raise UnknownDetector(message)
    config = cls.config_class.model_validate(dict(raw_config))
    return cls(config)


def check_checkpoint(key: str, raw_config: Mapping[str, Any], path: Path) -> str:
    """Check the checkpoint at ``path`` against the network that ``raw_config`` configures for
    ``key``, on the CPU, without setting the detector up; returns the file's sha256.

    Raises ``WeightsError`` (from ``detectors.weights``) naming every bad key,
    and what ``build`` raises.
    """
    return build(key, raw_config).check_checkpoint(path)
