"""Checkpoint files: hash them, load them without running pickled code, check them against a
module before use."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from detectors.errors import DetectorError

if TYPE_CHECKING:
    # torch is imported where a checkpoint is read: the detectors that need no network (and
    # every command that only names this module's errors) start without it.
    import torch
    from torch import nn


class WeightsError(DetectorError):
    """The checkpoint does not fit the detector's network."""

    code = "weights_mismatch"


class WeightsUnreadable(WeightsError):
    """The checkpoint file cannot be read as a PyTorch state dict."""

    code = "weights_unreadable"


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints run to gigabytes)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict saved bare or as ``{"model_state_dict": ...}``, onto the CPU.

    ``weights_only=True`` refuses pickled code, so a hostile checkpoint cannot run anything.
    """
    import torch

    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsUnreadable(f"checkpoint not found: {path}") from exc
    except (OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as exc:
        raise WeightsUnreadable(f"cannot load checkpoint {path.name}: {exc}") from exc
    if isinstance(loaded, Mapping) and "model_state_dict" in loaded:
        loaded = loaded["model_state_dict"]
    if not isinstance(loaded, Mapping):
        raise WeightsUnreadable(
            f"checkpoint {path.name} holds a {type(loaded).__name__}, not a state dict"
        )
    not_tensors = sorted(str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise WeightsUnreadable(
            f"checkpoint {path.name} is not a state dict: {_names(not_tensors)} are not tensors"
        )
    return {str(k): v for k, v in loaded.items()}


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise ``WeightsError`` naming every missing, unexpected or wrongly shaped key."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
        for k in sorted(expected.keys() & state.keys())
        if tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_names(wrong)}")
    if problems:
        raise WeightsError(
            f"checkpoint does not fit {type(module).__name__}: " + "; ".join(problems)
        )


def load_checked(module: nn.Module, path: str | Path) -> str:
    """Load ``path`` into ``module`` after a strict key and shape check; returns its sha256."""
    state = load_state_dict(path)
    check_state_dict(module, state)
    module.load_state_dict(state, strict=True)
    return sha256_file(path)


def _names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
