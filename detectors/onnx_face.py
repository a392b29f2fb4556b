"""``onnx-face-classifier``: any face classifier exported to ONNX, configured rather than coded.

A newsroom that has a stronger published detector than the project can train points this
detector's section at the ONNX file and says how the network wants its input (size, layout,
channel order, pixel range, mean and std, crop margin around the face) and what its output means
(which output, logit or probability, which class is "fake"). Faces are found on the evenly
spaced frames of the shared decode (dlib HOG, as the other face detectors), cropped, and every
crop of a whole batch of videos goes through onnxruntime together; each video's fake
probability is its crops' scores aggregated as configured (mean, median, max or the mean of the
top k). No face on enough frames: ABSTAIN with reason ``no_face``.

The weights id is the ONNX file's sha256, so stored verdicts follow the model. The graph is
checked against the configuration when it loads and by ``drishtiksha weights import``: one
image input of the configured size, and an output with the configured index and class.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import cv2
import numpy as np
import onnxruntime as ort
from pydantic import Field, field_validator, model_validator

from detectors.base import (
    DetectorConfig,
    DetectorResult,
    FrameScore,
    Label,
    SampledFrames,
    describe,
)
from detectors.errors import DetectorError
from detectors.faces import FACE_FINDER_HELP, FaceFinder, FaceFinderName
from detectors.manifest import CalibratedConfig, CalibratedDetector, resolve_weights
from detectors.weights import WeightsError, WeightsUnreadable

log = logging.getLogger(__name__)

KEY = "onnx-face-classifier"

# Element types the input may have; the crops are converted to it after normalisation.
_INPUT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}
_OUTPUT_TYPES = frozenset(_INPUT_TYPES)
# A probability output may stray from [0, 1] by rounding; further than this, it is no
# probability and the configuration (output_kind) is wrong.
_PROBABILITY_SLACK = 1e-4


class OnnxFaceConfig(CalibratedConfig):
    """Settings of ``onnx-face-classifier``: the model file and how to talk to it."""

    weights: str = Field(
        "manifest",
        description="Path to the ONNX file, or 'manifest' for the one registered by "
        "'drishtiksha weights import --detector onnx-face-classifier'.",
    )
    input_size: tuple[int, int] = Field(
        (224, 224), description="Height and width of the network's input, in pixels."
    )
    layout: Literal["NCHW", "NHWC"] = Field(
        "NCHW", description="Axis order of the input tensor (PyTorch NCHW, Keras/TF NHWC)."
    )
    channel_order: Literal["RGB", "BGR"] = Field("RGB", description="Colour channel order.")
    pixel_range: Literal["0-1", "0-255"] = Field(
        "0-1", description="Pixels are scaled to this range before mean and std apply."
    )
    mean: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.0),
        description="Subtracted per channel (in channel_order, in pixel_range units).",
    )
    std: tuple[float, float, float] = Field(
        (1.0, 1.0, 1.0), description="Divided per channel after the mean (same units)."
    )
    crop_margin: float = Field(
        0.3,
        ge=0.0,
        le=2.0,
        description="Added around the detected face box on every side, as a share of its size.",
    )
    crop_square: bool = Field(
        True, description="Widen the crop to a square around the face's centre before resizing."
    )
    output_index: int = Field(0, ge=0, description="Which of the graph's outputs to read.")
    output_kind: Literal["logit", "probability"] = Field(
        "logit",
        description="What the output holds: logits (sigmoid for one value, softmax over "
        "classes) or probabilities.",
    )
    class_index: int = Field(
        0, ge=0, description="Which class of the output to read (0 for a single-value output)."
    )
    class_is: Literal["fake", "real"] = Field(
        "fake",
        description="What class_index is the probability of; 'real' turns p into 1 - p.",
    )
    aggregate: Literal["mean", "median", "max", "top_k_mean"] = Field(
        "mean", description="How the crops' fake probabilities make the video's."
    )
    top_k: int = Field(3, ge=1, description="Crops averaged by top_k_mean (the most suspect).")
    num_frames: int = Field(
        16, ge=1, le=512, description="Evenly spaced frames searched for a face."
    )
    min_faces: int = Field(
        1, ge=1, description="Abstain (no_face) when fewer of those frames show a face."
    )
    face_detect_max_side: int = Field(
        640, ge=64, description="Longest side of the copy faces are searched on."
    )
    face_upsample: int = Field(
        0, ge=0, le=2, description="dlib upsampling passes; each finds smaller faces, 4x cost."
    )
    face_finder: FaceFinderName = Field("hog+blazeface", description=FACE_FINDER_HELP)
    max_crops_per_run: int = Field(
        64, ge=1, description="Face crops per onnxruntime call (bounds memory on big batches)."
    )
    cpu_threads: int = Field(
        0, ge=0, description="onnxruntime's threads on the CPU (0: its own choice)."
    )

    @field_validator("weights")
    @classmethod
    def _not_dummy(cls, value: str) -> str:
        if value == "dummy":
            raise ValueError("an ONNX file's path or 'manifest' (there are no dummy weights)")
        return value

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 8 or max(value) > 4096:
            raise ValueError("height and width must lie between 8 and 4096")
        return value

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in value):
            raise ValueError("no channel's std may be 0")
        return value

    @model_validator(mode="after")
    def _faces_fit_the_frames(self) -> Self:
        if self.min_faces > self.num_frames:
            raise ValueError("min_faces cannot exceed num_frames")
        return self


@dataclass(frozen=True)
class FaceCrops:
    """One video's face crops, resized to the input size (RGB uint8, n x H x W x 3)."""

    crops: np.ndarray
    timestamps: tuple[float, ...]
    boxes: tuple[tuple[int, int, int, int], ...]  # the crop in the decoded frame's pixels
    frames_sampled: int


