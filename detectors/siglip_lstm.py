"""SigLIP + LSTM: a SigLIP vision tower embeds each sampled frame; a bidirectional LSTM reads the
embeddings in time order and scores the video, a linear head scores each frame.

The network follows the seed project's layout exactly (module names ``siglip_backbone``,
``lstm``, ``video_classifier``, ``image_classifier``), so its checkpoints load unchanged. The
architecture is built in code from ``SiglipLSTMConfig``; nothing is ever fetched from a hub.

Weights come from one of three places:

- ``weights: <checkpoint>``: the seed's file, the whole network; ``weights_id`` is its sha256.
- ``backbone: <folder>`` + ``weights: <head checkpoint>``: the SigLIP tower from a local
  Hugging Face folder (safetensors) and a checkpoint holding only the ``lstm``,
  ``video_classifier`` and ``image_classifier`` keys. ``weights_id`` is the sha256 of the text
  ``"head <head sha256>\\n"`` followed by ``"backbone <file name> <sha256>\\n"`` for each
  ``*.safetensors`` file of the folder, sorted by name (see ``split_weights_id``).
- ``weights: dummy``: seeded random weights; ``weights_id`` is ``dummy``.
- ``weights: manifest``: the detector's default entry in the weights manifest, a head checkpoint
  from ``drishtiksha train`` (with ``backbone``) or a whole one.

A checkpoint listed in the weights manifest (by its sha256) brings its calibrated operating
point, as for the other trained detectors.

Detectors that load the same backbone weights with the same architecture onto the same device
share one copy of it (``v1`` and ``v3`` are the same network and, in the seed, one file).

On the CPU the backbone runs in onnxruntime by default (``runtime``): exported from the loaded
tower at first load, with int8 weights unless ``quantize: none``, and cached under
``onnx_cache`` by what identifies its weights and architecture (``detectors.onnx_runtime``).
The heads stay in torch. Each verdict names the runtime in ``details.backbone_runtime``.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, TypeVar

import cv2
import numpy as np
from pydantic import Field, model_validator

from detectors.base import (
    DetectorConfig,
    DetectorResult,
    FrameScore,
    SampledFrames,
)
from detectors.errors import DetectorError
from detectors.manifest import CalibratedConfig, CalibratedDetector, resolve_weights
from detectors.temporal import analyse, rolling_mean
from detectors.weights import (
    WeightsError,
    WeightsUnreadable,
    check_state_dict,
    load_state_dict,
    sha256_file,
)

if TYPE_CHECKING:
    # torch and transformers load when a network is built (setup, checkpoint checks): listing
    # and configuring detectors stays quick.
    import torch
    from torch import nn

    from detectors.onnx_runtime import OnnxModule
    from detectors.siglip_net import SiglipLSTMNet

KEY_V1 = "siglip-lstm-v1"
KEY_V3 = "siglip-lstm-v3"

# Fixed by the seed's checkpoints.
_BACKBONE = "siglip_backbone"
_HEADS = ("lstm", "video_classifier", "image_classifier")
# The SigLIP image processor's normalisation: [0, 1] -> [-1, 1].
_MEAN = 0.5
_STD = 0.5
# Fields of ``SiglipVisionConfig`` that ``SiglipLSTMConfig`` sets; they define the tower's shape.
_ARCHITECTURE = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "image_size",
    "patch_size",
    "layer_norm_eps",
    "hidden_act",
)


class SiglipLSTMConfig(CalibratedConfig):
    """Settings of ``siglip-lstm-v1``; the architecture defaults are siglip-base-patch16-224."""

    num_frames: int = Field(32, ge=1, description="Evenly spaced frames taken from the video.")
    backbone: str | None = Field(
        None,
        description="Local Hugging Face folder (config.json + *.safetensors) holding the SigLIP "
        "vision tower; 'weights' then names a checkpoint of the LSTM and classifier heads only. "
        "Unset: 'weights' holds the whole network, as the seed saved it.",
    )
    hidden_size: int = Field(768, ge=1, description="SigLIP embedding width.")
    intermediate_size: int = Field(3072, ge=1, description="SigLIP MLP width.")
    num_hidden_layers: int = Field(12, ge=1, description="SigLIP encoder layers.")
    num_attention_heads: int = Field(12, ge=1, description="SigLIP attention heads.")
    image_size: int = Field(224, ge=1, description="Side of the square input image in pixels.")
    patch_size: int = Field(16, ge=1, description="Side of a SigLIP patch in pixels.")
    layer_norm_eps: float = Field(1e-6, gt=0.0, description="SigLIP layer-norm epsilon.")
    hidden_act: str = Field("gelu_pytorch_tanh", description="SigLIP MLP activation.")
    lstm_hidden: int = Field(512, ge=1, description="Hidden units per LSTM direction.")
    max_frames_per_batch: int = Field(
        256, ge=1, description="Frames per backbone pass; all videos of a batch are chunked so."
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16",
        description="Autocast dtype of the backbone on CUDA (the heads stay float32); "
        "the CPU always runs float32.",
    )
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="What runs the backbone: torch, or onnx (onnxruntime, CPU only: exported "
        "from the loaded tower at first load and cached; needs the onnx package). auto: onnx "
        "on the CPU where the onnx package is installed, else torch.",
    )
    quantize: Literal["int8", "none"] = Field(
        "int8",
        description="With runtime onnx: int8 weights (dynamic quantisation, activations stay "
        "float32), or none (float32 throughout).",
    )
    onnx_cache: Path = Field(
        Path("var/cache/onnx"),
        description="Folder of exported backbones, keyed by weights, architecture, "
        "quantisation and exporter versions; safe to share between processes and to empty.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        from transformers.activations import ACT2FN

        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not a transformers activation")
        if self.backbone is not None and self.weights == "dummy":
            raise ValueError("with a backbone folder, weights must name a head checkpoint")
        return self

    def architecture(self) -> tuple[tuple[str, Any], ...]:
        """The tower's shape-defining fields, as a hashable value."""
        return tuple((name, getattr(self, name)) for name in _ARCHITECTURE)

    def vision_config(self) -> Any:
        """The ``SiglipVisionConfig`` of the tower (with its attention-pooling head)."""
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig(vision_use_head=True, **dict(self.architecture()))

    def feature_settings(self) -> dict[str, Any]:
        """What shapes the embeddings head training starts from: frames, tower shape and the
        backbone folder's files (the training cache keys on them)."""
        files = backbone_files(self.backbone) if self.backbone is not None else {}
        return {"num_frames": self.num_frames, **dict(self.architecture()), "backbone": files}


