"""Training the SigLIP heads on embeddings: learns, is deterministic, refuses bad splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detectors.evaluation import roc_auc
from detectors.siglip_lstm import Embedded, SiglipLSTMConfig
from detectors.siglip_net import SiglipLSTMNet
from detectors.siglip_training import train_heads, video_probabilities
from detectors.training import DatasetError, TrainParams

CONFIG = SiglipLSTMConfig(hidden_size=16, num_attention_heads=2, lstm_hidden=8)
PARAMS = TrainParams(epochs=30, batch_size=4, learning_rate=0.01, patience=30, seed=3)


def clips(n: int, seed: int) -> list[tuple[Embedded, int]]:
    """Clips of 5-9 frames; FAKE ones drift along the first embedding axis over time."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 2
        frames = int(rng.integers(5, 10))
        x = rng.normal(size=(frames, 16)).astype(np.float32)
        if label:
            x[:, 0] += np.linspace(0, 3, frames, dtype=np.float32)
        out.append((Embedded(x, tuple(float(t) for t in range(frames))), label))
    return out


def test_heads_learn_deterministically() -> None:
    train, val, test = clips(24, 0), clips(8, 1), clips(20, 2)
    first = train_heads(train, val, CONFIG, PARAMS)
    again = train_heads(train, val, CONFIG, PARAMS)
    assert all(torch.equal(first.state_dict[k], again.state_dict[k]) for k in first.state_dict)
    assert {k.split(".")[0] for k in first.state_dict} == {
        "lstm",
        "video_classifier",
        "image_classifier",
    }
    net = SiglipLSTMNet(nn.Identity(), 16, 8)
    net.load_state_dict(first.state_dict)
    probs = video_probabilities(net, [e for e, _ in test])
    assert roc_auc([label for _, label in test], probs) > 0.9
    assert 1 <= first.best_epoch <= first.epochs_run <= PARAMS.epochs


def test_bad_splits_are_refused() -> None:
    with pytest.raises(DatasetError, match="one validation"):
        train_heads(clips(8, 0), [], CONFIG, PARAMS)
    only_real = [c for c in clips(8, 0) if c[1] == 0]
    with pytest.raises(DatasetError, match="both labels"):
        train_heads(only_real, clips(4, 1), CONFIG, PARAMS)