@dataclass(frozen=True)
class NoFace:
    """Too few sampled frames show a face: predict abstains."""

    frames_sampled: int
    frames_with_face: int


@dataclass(frozen=True)
class GraphSpec:
    """What the checked graph takes and gives."""

    input_name: str
    input_type: Any  # the numpy dtype the input takes
    batch: int | None  # a fixed batch size, or None when any size is accepted
    output_name: str
    classes: int | None  # values per input in the read output, when the graph says


def _dims(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"


def check_graph(session: ort.InferenceSession, cfg: OnnxFaceConfig, source: str) -> GraphSpec:
    """The graph's input and output checked against ``cfg``; ``WeightsError`` says in one line
    what does not fit."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise WeightsError(
            f"{source}: the graph takes {len(inputs)} inputs ({names}); a face classifier "
            "takes one image tensor"
        )
    graph_in = inputs[0]
    if graph_in.type not in _INPUT_TYPES:
        raise WeightsError(
            f"{source}: input {graph_in.name} is {graph_in.type}; floating-point images "
            f"({', '.join(sorted(_INPUT_TYPES))}) are supported"
        )
    shape = list(graph_in.shape)
    height, width = cfg.input_size
    expected: list[int] = [3, height, width] if cfg.layout == "NCHW" else [height, width, 3]
    fits = len(shape) == 4 and all(
        not isinstance(got, int) or got == want
        for got, want in zip(shape[1:], expected, strict=True)
    )
    if not fits:
        raise WeightsError(
            f"{source}: input {graph_in.name} has shape {_dims(shape)}, but the configuration "
            f"says [batch, {', '.join(map(str, expected))}] (input_size {[height, width]}, "
            f"layout {cfg.layout})"
        )
    outputs = session.get_outputs()
    if cfg.output_index >= len(outputs):
        raise WeightsError(
            f"{source}: output_index {cfg.output_index}, but the graph has {len(outputs)} "
            f"output{'s' if len(outputs) != 1 else ''}"
        )
    graph_out = outputs[cfg.output_index]
    if graph_out.type not in _OUTPUT_TYPES:
        raise WeightsError(f"{source}: output {graph_out.name} is {graph_out.type}, not numbers")
    out_shape = list(graph_out.shape)
    if not out_shape:
        raise WeightsError(f"{source}: output {graph_out.name} is a scalar, not one per input")
    tail = out_shape[1:]
    classes = math.prod(tail) if all(isinstance(d, int) for d in tail) else None
    if classes is not None and cfg.class_index >= classes:
        raise WeightsError(
            f"{source}: class_index {cfg.class_index}, but output {graph_out.name} has shape "
            f"{_dims(out_shape)} ({classes} value{'s' if classes != 1 else ''} per input)"
        )
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return GraphSpec(graph_in.name, _INPUT_TYPES[graph_in.type], batch, graph_out.name, classes)


def open_session(
    model: bytes,
    source: str,
    providers: Sequence[Any] = ("CPUExecutionProvider",),
    threads: int = 0,
) -> ort.InferenceSession:
    """An onnxruntime session for the model bytes; ``WeightsUnreadable`` when they are no
    loadable ONNX graph."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the daemon's log is not onnxruntime's console
    if threads:
        options.intra_op_num_threads = threads
    # Idle pool threads wait asleep instead of spinning: the process's other threads (decoding,
    # face finding) need the same cores, and a spinning thread can starve the one it waits for.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model, sess_options=options, providers=list(providers))
    # onnxruntime's errors (InvalidProtobuf, InvalidGraph, Fail, ...) derive from Exception
    # alone; nothing but the constructor is inside this try.
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsUnreadable(f"{source}: not a loadable ONNX model: {first}") from exc


def read_model(path: str | Path) -> tuple[bytes, str]:
    """The model file's bytes and their sha256."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise WeightsUnreadable(f"cannot read {path}: {exc.strerror or exc}") from exc
    return raw, hashlib.sha256(raw).hexdigest()


def normalise(crops: np.ndarray, cfg: OnnxFaceConfig, dtype: Any = np.float32) -> np.ndarray:
    """RGB uint8 crops (n, H, W, 3) -> the network's input tensor, as configured."""
    x: np.ndarray = crops.astype(np.float32)
    if cfg.channel_order == "BGR":
        x = x[..., ::-1]
    if cfg.pixel_range == "0-1":
        x = x / 255.0
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    if cfg.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=dtype)


