"""A torch module's forward pass run by ONNX Runtime on the CPU: exported once from the loaded
module, optionally quantised to int8 weights, cached on disk.

On two CPU cores onnxruntime ran SigLIP-base 1.3x as fast as torch with float32 weights and
2.6x with int8 ones, which moved P(fake) by at most 5e-4 over 20 clips
(docs/reports/siglip-onnx-agreement.json). The export is made from the very module the
detector loaded, so the graph holds exactly its weights.

Each cached model is ``<key>.onnx`` plus ``<key>.sha256``, the model's own sha256, written
after it; the key is the sha256 of what identifies the module's weights and architecture,
the quantisation and the exporter's versions. Both files are written to a temporary name and
renamed, so a reader never sees half a file; a model whose bytes do not match its
``.sha256`` (a crash between the two renames, a damaged disk, two processes exporting at
once) or that onnxruntime cannot load is exported again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from detectors.weights import WeightsUnreadable

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch
    from torch import nn

Quantize = Literal["int8", "none"]

_INPUT = "input"
_OUTPUT = "output"
_OPSET = 17

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which a container or ``taskset``
    narrows, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def can_export() -> bool:
    """Whether this environment can export: torch's exporter writes through the ``onnx``
    package."""
    import importlib.util

    return importlib.util.find_spec("onnx") is not None


def exporter_versions() -> dict[str, str]:
    """The libraries that decide the exported graph's bytes: a new one exports afresh."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": str(_OPSET),
    }


def cache_key(identity: Any, quantize: Quantize) -> str:
    """The cache file stem for a module identified by ``identity`` (JSON-serialisable: what
    names its weights and architecture)."""
    text = json.dumps(
        {"module": identity, "quantize": quantize, "versions": exporter_versions()},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class OnnxModule:
    """An onnxruntime session standing in for a module's forward: one float32 input with a
    batch axis of any size, one float32 output. Compared by identity: it keys the embedding
    memo of the detectors sharing it."""

    session: ort.InferenceSession
    path: Path
    quantize: Quantize
    exported: bool  # False: the session was opened from the cache

    def run(self, inputs: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run([_OUTPUT], {_INPUT: inputs})[0]
        return out


def load_or_export(
    module: nn.Module,
    example: torch.Tensor,
    identity: Any,
    cache: Path,
    quantize: Quantize,
) -> OnnxModule:
    """A session for ``module(example-like input)``, from ``cache`` when a sound copy is there,
    else exported (then quantised) from ``module`` on the CPU and stored in ``cache``."""
    key = cache_key(identity, quantize)
    path = cache / f"{key}.onnx"
    cached = _read(path)
    if cached is not None:
        try:
            return OnnxModule(_open(cached, path), path, quantize, exported=False)
        except WeightsUnreadable as exc:
            # The text only: the exception would keep its frames, and the detector, alive.
            log.warning(
                "cached ONNX model %s does not load (%s); exporting it again", path, str(exc)
            )
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".export-") as tmp:
        plain = Path(tmp) / "plain.onnx"
        _export(module, example, plain)
        final = plain
        if quantize == "int8":
            final = Path(tmp) / "int8.onnx"
            _quantize(plain, final)
        model = final.read_bytes()
        _write_atomically(path, model)
        _write_atomically(path.with_suffix(".sha256"), _sha256(model).encode())
    return OnnxModule(_open(model, path), path, quantize, exported=True)


def _read(path: Path) -> bytes | None:
    """The cached model's bytes, or None when it is missing or does not match its sha256."""
    try:
        model = path.read_bytes()
        expected = path.with_suffix(".sha256").read_text().strip()
    except FileNotFoundError:
        return None
    if _sha256(model) != expected:
        log.warning("cached ONNX model %s does not match its sha256; exporting it again", path)
        return None
    return model


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _open(model: bytes, path: Path) -> ort.InferenceSession:
    from detectors.onnx_face import open_session

    session = open_session(model, str(path), threads=usable_cpus())
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [_INPUT] or [o.name for o in outputs] != [_OUTPUT]:
        raise WeightsUnreadable(f"{path}: not a model this cache wrote")
    return session


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is asked for by name (the dynamo one needs onnxscript, which
        # is not installed), and it says it is deprecated on every call.
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript-based ONNX export"
        )
        warnings.filterwarnings("ignore", message="The feature will be removed")
        # Tracing turns shape arithmetic (head size, sequence length) into constants and says
        # so; the batch axis is declared dynamic below, and the module's own shapes are fixed
        # by its architecture, which is part of the cache key.
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=[_INPUT],
            output_names=[_OUTPUT],
            dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
            opset_version=_OPSET,
        )


class _DropPreProcessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")


@contextlib.contextmanager
def _without_pre_process_hint() -> Iterator[None]:
    # quantize_dynamic logs this hint on the root logger for every model not pre-processed;
    # onnxruntime's pre-processing (symbolic shape inference) fails on the SigLIP graph's
    # reshapes, so the hint would only be noise in the daemon's log.
    root = logging.getLogger()
    hint = _DropPreProcessHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def _quantize(source: Path, target: Path) -> None:
    # onnxruntime ships no type information; the override for it in pyproject.toml names the
    # top-level module only.
    from onnxruntime.quantization import (  # type: ignore[import-untyped]
        QuantType,
        quantize_dynamic,
    )

    with _without_pre_process_hint():
        # Per-tensor int8 weights: per-channel measured no closer to float32 on SigLIP-base
        # and a quarter slower.
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
