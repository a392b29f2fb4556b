"""Detectors by key. Each plugin module is imported on demand and on its own, so a backend that
cannot load (a missing wheel, a broken CUDA library) takes only its own detectors down."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detectors.base import Detector
from detectors.errors import DetectorError

if TYPE_CHECKING:
    from detectors.training import Trainer

# key -> module that defines the detector class with that key.
_PLUGINS: dict[str, str] = {
    "c2pa-provenance": "detectors.provenance",
    "color-cues-lstm-v1": "detectors.color_cues",
    "face-cues-v1": "detectors.face_cues",
    "onnx-face-classifier": "detectors.onnx_face",
    "siglip-lstm-v1": "detectors.siglip_lstm",
    "siglip-lstm-v3": "detectors.siglip_lstm",
}


class UnknownDetector(DetectorError, KeyError):
    """No detector is registered under this key."""

    code = "unknown_detector"

    def __str__(self) -> str:
        # KeyError would quote the message like a key.
        return self.message


def _load(
    keys: Iterable[str] | None = None,
) -> tuple[dict[str, type[Detector[Any]]], dict[str, str]]:
    # Only the plugins asked for: importing one costs what its backend costs (torch and
    # transformers take seconds), and a command that uses two detectors pays for two.
    found: dict[str, type[Detector[Any]]] = {}
    failed: dict[str, str] = {}
    wanted = _PLUGINS if keys is None else {k: _PLUGINS[k] for k in keys if k in _PLUGINS}
    for key, module_name in wanted.items():
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


def keys() -> list[str]:
    """Every registered key, sorted, without importing any plugin."""
    return sorted(_PLUGINS)


def available(keys: Iterable[str] | None = None) -> dict[str, type[Detector[Any]]]:
    """Detector classes that imported, by key (of ``keys`` only, when given)."""
    return _load(keys)[0]


def unavailable(keys: Iterable[str] | None = None) -> dict[str, str]:
    """Why each registered detector that did not import is missing, by key (of ``keys`` only,
    when given)."""
    return _load(keys)[1]


def find(key: str) -> type[Detector[Any]] | None:
    """The detector class registered as ``key``, importing its plugin alone; None when the key
    is unknown or its plugin does not import."""
    return _load([key])[0].get(key)


def build(key: str, raw_config: Mapping[str, Any]) -> Detector[Any]:
    """A detector for ``key`` with ``raw_config`` validated by its config class.

    A pydantic ``ValidationError`` propagates as is; the caller adds file and key context.
    """
    cls = find(key)
    if cls is None:
        found, failed = _load()
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


def trainer(key: str) -> Trainer | None:
    """The trainer of the detector ``key``, or None when it cannot be trained (or does not
    load)."""
    cls = find(key)
    if cls is None or cls.trainer is None:
        return None
    module_name, _, name = cls.trainer.partition(":")
    factory: type[Trainer] = getattr(importlib.import_module(module_name), name)
    return factory(key)


def trainable() -> list[str]:
    """Keys of the registered detectors that can be trained."""
    return sorted(key for key, cls in available().items() if cls.trainer is not None)