def fake_probabilities(output: np.ndarray, cfg: OnnxFaceConfig) -> np.ndarray:
    """One fake probability per input from the graph's output (n, ...), as configured."""
    values = np.asarray(output, dtype=np.float64).reshape(len(output), -1)
    if not np.isfinite(values).all():
        raise DetectorError(f"{KEY}: the model's output holds NaN or infinity")
    if cfg.class_index >= values.shape[1]:
        raise DetectorError(
            f"{KEY}: class_index {cfg.class_index}, but the output has {values.shape[1]} values"
        )
    if cfg.output_kind == "logit":
        if values.shape[1] == 1:
            p = _sigmoid(values[:, 0])
        else:
            shifted = values - values.max(axis=1, keepdims=True)
            e = np.exp(shifted)
            p = e[:, cfg.class_index] / e.sum(axis=1)
    else:
        p = values[:, cfg.class_index]
        if (p < -_PROBABILITY_SLACK).any() or (p > 1 + _PROBABILITY_SLACK).any():
            raise DetectorError(
                f"{KEY}: output_kind is probability, but the model gave {float(p.min()):.3g} to "
                f"{float(p.max()):.3g}; set output_kind: logit"
            )
        p = np.clip(p, 0.0, 1.0)
    return 1.0 - p if cfg.class_is == "real" else p


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form never overflows, whatever the logit.
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * x))
    return out


def aggregate(scores: np.ndarray, how: str, top_k: int) -> float:
    """A video's probability from its crops' (``mean``, ``median``, ``max`` or ``top_k_mean``:
    the mean of the ``top_k`` highest, all of them when there are fewer)."""
    if how == "mean":
        return float(scores.mean())
    if how == "median":
        return float(np.median(scores))
    if how == "max":
        return float(scores.max())
    return float(np.sort(scores)[::-1][:top_k].mean())