class SiglipLSTMv3Config(SiglipLSTMConfig):
    """Settings of ``siglip-lstm-v3``: v1's, plus the frame view's smoothing."""

    frame_window: int = Field(10, ge=1, description="Frames in the rolling mean of frame scores.")


@dataclass(frozen=True)
class SiglipInput:
    """Prepared video: normalised frames (T, 3, S, S) float32 and their timestamps."""

    pixels: torch.Tensor
    timestamps: tuple[float, ...]


@dataclass(frozen=True)
class Embedded:
    """One clip's pooled frame embeddings from a frozen tower, in time order: what the heads
    are trained on (``detectors.siglip_training``)."""

    embeddings: np.ndarray  # (frames, hidden_size) float32
    timestamps: tuple[float, ...]


def skeleton(config: SiglipLSTMConfig, heads_only: bool = False) -> SiglipLSTMNet:
    """The network on the meta device: its keys and shapes, for checks, with no memory."""
    import torch
    from torch import nn

    from detectors.siglip_net import SiglipLSTMNet

    with torch.device("meta"):
        backbone = nn.Identity() if heads_only else _tower(config.vision_config())
        return SiglipLSTMNet(backbone, config.hidden_size, config.lstm_hidden)


def check_checkpoint(
    config: SiglipLSTMConfig, path: str | Path
) -> tuple[str, dict[str, torch.Tensor]]:
    """Load ``path`` on the CPU and check it against the configured network: the whole network,
    or the heads alone when ``config.backbone`` is set. Returns (sha256, state dict); raises
    ``WeightsError`` naming every missing, unexpected or wrongly shaped key."""
    state = load_state_dict(path)
    check_state_dict(skeleton(config, heads_only=config.backbone is not None), state)
    return sha256_file(path), state


