"""Training the SigLIP detectors' heads on a frozen backbone.

The SigLIP tower is the expensive part and is not trained: every clip's sampled frames go
through it once, and their pooled embeddings are cached (by video sha256, under a namespace that
includes the backbone files' sha256). Only the heads learn: the bidirectional LSTM with
``video_classifier`` on each clip's embedding sequence, and ``image_classifier`` on single frames
(every frame carries its clip's label). The result is a heads-only checkpoint, loaded with
``backbone: <the same folder>`` and ``weights: <heads file>`` (or ``weights: manifest``), plus
its calibrated operating point in the manifest and a model card. Clips, groups, splits and the
cache are ``detectors.training``'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detectors.base import Detector
from detectors.manifest import OperatingPoint, register
from detectors.siglip_lstm import (
    Embedded,
    SiglipInput,
    SiglipLSTMConfig,
    backbone_files,
    pretrained_tower,
)
from detectors.siglip_net import SiglipLSTMNet
from detectors.training import (
    GROUP_RULE,
    Clip,
    DatasetError,
    Features,
    ShipSettings,
    Split,
    Trainer,
    TrainJob,
    TrainParams,
    calibrate,
    card_data,
    card_header,
    card_results,
    data_summary,
    measure,
    shipped_entry,
    split_clips,
    split_file,
    today,
    with_held_out,
    write_split_file,
)
from detectors.weights import WeightsError


class Embedder:
    """The configured backbone folder's tower, frozen, on the CPU: prepared clips in,
    embeddings out, in chunks of ``max_frames_per_batch`` frames."""

    def __init__(self, config: SiglipLSTMConfig) -> None:
        if config.backbone is None:
            raise WeightsError(
                "training the SigLIP heads needs 'backbone': a local folder with the SigLIP "
                "vision tower's weights (config.json + *.safetensors)"
            )
        self.config = config
        self.tower = pretrained_tower(config, config.backbone).eval().requires_grad_(False)

    def __call__(self, item: SiglipInput) -> Embedded:
        with torch.inference_mode():
            pooled = torch.cat(
                [
                    self.tower(pixel_values=chunk).pooler_output
                    for chunk in torch.split(item.pixels, self.config.max_frames_per_batch)
                ]
            )
        return Embedded(pooled.float().numpy(), item.timestamps)


def _sequences(items: Sequence[Embedded]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(e.embeddings)) for e in items]


def video_probabilities(net: SiglipLSTMNet, items: Sequence[Embedded]) -> np.ndarray:
    """The video head's fake probability for each clip, as the detector computes it."""
    net.eval()
    with torch.inference_mode():
        probs: np.ndarray = torch.sigmoid(net.video_logits(_sequences(items))).numpy()
    return probs