def crop_face(
    rgb: np.ndarray,
    box: tuple[int, int, int, int],
    margin: float,
    square: bool,
    size: tuple[int, int],
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The face box widened by ``margin`` of its size on every side (and to a square), resized
    to ``size`` (height, width); parts beyond the frame are black, so the face keeps its
    proportions at the frame's edge. Returns the crop and its box in frame pixels."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    cx, cy = (left + right) / 2, (top + bottom) / 2
    half_w, half_h = width * (0.5 + margin), height * (0.5 + margin)
    if square:
        half_w = half_h = max(half_w, half_h)
    x0, y0 = round(cx - half_w), round(cy - half_h)
    x1, y1 = max(x0 + 1, round(cx + half_w)), max(y0 + 1, round(cy + half_h))
    rows, cols = rgb.shape[:2]
    canvas = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(cols, x1), min(rows, y1)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    out_h, out_w = size
    shrinking = canvas.shape[0] > out_h or canvas.shape[1] > out_w
    resized = cv2.resize(
        canvas, (out_w, out_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    return np.asarray(resized, np.uint8), (x0, y0, x1, y1)


class OnnxFaceClassifier(CalibratedDetector[OnnxFaceConfig]):
    """Face crops scored by a configured ONNX classifier, aggregated per video."""

    key: ClassVar[str] = KEY
    version: ClassVar[str] = "1.0.0"
    config_class: ClassVar[type[DetectorConfig]] = OnnxFaceConfig

    def __init__(self, config: OnnxFaceConfig) -> None:
        super().__init__(config)
        self._faces = FaceFinder(
            config.face_detect_max_side, config.face_upsample, method=config.face_finder
        )
        self._session: ort.InferenceSession | None = None
        self._spec: GraphSpec | None = None
        self._provider = "none"

    @property
    def num_frames(self) -> int:
        """Evenly spaced frames searched for a face."""
        return self.config.num_frames

    def check_checkpoint(self, path: str | Path) -> str:
        """Load the graph on the CPU and check its input and output against the configuration;
        returns the file's sha256."""
        raw, sha256 = read_model(path)
        check_graph(open_session(raw, str(path)), self.config, Path(path).name)
        return sha256

    def _providers(self, device: str) -> list[Any]:
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                index = int(device.partition(":")[2] or 0)
                return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
            log.warning(
                "%s: device %s requested, but this onnxruntime has no CUDA provider "
                "(install onnxruntime-gpu); running on the CPU",
                KEY,
                device,
            )
        return ["CPUExecutionProvider"]

    def setup(self, device: str) -> None:
        """Load and check the graph, on the CUDA provider when ``device`` is a GPU and this
        onnxruntime has one, else on the CPU; take the operating point the manifest registered
        for the file's sha256, if any."""
        cfg = self.config
        providers = self._providers(device)
        opened: list[tuple[ort.InferenceSession, GraphSpec]] = []

        def load(path: Path) -> str:
            raw, sha256 = read_model(path)
            session = open_session(raw, str(path), providers, cfg.cpu_threads)
            opened.append((session, check_graph(session, cfg, path.name)))
            return sha256

        weights_id, entry = resolve_weights(KEY, cfg.weights, cfg.manifest, load)
        self._session, self._spec = opened[0]
        self._provider = self._session.get_providers()[0]
        self.use_operating_point(entry)
        self._weights_id = weights_id
        self._faces.load()

    def prepare(self, frames: SampledFrames) -> FaceCrops | NoFace:
        """The largest face of each sampled frame, cropped and resized (on the CPU)."""
        cfg = self.config
        crops: list[np.ndarray] = []
        times: list[float] = []
        boxes: list[tuple[int, int, int, int]] = []
        for rgb, t in zip(frames.frames, frames.timestamps, strict=True):
            face = self._faces.find(rgb)
            if face is None:
                continue
            crop, box = crop_face(rgb, face.box, cfg.crop_margin, cfg.crop_square, cfg.input_size)
            crops.append(crop)
            times.append(t)
            boxes.append(box)
        if len(crops) < cfg.min_faces:
            return NoFace(len(frames.frames), len(crops))
        return FaceCrops(np.stack(crops), tuple(times), tuple(boxes), len(frames.frames))

    def _run(self, crops: np.ndarray) -> np.ndarray:
        """The graph's read output for crops (n, H, W, 3), in runs of at most
        ``max_crops_per_run`` (exactly the graph's batch size when it fixes one)."""
        assert self._session is not None
        assert self._spec is not None
        spec = self._spec
        step = spec.batch or self.config.max_crops_per_run
        outputs: list[np.ndarray] = []
        for start in range(0, len(crops), step):
            chunk = crops[start : start + step]
            x = normalise(chunk, self.config, spec.input_type)
            if spec.batch is not None and len(chunk) < spec.batch:
                # A graph with a fixed batch size takes exactly that many: pad, then drop.
                pad = np.zeros((spec.batch - len(chunk), *x.shape[1:]), x.dtype)
                x = np.concatenate([x, pad])
            [out] = self._session.run([spec.output_name], {spec.input_name: x})
            outputs.append(np.asarray(out)[: len(chunk)])
        return np.concatenate(outputs)

    def predict(self, batch: Sequence[Any]) -> list[DetectorResult | DetectorError]:
        """Every crop of the batch through the graph together; each video takes back its own
        and aggregates them. A malformed input fails alone."""
        if self._session is None:
            raise RuntimeError("setup() has not run")
        height, width = self.config.input_size
        results: dict[int, DetectorResult | DetectorError] = {}
        rows: list[tuple[int, FaceCrops]] = []
        for i, item in enumerate(batch):
            if isinstance(item, NoFace):
                results[i] = self._abstain(item)
            elif (
                isinstance(item, FaceCrops)
                and item.crops.ndim == 4
                and item.crops.shape[1:] == (height, width, 3)
                and len(item.crops) == len(item.timestamps) > 0
            ):
                rows.append((i, item))
            else:
                results[i] = DetectorError(f"{KEY}: bad prepared input {type(item).__name__}")
        if rows:
            output = self._run(np.concatenate([item.crops for _, item in rows]))
            scores = fake_probabilities(output, self.config)
            ends = np.cumsum([len(item.crops) for _, item in rows])
            for (i, item), own in zip(rows, np.split(scores, ends[:-1]), strict=True):
                results[i] = self._verdict(item, own)
        return [results[i] for i in range(len(batch))]

    def _verdict(self, item: FaceCrops, scores: np.ndarray) -> DetectorResult:
        cfg = self.config
        op = self._operating
        raw = aggregate(scores, cfg.aggregate, cfg.top_k)
        probability = op.probability(raw)
        return DetectorResult(
            label=op.label(probability),
            fake_probability=probability,
            threshold=op.threshold,
            frame_scores=[
                FrameScore(t, op.probability(float(s)))
                for t, s in zip(item.timestamps, scores, strict=True)
            ],
            details={
                "weights": self.weights_id,
                "raw_probability": raw,
                "operating_point": op.describe(),
                "aggregate": cfg.aggregate,
                "top_k": min(cfg.top_k, len(scores)) if cfg.aggregate == "top_k_mean" else None,
                "frames": item.frames_sampled,
                "frames_with_face": len(scores),
                "provider": self._provider,
            },
        )

    def _abstain(self, item: NoFace) -> DetectorResult:
        return DetectorResult(
            label=Label.ABSTAIN,
            fake_probability=None,
            threshold=self._operating.threshold,
            details={
                "reason": "no_face",
                "weights": self.weights_id,
                "frames": item.frames_sampled,
                "frames_with_face": item.frames_with_face,
                "min_faces": self.config.min_faces,
            },
        )

    @classmethod
    def explain(cls, result: DetectorResult) -> str:
        """The usual reading, and for a clip without faces how many frames showed one."""
        details = result.details
        if result.label is Label.ABSTAIN and details.get("reason") == "no_face":
            return (
                f"{KEY} found a face in {details.get('frames_with_face', 0)} of "
                f"{details.get('frames', 0)} sampled frames, too few to judge."
            )
        sentence = describe(KEY, result)
        if details.get("frames_with_face"):
            how = {"mean": "mean", "median": "median", "max": "highest"}.get(
                str(details.get("aggregate")), f"mean of the {details.get('top_k')} highest"
            )
            sentence += f" It scored {details['frames_with_face']} face crops and took their {how}."
        return sentence