def split_weights_id(head_sha256: str, backbone_files: Mapping[str, str]) -> str:
    """``weights_id`` of a head checkpoint plus a backbone folder ({file name: sha256})."""
    lines = [f"head {head_sha256}\n"]
    lines += [f"backbone {name} {backbone_files[name]}\n" for name in sorted(backbone_files)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def backbone_files(folder: str | Path) -> dict[str, str]:
    """sha256 of each ``*.safetensors`` file in a Hugging Face folder, by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsUnreadable(f"backbone folder not found: {folder}")
    files = {p.name: sha256_file(p) for p in sorted(folder.glob("*.safetensors"))}
    if not files:
        raise WeightsUnreadable(f"backbone folder {folder} holds no *.safetensors file")
    return files


# Loaded towers by (source, architecture, device), held only while some detector uses them.
_BACKBONES: weakref.WeakValueDictionary[tuple[Any, ...], nn.Module] = weakref.WeakValueDictionary()
# Their onnxruntime sessions by (source, architecture, quantisation), likewise.
_SESSIONS: weakref.WeakValueDictionary[tuple[Any, ...], OnnxModule] = weakref.WeakValueDictionary()
_BACKBONES_LOCK = threading.Lock()


class _Memo:
    """The pooled embeddings of the most recent videos through one backbone (bounded: it only
    has to bridge the detectors of one batch)."""

    size = 64

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], torch.Tensor] = {}

    def get(self, key: tuple[str, str]) -> torch.Tensor | None:
        return self._items.get(key)

    def need(self, key: tuple[str, str]) -> torch.Tensor:
        return self._items[key]

    def put(self, key: tuple[str, str], value: torch.Tensor) -> None:
        self._items[key] = value
        while len(self._items) > self.size:
            del self._items[next(iter(self._items))]


# Keyed by what runs the shared backbone (its torch module or its onnxruntime session), so a
# memo lives exactly as long as that.
_EMBEDDINGS: weakref.WeakKeyDictionary[nn.Module | OnnxModule, _Memo] = weakref.WeakKeyDictionary()


def forget_embeddings() -> None:
    """Drop every remembered embedding: a benchmark that feeds the same clips again must run
    the backbone again, as new videos would."""
    _EMBEDDINGS.clear()


def _digest(pixels: torch.Tensor) -> str:
    """Content hash of a prepared video: ~20 ms for 32 frames, against seconds of backbone."""
    data = pixels.detach().cpu().contiguous().numpy()
    return hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest() + str(tuple(data.shape))


Shared = TypeVar("Shared", bound="nn.Module | OnnxModule")


def _shared(
    registry: weakref.WeakValueDictionary[tuple[Any, ...], Shared],
    key: tuple[Any, ...],
    load: Callable[[], Shared],
) -> Shared:
    # Held while loading, so two detectors set up at once still load (or export) one copy.
    with _BACKBONES_LOCK:
        value = registry.get(key)
        if value is None:
            value = load()
            registry[key] = value
        return value


def _shared_backbone(key: tuple[Any, ...], load: Callable[[], nn.Module]) -> nn.Module:
    return _shared(_BACKBONES, key, load)


def _tower(vision_config: Any) -> nn.Module:
    from transformers import SiglipVisionModel

    model: nn.Module = SiglipVisionModel(vision_config)
    return _unwrap(model)


def _unwrap(model: nn.Module) -> nn.Module:
    # transformers 4.x wraps the tower (the seed's ``.vision_model``) in SiglipVisionModel;
    # from 5.0 SiglipVisionModel is the tower itself. Either way the keys are the seed's.
    tower: nn.Module = getattr(model, "vision_model", model)
    return tower


def pretrained_tower(config: SiglipLSTMConfig, folder: str) -> nn.Module:
    """The SigLIP tower from a local Hugging Face folder, checked against ``config``."""
    from transformers import SiglipVisionModel

    try:
        model: nn.Module = SiglipVisionModel.from_pretrained(
            folder, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError) as exc:
        raise WeightsUnreadable(f"cannot load the SigLIP backbone from {folder}: {exc}") from exc
    loaded = model.config
    wrong = [
        f"{name} {getattr(loaded, name, None)!r} (configured {value!r})"
        for name, value in config.architecture()
        if getattr(loaded, name, None) != value
    ]
    if not getattr(loaded, "vision_use_head", True):
        wrong.append("vision_use_head False (the network needs the pooling head)")
    if wrong:
        raise WeightsError(f"backbone folder {folder} does not fit: " + "; ".join(wrong))
    # A folder saved in half precision would otherwise run half precision on the CPU too.
    return _unwrap(model).float()


def _sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def _chunks(tensors: Sequence[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """The rows of ``tensors`` in order, regrouped into tensors of ``size`` rows (the last
    smaller), without first concatenating everything."""
    import torch

    pending: list[torch.Tensor] = []
    count = 0
    for tensor in tensors:
        start = 0
        while start < len(tensor):
            take = min(size - count, len(tensor) - start)
            pending.append(tensor[start : start + take])
            count += take
            start += take
            if count == size:
                yield torch.cat(pending)
                pending, count = [], 0
    if pending:
        yield torch.cat(pending)


ConfigT = TypeVar("ConfigT", bound=SiglipLSTMConfig)


class SiglipLSTMBase(CalibratedDetector[ConfigT]):
    """The shared implementation of ``siglip-lstm-v1`` and ``-v3``."""

    version: ClassVar[str] = "1.0.0"
    trainer: ClassVar[str | None] = "detectors.siglip_training:SiglipTrainer"

    def __init__(self, config: ConfigT) -> None:
        super().__init__(config)
        self._net: SiglipLSTMNet | None = None
        self._device: torch.device | None = None
        self._autocast: torch.dtype | None = None
        self._onnx: OnnxModule | None = None  # set when onnxruntime runs the backbone

    @property
    def num_frames(self) -> int:
        """Frames wanted from the shared decode."""
        return self.config.num_frames

    def check_checkpoint(self, path: str | Path) -> str:
        """Check a checkpoint against this detector's configured network without loading it
        onto a device; returns its sha256 (see the module's ``check_checkpoint``)."""
        return check_checkpoint(self.config, path)[0]

    def setup(self, device: str) -> None:
        """Load (or share) the tower, load the heads, move the network to ``device``."""
        import torch

        from detectors.siglip_net import SiglipLSTMNet

        cfg = self.config
        dev = torch.device(device)
        runtime = self._runtime(dev)
        weights_id, source, load, head_state = self._weights()
        backbone = _shared_backbone(
            (source, cfg.architecture(), str(dev)),
            lambda: load().to(dev).eval().requires_grad_(False),
        )
        # Seeded in a forked RNG so that building a detector leaves torch's global RNG alone;
        # the seed only matters for dummy heads.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net = SiglipLSTMNet(backbone, cfg.hidden_size, cfg.lstm_hidden)
        if head_state is not None:
            for name in _HEADS:
                getattr(net, name).load_state_dict(_sub_state(head_state, name), strict=True)
        self._net = net.to(dev).eval()
        self._device = dev
        # The backbone's autocast dtype on CUDA (``dtype`` names a torch dtype); None: float32.
        cast = dev.type == "cuda" and cfg.dtype != "float32"
        self._autocast = getattr(torch, cfg.dtype) if cast else None
        self._onnx = None
        if runtime == "onnx":
            self._onnx = _shared(
                _SESSIONS,
                (source, cfg.architecture(), cfg.quantize),
                lambda: self._export(backbone, source),
            )
        self._weights_id = weights_id

    def on_torch(self) -> Self:
        """This detector with its backbone run by torch (as the older service ran it), set up
        on the same device; the torch tower is shared, so this loads only the heads."""
        if self._device is None:
            raise RuntimeError("setup() has not run")
        twin = type(self)(self.config.model_copy(update={"runtime": "torch"}))
        twin.setup(str(self._device))
        return twin

    def _runtime(self, dev: torch.device) -> Literal["torch", "onnx"]:
        from detectors.onnx_runtime import can_export

        runtime = self.config.runtime
        if runtime == "auto":
            return "onnx" if dev.type == "cpu" and can_export() else "torch"
        if runtime == "onnx" and dev.type != "cpu":
            raise DetectorError(f"{self.key}: runtime onnx runs on the CPU only, not on {dev}")
        if runtime == "onnx" and not can_export():
            raise DetectorError(f"{self.key}: runtime onnx needs the onnx package to export")
        return runtime

    def _export(self, backbone: nn.Module, source: tuple[Any, ...]) -> OnnxModule:
        """The backbone's onnxruntime session, from the cache or exported from ``backbone``."""
        import torch

        from detectors.onnx_runtime import load_or_export
        from detectors.siglip_net import PooledTower

        cfg = self.config
        # Two frames, so that tracing cannot take the batch axis for a broadcast one.
        example = torch.zeros(2, 3, cfg.image_size, cfg.image_size)
        identity = {"source": source, "architecture": cfg.architecture()}
        return load_or_export(
            PooledTower(backbone), example, identity, cfg.onnx_cache, cfg.quantize
        )

    def prepare(self, frames: SampledFrames) -> SiglipInput:
        """Resize each frame to the tower's square input (OpenCV INTER_AREA: it averages pixels
        when shrinking, as the SigLIP processor's antialiased bicubic does) and normalise."""
        if not frames.frames:
            raise DetectorError(f"{self.key}: no frames to score")
        import torch

        size = self.config.image_size
        images = np.stack(
            [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames.frames]
        )
        pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        pixels = (pixels.float() / 255.0 - _MEAN) / _STD
        return SiglipInput(pixels=pixels, timestamps=tuple(frames.timestamps))

    def predict(self, batch: Sequence[Any]) -> list[DetectorResult | DetectorError]:
        """All frames of all videos through the tower in chunks, then the heads per video.

        A malformed input fails alone; a device out-of-memory error propagates, so the caller
        can split the batch.
        """
        if self._net is None:
            raise RuntimeError("setup() has not run")
        results: dict[int, DetectorResult | DetectorError] = {}
        valid: list[tuple[int, SiglipInput]] = []
        for i, item in enumerate(batch):
            problem = self._invalid(item)
            if problem is None:
                valid.append((i, item))
            else:
                results[i] = DetectorError(f"{self.key}: bad prepared input: {problem}")
        if valid:
            videos, frames = self._score(self._net, [item.pixels for _, item in valid])
            for (i, item), video, frame in zip(valid, videos, frames, strict=True):
                results[i] = self._verdict(item, video, frame)
        return [results[i] for i in range(len(batch))]

    def _weights(
        self,
    ) -> tuple[str, tuple[Any, ...], Callable[[], nn.Module], dict[str, torch.Tensor] | None]:
        """(weights_id, what identifies the tower's weights, how to load the tower, the head
        weights or None for dummy heads); checkpoints are checked here, before any loading."""
        import torch

        cfg = self.config
        if cfg.weights == "dummy":

            def dummy() -> nn.Module:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(cfg.seed)
                    return _tower(cfg.vision_config())

            return "dummy", ("dummy", cfg.seed), dummy, None
        loaded: list[dict[str, torch.Tensor]] = []

        def load_checked(path: Path) -> str:
            sha256, state = check_checkpoint(cfg, path)
            loaded.append(state)
            return sha256

        sha, entry = resolve_weights(self.key, cfg.weights, cfg.manifest, load_checked)
        self.use_operating_point(entry)
        state = loaded[0]
        folder = cfg.backbone
        if folder is None:

            def from_checkpoint() -> nn.Module:
                tower = _tower(cfg.vision_config())
                tower.load_state_dict(_sub_state(state, _BACKBONE), strict=True)
                return tower

            return sha, ("checkpoint", sha), from_checkpoint, state
        files = backbone_files(folder)
        return (
            split_weights_id(sha, files),
            ("folder", tuple(sorted(files.items()))),
            lambda: pretrained_tower(cfg, folder),
            state,
        )

    def _invalid(self, item: Any) -> str | None:
        """Why ``item`` cannot go into the batch, or None; checked before anything is stacked."""
        if not isinstance(item, SiglipInput):
            return f"expected SiglipInput, got {type(item).__name__}"
        import torch

        pixels = item.pixels
        if not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.float32:
            return "pixels must be a float32 tensor"
        size = self.config.image_size
        if pixels.ndim != 4 or pixels.shape[0] == 0 or tuple(pixels.shape[1:]) != (3, size, size):
            return f"pixels have shape {tuple(pixels.shape)}, expected (frames, 3, {size}, {size})"
        if len(item.timestamps) != pixels.shape[0]:
            return f"{len(item.timestamps)} timestamps for {pixels.shape[0]} frames"
        if not bool(torch.isfinite(pixels).all()):
            return "pixels must be finite"
        return None

    def _score(
        self, net: SiglipLSTMNet, pixels: list[torch.Tensor]
    ) -> tuple[list[float], list[list[float]]]:
        """Video probabilities and per-frame probabilities for each video."""
        import torch

        with torch.inference_mode():
            pooled = self._pooled(net, pixels)
            # The heads run in float32 outside autocast: they are tiny, and cuDNN's LSTM does
            # not take every reduced dtype.
            sequences = torch.split(pooled, [len(p) for p in pixels])
            videos = torch.sigmoid(net.video_logits(sequences)).cpu().tolist()
            frames = torch.sigmoid(net.frame_logits(pooled)).cpu()
        per_video = [s.tolist() for s in torch.split(frames, [len(p) for p in pixels])]
        return videos, per_video

    def _pooled(self, net: SiglipLSTMNet, pixels: list[torch.Tensor]) -> torch.Tensor:
        """Pooled embeddings of every frame, in order. v1 and v3 on one shared backbone see the
        same frames of the same videos in one batch; whichever runs second finds the first one's
        embeddings in the backbone's memo instead of running the backbone again."""
        import torch

        memo = _EMBEDDINGS.setdefault(self._onnx or net.siglip_backbone, _Memo())
        keys = [(_digest(p), str(self._autocast)) for p in pixels]
        todo = [i for i, key in enumerate(keys) if memo.get(key) is None]
        if todo:
            fresh = torch.cat(
                [
                    self._embed(net, chunk)
                    for chunk in _chunks(
                        [pixels[i] for i in todo], self.config.max_frames_per_batch
                    )
                ]
            ).float()
            for i, emb in zip(
                todo, torch.split(fresh, [len(pixels[i]) for i in todo]), strict=True
            ):
                memo.put(keys[i], emb)
        return torch.cat([memo.need(key) for key in keys])

    def _embed(self, net: SiglipLSTMNet, chunk: torch.Tensor) -> torch.Tensor:
        import torch

        if self._onnx is not None:
            return torch.from_numpy(self._onnx.run(np.ascontiguousarray(chunk.numpy())))
        if self._device is None or self._device.type != "cuda":
            return net.embed(chunk)
        x = chunk.pin_memory().to(self._device, non_blocking=True)
        if self._autocast is None:
            return net.embed(x)
        with torch.autocast("cuda", dtype=self._autocast):
            return net.embed(x)

    def _verdict(self, item: SiglipInput, video: float, frames: list[float]) -> DetectorResult:
        op = self.operating
        probability = op.probability(video)
        # Frame scores go on the verdict's scale, so that they compare with its threshold (the
        # frame head has no calibration of its own; without a manifest entry this is the
        # identity).
        frame_scores, view = self._frame_view(item, [op.probability(p) for p in frames])
        return DetectorResult(
            label=op.label(probability),
            fake_probability=probability,
            threshold=op.threshold,
            frame_scores=frame_scores,
            details={
                "weights": self.weights_id,
                "raw_probability": video,
                "operating_point": op.describe(),
                "frames_scored": len(frames),
                "backbone_runtime": "torch" if self._onnx is None else "onnxruntime",
                "backbone_dtype": self._backbone_dtype(),
                **view,
            },
        )

    def _backbone_dtype(self) -> str:
        """The backbone's weights' dtype as it ran: int8 when onnxruntime ran it quantised."""
        if self._onnx is not None and self._onnx.quantize == "int8":
            return "int8"
        return str(self._autocast or "float32").removeprefix("torch.")

    def _frame_view(
        self, item: SiglipInput, frames: list[float]
    ) -> tuple[list[FrameScore], dict[str, Any]]:
        """Frame scores to report and extra details; v1 reports the raw per-frame scores."""
        scores = [FrameScore(t, p) for t, p in zip(item.timestamps, frames, strict=True)]
        return scores, {}


class SiglipLSTMv1(SiglipLSTMBase[SiglipLSTMConfig]):
    """SigLIP frame embeddings -> bidirectional LSTM -> video score; per-frame head scores."""

    key: ClassVar[str] = KEY_V1
    config_class: ClassVar[type[DetectorConfig]] = SiglipLSTMConfig


class SiglipLSTMv3(SiglipLSTMBase[SiglipLSTMv3Config]):
    """v1's network and verdict, with the seed's smoothed frame view and a temporal analysis."""

    key: ClassVar[str] = KEY_V3
    config_class: ClassVar[type[DetectorConfig]] = SiglipLSTMv3Config

    def _frame_view(
        self, item: SiglipInput, frames: list[float]
    ) -> tuple[list[FrameScore], dict[str, Any]]:
        """Frame scores smoothed by the rolling mean; raw and smoothed both in details."""
        cfg = self.config
        smoothed = rolling_mean(frames, cfg.frame_window)
        raw = [FrameScore(t, p) for t, p in zip(item.timestamps, frames, strict=True)]
        return [FrameScore(t, p) for t, p in zip(item.timestamps, smoothed, strict=True)], {
            "frame_window": cfg.frame_window,
            "frame_scores_raw": frames,
            "frame_scores_smoothed": smoothed,
            "temporal": analyse(raw, self.threshold, cfg.frame_window),
        }