@dataclass(frozen=True)
class HeadsResult:
    """The best epoch's heads (state dict keys ``lstm.*``, ``video_classifier.*``,
    ``image_classifier.*``) and how training went."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    epochs_run: int
    best_val_loss: float


def train_heads(
    train: Sequence[tuple[Embedded, int]],
    val: Sequence[tuple[Embedded, int]],
    config: SiglipLSTMConfig,
    params: TrainParams,
) -> HeadsResult:
    """Adam on BCE of the video head plus BCE of the frame head (each frame labelled as its
    clip); early stopping on the validation video BCE. Deterministic for ``params.seed``;
    torch's global RNG is left as it was."""
    if not train or not val:
        raise DatasetError("training needs at least one training and one validation clip")
    if len({label for _, label in train}) != 2:
        raise DatasetError("the training split needs clips of both labels")
    bce = nn.BCEWithLogitsLoss()
    val_items = [e for e, _ in val]
    val_y = np.array([label for _, label in val], dtype=np.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        net = SiglipLSTMNet(nn.Identity(), config.hidden_size, config.lstm_hidden)
        optimiser = torch.optim.Adam(
            net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
        )
        order = np.random.default_rng(params.seed)
        best_loss, best_epoch, bad = math.inf, 0, 0
        best_state = {k: v.clone() for k, v in net.state_dict().items()}
        epoch = 0
        for epoch in range(1, params.epochs + 1):
            net.train()
            permutation = order.permutation(len(train))
            for start in range(0, len(train), params.batch_size):
                picked = [train[i] for i in permutation[start : start + params.batch_size]]
                sequences = _sequences([e for e, _ in picked])
                labels = [float(label) for _, label in picked]
                y = torch.tensor(labels)
                frame_y = torch.cat(
                    [torch.full((len(s),), v) for s, v in zip(sequences, labels, strict=True)]
                )
                loss = bce(net.video_logits(sequences), y) + bce(
                    net.frame_logits(torch.cat(sequences)), frame_y
                )
                optimiser.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                optimiser.step()
            probs = np.clip(video_probabilities(net, val_items), 1e-7, 1 - 1e-7)
            val_loss = float(-np.mean(val_y * np.log(probs) + (1 - val_y) * np.log(1 - probs)))
            if val_loss < best_loss - 1e-6:
                best_loss, best_epoch, bad = val_loss, epoch, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
                if bad >= params.patience:
                    break
    return HeadsResult(best_state, best_epoch, epoch, best_loss)


def train_and_ship(
    key: str,
    clips: Sequence[Clip],
    splits: Sequence[Split],
    features: Mapping[str, Features],
    config: SiglipLSTMConfig,
    params: TrainParams,
    settings: ShipSettings,
) -> dict[str, Any]:
    """Train the heads on the train split, calibrate on val, measure on test, ship the heads
    checkpoint, its manifest entry and model card. Returns the report the card shows."""
    if config.backbone is None:
        raise WeightsError("the SigLIP heads are trained on a backbone folder's embeddings")
    by_split = split_clips(clips, splits)

    def usable(split: Split) -> list[tuple[Embedded, int]]:
        return [
            (prepared, c.label)
            for c in by_split[split]
            if isinstance(prepared := features[c.sha256].prepared, Embedded)
        ]

    result = train_heads(usable("train"), usable("val"), config, params)
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    heads = out / f"{key}.heads.pt"
    card = out / f"{key}.md"
    torch.save(result.state_dict, heads)

    net = SiglipLSTMNet(nn.Identity(), config.hidden_size, config.lstm_hidden)
    net.load_state_dict(result.state_dict)
    val = usable("val")
    calibrated = calibrate(
        [label for _, label in val],
        video_probabilities(net, [e for e, _ in val]),
        settings.target_fpr,
        settings.uncertain_fraction,
    )
    entry = shipped_entry(
        key,
        heads,
        calibrated,
        card,
        config.model_dump(include={"num_frames", "lstm_hidden"})
        | {"backbone_files": backbone_files(config.backbone)},
    )
    register(out / "manifest.json", entry)
    op = OperatingPoint(
        calibrated.threshold, calibrated.uncertain_band, calibrated.calibration, heads.name
    )

    def predict(items: Sequence[Any]) -> list[tuple[str, float | None]]:
        ready = [i for i, item in enumerate(items) if isinstance(item, Embedded)]
        out: list[tuple[str, float | None]] = [("ABSTAIN", None)] * len(items)
        if ready:
            raw = video_probabilities(net, [items[i] for i in ready])
            for i, p in zip(ready, raw, strict=True):
                probability = op.probability(float(p))
                out[i] = (op.label(probability).value, probability)
        return out

    measured = measure(predict, by_split, features, settings.resamples, params.seed)
    register(out / "manifest.json", with_held_out(entry, measured["test"]))
    report = {
        "detector": key,
        "checkpoint": heads.name,
        "card": card.name,
        "sha256": entry.sha256,
        "settings": settings,
        "params": params,
        "training": result,
        "backbone": config.backbone,
        "operating_point": calibrated,
        **data_summary(clips, by_split, features, Embedded),
        "measured": measured,
        "date": today(),
    }
    write_split_file(split_file(card), key, clips, splits, features, settings, params.seed)
    card.write_text(model_card(report))
    return report


def model_card(report: Mapping[str, Any]) -> str:
    """The model card (markdown) of a ``train_and_ship`` report."""
    params: TrainParams = report["params"]
    training: HeadsResult = report["training"]
    data = card_data(report, "Clips without embeddings (left out; ABSTAIN in evaluation):")
    return f"""{card_header(report, " heads")}

## What it is

The LSTM, `video_classifier` and `image_classifier` of the older service's SigLIP-LSTM network,
trained on embeddings of the frozen SigLIP tower in `{report["backbone"]}` (its files' sha256 are
in the manifest entry). Load it with `backbone:` set to that folder and `weights:` this file (or
`weights: manifest`).

{data}

### Split rule

{GROUP_RULE} Seed {params.seed}.

## Training

BCE of the video head plus BCE of the frame head (each frame labelled as its clip); Adam
(learning rate {params.learning_rate}, weight decay {params.weight_decay}), batch
{params.batch_size} clips, gradient norm clipped at 1, seed {params.seed}. Early stopping on the
validation video BCE, patience {params.patience}: best epoch {training.best_epoch} of
{training.epochs_run} run (budget {params.epochs}); validation loss
{training.best_val_loss:.4f}.

{card_results(report, params.seed)}
"""


class SiglipTrainer(Trainer):
    """siglip-lstm-v1/-v3: the LSTM and both classifiers on a frozen backbone folder's frame
    embeddings, computed once per clip."""

    by_epochs = True
    # The cache holds embeddings, not the detector's prepared frames.
    features_are_inputs = False

    def section(self, section: dict[str, Any]) -> dict[str, Any]:
        # The settings insist that a backbone comes with heads to load; training is what makes
        # the heads, so the check is satisfied with a placeholder.
        return section | {"weights": "manifest"}

    def feature_maker(
        self, detector: Detector[Any], prepare: Callable[[Path], Any]
    ) -> Callable[[Path], Any]:
        embed = Embedder(detector.config)

        def embedded(path: Path) -> tuple[Embedded, Any]:
            item, info = prepare(path)
            return embed(item), info

        return embedded

    def train(self, job: TrainJob) -> dict[str, Any]:
        return train_and_ship(
            self.key, job.clips, job.splits, job.features, job.config, job.params, job.settings
        )
